#!/usr/bin/env python
"""Every page on `make run`'s embedded defaults, as each demo user: no server error.

Starts Prefloop as scripts/run.sh does (SQLite and the filesystem broker: DATABASE_URL and
CELERY_BROKER_URL unset, DEBUG=1), in a temporary VAR_DIR: `manage.py migrate`, `load_demo`, then
puts data in every corner a page reads (judgments of the demo users with a skip, a flag and gold
items, an upload import, a frozen tiny reward model, AI labeler runs, routing, curation actions and
an export), starts `manage.py runserver`, logs in as curator, alice and bob, and requests:
- every URL pattern of the site, the admin and the HTTP API, with the real slugs and ids (a pattern
  whose parameter the seed cannot fill is reported as a failure, so a new view is covered);
- every link found in the pages (same site, GET), breadth first.

Run from the project root: `.venv/bin/python scripts/crawl_embedded.py` (`--keep` keeps the
VAR_DIR). Prints the failures and, last, a JSON line with the counts; exits 1 on any failure.
tests/test_embedded_crawl.py runs it in CI.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO_USERS = {"curator": "demo-curator-pass", "alice": "demo-alice-pass", "bob": "demo-bob-pass"}
# A site admin (`createsuperuser`) as well, for the admin's pages with data.
SITE_ADMIN = ("site-admin", "crawl-admin-pass-1")
# What a fresh shell passes to `make run`; every setting of the app takes its default.
KEEP_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "TERM",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "OMP_NUM_THREADS",
)
# Links not to follow: ending the session, and the admin's endless sort and filter variants.
# The admin's pages come from the URL patterns (one object of each model), not from its links.
SKIP_LINK = re.compile(r"^/accounts/logout/|^/admin/")
MAX_PAGES_PER_USER = 400
TINY_ENCODER = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def embedded_env(var_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in KEEP_ENV}
    env.update(DEBUG="1", VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1")
    return env


# ---------------------------------------------------------------------------------------------
# The seed: runs inside the embedded configuration (`--seed OUT`), writes the URLs to request.


def seed(out: Path) -> None:
    import django

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # The seed (this process only) trains a tiny reward model built from a config; the server and
    # worker keep the default, which loads the saved model as any operator's would.
    os.environ["ALLOW_MODEL_FROM_CONFIG"] = "1"
    django.setup()
    from django.conf import settings

    assert settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"), settings.DATABASES["default"]["ENGINE"]
    assert settings.CELERY_BROKER_URL.startswith("filesystem"), settings.CELERY_BROKER_URL
    data = _seed_data()
    urls, unfilled = _site_urls(data["values"])
    out.write_text(json.dumps({"urls": urls, "unfilled": unfilled, "tokens": data["tokens"], "notes": data["notes"]}))


def _seed_data() -> dict[str, Any]:
    import random

    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile

    from accounts.models import ApiToken
    from annotation import queue, services
    from annotation.models import Assignment, ImportJob, Item, Membership, Project
    from curation import services as curation
    from curation.models import CurationAction, ExportSnapshot
    from models_srv import judge_audit, labeling
    from models_srv import services as rm
    from models_srv.models import AILabelRun, RewardModelVersion

    users = {u.username: u for u in get_user_model().objects.filter(username__in=DEMO_USERS)}
    site_admin = get_user_model().objects.create_superuser(SITE_ADMIN[0], password=SITE_ADMIN[1])
    curator = users["curator"]
    notes: list[str] = []
    chat = Project.objects.get(slug="demo-chat-quality")
    ranking = Project.objects.get(slug="demo-answer-ranking")

    # An upload through an import job (as the project page does), with two gold items.
    gold_rows = [
        {
            "id": f"gold-{i}",
            "prompt": f"Which is right: 2 + {i} = ?",
            "response_a": f"It is {2 + i}.",
            "response_b": f"It is {3 + i}.",
            "gold_answer": {
                "pairwise": {"choice": "A", "strength": 2},
                "rubric": [{"helpfulness": 5, "correctness": 5, "verbosity": 3}] * 2,
            },
        }
        for i in range(2)
    ]
    job = services.import_job_create(
        project=chat,
        upload=ContentFile("\n".join(map(json.dumps, gold_rows)).encode()),
        name="gold.jsonl",
        source=ImportJob.Source.UPLOAD,
        created_by=curator,
    )
    services.import_job_run(job_id=job.id)
    chat.gold_rate = 0.3
    chat.save(update_fields=["gold_rate"])

    rng = random.Random(7)

    def answer(project: Project, n: int) -> None:
        schema = project.judgment_schema
        for user in users.values():
            for k in range(n):
                a = queue.next_assignment(project=project, user=user, rng=rng)
                if a is None:
                    return
                m = a.item.num_responses
                if k == n - 1 and user.username == "bob":
                    queue.skip(assignment_id=a.id, user=user, reason="unsure", flag=True)
                    continue
                payload: dict[str, Any] = {}
                if schema.pairwise:
                    choice = rng.choice(["A", "A", "B", "tie"])
                    payload["pairwise"] = {"choice": choice, "strength": 0 if choice == "tie" else rng.randint(1, 2)}
                    payload["justification"] = "the first one is clearer"
                if schema.rubric:
                    payload["rubric"] = [{a.name: rng.randint(2, 5) for a in schema.rubric.aspects} for _ in range(m)]
                if schema.ranking:
                    ranks = list(range(1, m + 1))
                    rng.shuffle(ranks)
                    payload["ranking"] = ranks
                queue.submit(assignment_id=a.id, user=user, payload=payload, time_spent_ms=rng.randint(4000, 30000))
            if user.username == "alice":
                queue.skip(assignment_id=queue.next_assignment(project=project, user=user, rng=rng).id, user=user)

    clock = time.monotonic()

    def lap(what: str) -> None:
        nonlocal clock
        notes.append(f"{what} {time.monotonic() - clock:.1f}s")
        clock = time.monotonic()

    answer(chat, 12)
    answer(ranking, 6)
    queue.next_assignment(project=chat, user=users["alice"], rng=rng)  # a live lease for the submit URLs

    lap("answers")
    # A frozen tiny reward model, an AI labeler of each cheap kind, routing.
    version = rm.training_start(
        project=chat,
        created_by=curator,
        enqueue=False,
        config={
            "mode": "frozen",
            "from_config": TINY_ENCODER,
            "epochs": 3,
            "ensemble": 2,
            "max_length": 64,
            "eval_fraction": 0.25,
        },
    )
    version = rm.training_run(version_id=version.id)
    notes.append(f"reward model v{version.version}: {version.status} {version.error or ''}".strip())
    if version.status == "succeeded":
        if not version.is_current:
            rm.version_make_current(version=version, by=curator)
        rm.rescore(version_id=version.id)
        judge = labeling.labeler_create(project=chat, kind="reward_model", name="rm-judge", config={})
        run = labeling.run_start(project=chat, labeler=judge, created_by=curator, enqueue=False)
        run = labeling.run_execute(run_id=run.id)
        notes.append(f"reward-model labeler run: {run.status}")
        audit = judge_audit.audit_execute(audit_id=rm.audit_start(labeler=judge, enqueue=False).id)
        notes.append(f"reward-model judge audit: {audit.status} passed={audit.passed}")
    RewardModelVersion.objects.create(
        project=chat, version=99, status="failed", config={}, snapshot=version.snapshot, error="out of memory (seeded)"
    )
    llm = labeling.labeler_create(
        project=chat,
        kind="llm",
        name="llm-judge",
        config={
            "base_url": "http://127.0.0.1:9/v1",
            "model": "nobody-home",
            "max_retries": 0,
            "parse_retries": 0,
            "timeout_s": 2,
            "concurrency": 1,
        },
    )
    run = labeling.run_start(
        project=chat,
        labeler=llm,
        item_ids=list(Item.objects.filter(project=chat).values_list("id", flat=True)[:2]),
        created_by=curator,
        enqueue=False,
    )
    try:
        labeling.run_execute(run_id=run.id)
    except Exception as exc:  # a failed run is a page state worth crawling
        notes.append(f"llm run: {type(exc).__name__}")
    audit = judge_audit.audit_execute(audit_id=rm.audit_start(labeler=llm, enqueue=False).id)
    notes.append(f"llm judge audit (nobody answers): {audit.status} passed={audit.passed}")
    lap("models and labelers")
    from models_srv.routing import route_project

    notes.append(f"routing: {route_project(project=chat, created_by=curator)}")

    lap("routing")
    # Curation: one action of each kind, one undone.
    items = list(Item.objects.filter(project=chat, is_gold=False, human_count__gt=0).order_by("id")[:5])
    actions = [
        curation.curation_action_apply(item=it, actor=curator, action=kind, reason="seeded")
        for it, kind in zip(items, ["accept", "flip", "drop", "requeue", "accept"], strict=False)
    ]
    curation.curation_action_undo(action=actions[-1], actor=curator)

    # Exports: one done, one pending.
    for project in (chat, ranking):
        snap = curation.export_create(project=project, user=curator, filters=None, formats="raw", enqueue=False)
        curation.export_run(snapshot_id=snap.id)
    curation.export_create(project=chat, user=curator, filters=None, formats="pairs", enqueue=False)

    lap("curation and exports")
    tokens = {}
    for name, user in {**users, SITE_ADMIN[0]: site_admin}.items():
        key = ApiToken.new_key()
        ApiToken.objects.create(
            user=user,
            name=f"crawl-{name}",
            key_hash=ApiToken.hash_key(key),
            scopes=["read", "write", "train", "export"],
        )
        tokens[name] = key

    values: dict[str, dict[str, list[Any]]] = {}
    every = {
        "job_uuid": [str(u) for u in ImportJob.objects.values_list("uuid", flat=True)],
        "assignment_uuid": [str(u) for u in Assignment.objects.order_by("-id").values_list("uuid", flat=True)[:2]],
        "version_uuid": [str(u) for u in RewardModelVersion.objects.values_list("uuid", flat=True)],
        "labeler_id": list(AILabelRun.objects.values_list("labeler_id", flat=True).distinct()),
        "run_uuid": [str(u) for u in AILabelRun.objects.values_list("uuid", flat=True)],
        "code": [str(u) for u in ExportSnapshot.objects.values_list("code", flat=True)],
        "token_id": list(ApiToken.objects.values_list("id", flat=True)[:1]),
    }
    for project in Project.objects.all():
        values[project.slug] = {
            "slug": [project.slug],
            "item_id": list(Item.objects.filter(project=project, human_count__gt=0).values_list("id", flat=True)[:2]),
            "action_id": list(CurationAction.objects.filter(project=project).values_list("id", flat=True)[:2]),
            "membership_id": list(Membership.objects.filter(project=project).values_list("id", flat=True)[:1]),
        }
    # The API's names for the same objects.
    api = {"job_id": "job_uuid", "version_id": "version_uuid", "run_id": "run_uuid", "export_id": "code"}
    every.update({k: every[v] for k, v in api.items()})
    return {"values": {"projects": values, "every": every}, "tokens": tokens, "notes": notes}


def _site_urls(values: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Every URL pattern (site, admin, API) filled with real values; the patterns no value fills."""
    import itertools

    from django.contrib import admin
    from django.urls import URLPattern, URLResolver, get_resolver

    def walk(patterns: list[Any], prefix: str = "") -> list[tuple[str, str]]:
        out = []
        for p in patterns:
            if isinstance(p, URLResolver):
                out += walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                out.append((prefix + str(p.pattern), p.pattern.regex.pattern))
        return out

    # The admin's object pages: one object of every registered model.
    admin_values: dict[str, list[Any]] = {}
    for model in admin.site._registry:
        obj = model._default_manager.order_by("pk").first()
        if obj is not None:
            admin_values.setdefault(f"{model._meta.app_label}/{model._meta.model_name}", []).append(obj.pk)

    urls: list[str] = []
    unfilled: list[str] = []
    for route, _ in walk(get_resolver().url_patterns):
        if route.startswith("^") or "(?P" in route:  # a regex route: the admin's app index
            for app in {k.split("/")[0] for k in admin_values}:
                urls.append(f"/admin/{app}/")
            continue
        names = re.findall(r"<(?:\w+:)?(\w+)>", route)
        if not names:
            urls.append("/" + route)
            continue
        if route.startswith("admin/"):
            model_route = re.match(r"admin/(\w+)/(\w+)/<path:object_id>/(.*)", route)
            if model_route:
                key = f"{model_route.group(1)}/{model_route.group(2)}"
                urls += [f"/admin/{key}/{pk}/{model_route.group(3)}" for pk in admin_values.get(key, [])[:1]]
            continue  # the rest (password change of a user id, view on site) take values the admin links to
        filled = False
        for project_values in values["projects"].values():
            pool = {**values["every"], **project_values}
            if not all(pool.get(n) for n in names):
                continue
            for combo in itertools.product(*(pool[n][:4] for n in names)):
                url = route
                for n, v in zip(names, combo, strict=True):
                    url = re.sub(r"<(?:\w+:)?" + n + ">", str(v), url)
                urls.append("/" + url)
            filled = True
            if "slug" not in names:
                break
        if not filled:
            unfilled.append(route)
    return list(dict.fromkeys(urls)), unfilled


# ---------------------------------------------------------------------------------------------
# The crawl: plain HTTP against the running server.


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "href" or name == "hx-get" or (name == "src" and tag in ("script", "img"))):
                self.links.append(value)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def request(
        self, path: str, data: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            self.base + path, data=body, headers={**(headers or {}), "Referer": self.base + "/"}
        )
        try:
            with self.opener.open(req, timeout=120) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode("utf-8", "replace")

    def login(self, username: str, password: str) -> bool:
        _, _, page = self.request("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        code, _, _ = self.request(
            "/accounts/login/",
            {"csrfmiddlewaretoken": token.group(1) if token else "", "username": username, "password": password},
        )
        return code == 302


def crawl(base: str, username: str, password: str, seeds: list[str], token: str) -> tuple[dict[str, int], list[str]]:
    b = Browser(base)
    if not b.login(username, password):
        return {}, [f"{username}: cannot log in"]
    seen: dict[str, int] = {}
    broken: list[str] = []
    todo = ["/", *seeds]
    while todo and len(seen) < MAX_PAGES_PER_USER:
        path = todo.pop(0)
        if path in seen:
            continue
        headers = {"Authorization": f"Bearer {token}"} if path.startswith("/api/") else None
        code, ctype, body = b.request(path, headers=headers)
        seen[path] = code
        if code >= 500 and path != "/healthz/workers":  # checked once the worker is up
            broken.append(f"{username} GET {path} -> {code}: {_gist(body)}")
        if "text/html" not in ctype:
            continue
        parser = _Links()
        parser.feed(body)
        for link in parser.links:
            url = urllib.parse.urljoin(base + path, link)
            if not url.startswith(base + "/"):
                continue
            local = url[len(base) :].split("#")[0]
            if not SKIP_LINK.search(local) and local not in seen:
                todo.append(local)
    return seen, broken


def _gist(body: str) -> str:
    m = re.search(r'<pre class="exception_value">(.*?)</pre>', body, re.S) or re.search(
        r"<title>(.*?)</title>", body, re.S
    )
    return (m.group(1) if m else body[:200]).strip().replace("\n", " ")[:300]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary VAR_DIR")
    args = parser.parse_args()
    if args.seed:
        seed(args.seed)
        return 0

    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="prefloop-crawl-"))
    env = embedded_env(scratch / "var")
    py = sys.executable
    server = worker = None
    timings: dict[str, float] = {}
    try:

        def step(*cmd: str) -> None:
            t = time.monotonic()
            done = subprocess.run(  # noqa: S603 - our own commands
                [py, *cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            timings[cmd[1] if cmd[0] == "manage.py" else "seed"] = round(time.monotonic() - t, 1)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")

        # As scripts/run.sh: migrate, load the demo; then the seed, then the web server.
        step("manage.py", "migrate", "--noinput", "-v", "0")
        step("manage.py", "load_demo")
        out = scratch / "seed.json"
        step(str(Path(__file__).resolve()), "--seed", str(out))
        seeded = json.loads(out.read_text())
        port = _free_port()
        log = (scratch / "server.log").open("w")
        worker = subprocess.Popen(  # noqa: S603 - run.sh's worker
            [
                str(Path(py).with_name("celery")),
                "-A",
                "config",
                "worker",
                "-Q",
                "default,ai,gpu",
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--logfile",
                str(scratch / "worker.log"),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        server = subprocess.Popen(  # noqa: S603 - run.sh's web server
            [py, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/accounts/login/", timeout=5).close()  # noqa: S310 - our server
                break
            except OSError:  # not listening yet
                if server.poll() is not None:
                    log_text = (scratch / "server.log").read_text()[-3000:]
                    raise SystemExit("the web server exited:\n" + log_text) from None
                time.sleep(0.1)
        t = time.monotonic()
        failures = [f"no value for the URL parameters of {route}" for route in seeded["unfilled"]]
        pages = 0
        for user, password in [*DEMO_USERS.items(), SITE_ADMIN]:
            seen, broken = crawl(base, user, password, seeded["urls"], seeded["tokens"][user])
            pages += len(seen)
            with (scratch / "pages.txt").open("a") as f:
                f.writelines(f"{user} {code} {path}\n" for path, code in seen.items())
            failures += broken
            if len(seen) >= MAX_PAGES_PER_USER:
                failures.append(f"{user}: stopped at {MAX_PAGES_PER_USER} pages (raise MAX_PAGES_PER_USER?)")
        timings["crawl"] = round(time.monotonic() - t, 1)
        # As in `make run`, a worker serves every queue: /healthz/workers says so once it is up
        # (the crawl above ran while it started; its answers there may predate the worker).
        t = time.monotonic()
        while Browser(base).request("/healthz/workers")[0] != 200:
            if worker.poll() is not None or time.monotonic() - t > 120:
                failures.append("/healthz/workers never answered 200 with the worker of `make run` running")
                break
            time.sleep(0.5)
        timings["worker"] = round(time.monotonic() - t, 1)
        for line in failures:
            print(line)
        print(
            json.dumps(
                {
                    "patterns_filled": len(seeded["urls"]),
                    "pages": pages,
                    "failures": len(failures),
                    "seed": seeded["notes"],
                    "timings": timings,
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
        )
        return 1 if failures else 0
    finally:
        for proc in (server, worker):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if args.keep:
            print(f"kept {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
