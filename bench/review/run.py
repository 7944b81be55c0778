"""The curator's review queue on a large project: time per page, CPU per call, and where it goes.

    .venv/bin/python bench/review/run.py                            # 25,000 items, 100,000 judgments
    .venv/bin/python bench/review/run.py --baseline /tmp/review-base   # the same data read by another checkout too
    .venv/bin/python bench/review/run.py --profile                  # cProfile of one page, into out/

The project is the export benchmark's (`bench/export/run.py --generate`: 4 of 20 imported
annotators per item, about 70 % agreeing with the item's majority), plus what a review queue
reads besides the labels: a succeeded cross-fitting run with an out-of-fold margin for every
item, an LLM judge on 5 % of the items (a third of its judgments flip with the order), flags on
1 % of the items, and curation actions on 2 % (every fourth one undone). It is built once into
BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/prefloop_bench_review) and reused
by later runs (`--fresh` builds it again).

Then one fresh process per checkout times, after one warm-up call each: `noisy_candidates` over
the whole project, the review page (the whole page, 50 rows), and the queue fragment the filters
and the pager ask for (low agreement, one category, by margin, page 3). Per case: the median wall
time and the median CPU time of that process (PostgreSQL's own time is in the wall time only),
the number of queries, and a digest of what was computed (the candidates; the fragment's HTML
without its CSRF tokens), so two checkouts can be seen to show the same thing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from common import bench_env, fresh_database  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
PER_ITEM = 4  # the export bench's judgments per item


def _setup(code: Path) -> None:
    os.chdir(code)
    sys.path.insert(0, str(code))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def extras(slug: str, seed: int = 1) -> None:
    """Margins, an LLM judge with order flips, flags and curation actions on the generated project."""
    _setup(ROOT)
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.db import transaction
    from django.utils import timezone

    from annotation.models import Assignment, Item, Judgment, Labeler, Membership, Project
    from annotation.services import membership_set
    from curation.models import CurationAction
    from models_srv.models import CrossFitRun, DataSnapshot, OutOfFoldMargin, RunStatus

    rng = random.Random(seed)
    project = Project.objects.get(slug=slug)
    ids = list(Item.objects.filter(project=project).order_by("id").values_list("id", flat=True))
    now = timezone.now()
    with transaction.atomic():
        user = get_user_model().objects.create_user("bench-curator")  # logged in with force_login
        membership_set(project=project, user=user, role=Membership.Role.CURATOR)
        run = CrossFitRun.objects.create(
            project=project,
            config={},
            snapshot=DataSnapshot.objects.create(project=project),
            status=RunStatus.SUCCEEDED,
            finished_at=now,
            counts={"items": len(ids)},
        )
        OutOfFoldMargin.objects.bulk_create(
            (
                OutOfFoldMargin(
                    run=run, item_id=i, fold=n % 5, margin=rng.gauss(0.0, 1.5), spread=abs(rng.gauss(0.0, 0.3))
                )
                for n, i in enumerate(ids)
            ),
            batch_size=5000,
        )
        judge = Labeler.objects.create(project=project, kind=Labeler.Kind.LLM, name="judge", config={})
        Judgment.objects.bulk_create(
            (
                Judgment(
                    item_id=i,
                    labeler=judge,
                    payload={"pairwise": {"choice": rng.choice("AB"), "strength": 1}},
                    schema_version=1,
                    raw_output=json.dumps({"order_consistent": rng.random() >= 1 / 3}),
                    confidence=round(rng.random(), 3),
                )
                for i in rng.sample(ids, len(ids) // 20)
            ),
            batch_size=5000,
        )
        Assignment.objects.bulk_create(
            Assignment(
                item_id=i,
                annotator=user,
                state="submitted",
                response_order=[0, 1],
                leased_at=now,
                expires_at=now + timedelta(minutes=15),
                finished_at=now,
                flagged=True,
                flag_reason=rng.choice(["unsafe prompt", "both responses wrong", "duplicate"]),
            )
            for i in rng.sample(ids, len(ids) // 100)
        )
        for n, i in enumerate(rng.sample(ids, len(ids) // 50)):
            action = CurationAction.objects.create(
                project=project, item_id=i, action=rng.choice(["drop", "flip", "accept", "requeue"]), actor=user
            )
            if n % 4 == 0:
                CurationAction.objects.filter(id=action.id).update(undone_at=now, undone_by=user)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(json.dumps({"slug": slug, "items": len(ids)}))


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def timing(slug: str, code: Path, repeat: int, profile: bool) -> None:
    """Time the cases in this process with the code of `code`; one JSON line on stdout."""
    _setup(code)
    import dataclasses

    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from annotation.models import Project

    try:
        from curation.candidates import noisy_candidates
    except ImportError:  # a checkout from before curation/candidates.py
        from curation.quality import noisy_candidates  # type: ignore[attr-defined,no-redef]

    project = Project.objects.get(slug=slug)
    client = Client()
    client.force_login(project.memberships.get(user__username="bench-curator").user)
    url = reverse("curation:review", args=[slug])
    fragment = {"reason": "low_agreement", "category": "code", "sort": "margin", "page": 3}

    def candidates() -> str:
        rows = noisy_candidates(project, limit=sys.maxsize)
        return _digest([{**r, "consensus": dataclasses.asdict(r["consensus"] or {})} for r in rows])

    def page(params: dict, **headers: str) -> str:
        response = client.get(url, params, secure=True, **headers)
        assert response.status_code == 200, response.status_code
        html = response.content.decode()
        html = html[html.index('<section id="queue"') :]  # not the history: "3 minutes ago" moves on
        html = re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", html[: html.index("</section>")])
        return hashlib.sha256(html.encode()).hexdigest()[:12]

    cases = {
        "noisy_candidates": candidates,
        "review page": lambda: page({"per": 50}),
        "queue fragment": lambda: page(fragment, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="queue"),
    }
    out = {}
    for name, call in cases.items():
        digest = call()  # warm-up: imports, template loading, PostgreSQL's cache
        walls, cpus = [], []
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as ctx:
                wall, cpu = time.perf_counter(), time.process_time()
                again = call()
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
            if again != digest:
                sys.exit(f"{name}: a second call computed something else")
        out[name] = {
            "wall_s": statistics.median(walls),
            "cpu_s": statistics.median(cpus),
            "queries": len(ctx.captured_queries),
            "digest": digest,
        }
    if profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        cases["review page"]()
        prof.disable()
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        OUT.mkdir(parents=True, exist_ok=True)
        name = f"profile-{code.name}.txt"
        (OUT / name).write_text(text.getvalue())
        out["profile"] = str(OUT / name)
    print(json.dumps(out))


def _child(env: dict[str, str], *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _built(db_url: str, slug: str) -> bool:
    """Whether the database holds the project with its extras (its curation actions are made last)."""
    query = (  # the slug is "bench-<a number>"
        "SELECT count(*) FROM curation_curationaction a JOIN annotation_project p ON p.id = a.project_id "  # noqa: S608
        f"WHERE p.slug = '{slug}'"
    )
    proc = subprocess.run(["psql", db_url, "-tAc", query], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and proc.stdout.strip() not in ("", "0")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=25_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per case (after one warm-up)")
    parser.add_argument("--fresh", action="store_true", help="build the project again")
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. of main): time it on the same data")
    parser.add_argument("--profile", action="store_true", help="cProfile one review page per checkout into out/")
    parser.add_argument("--extras", help=argparse.SUPPRESS)
    parser.add_argument("--time", help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.extras:
        extras(args.extras)
        return
    if args.time:
        timing(args.time, args.code.resolve(), args.repeat, args.profile)
        return
    db_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/prefloop_bench_review")
    env = bench_env(db_url, OUT / "var")
    slug = f"bench-{args.items * PER_ITEM}"
    if args.fresh or not _built(db_url, slug):
        fresh_database(db_url)
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "export" / "run.py"), "--generate", str(args.items * PER_ITEM)],
            env=env,
            cwd=ROOT,
            check=True,
        )
        assert proc.returncode == 0
        _child(env, "--extras", slug)
    trees = [("this", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    results = {}
    for tree, code in trees:
        extra = ["--profile"] if args.profile else []
        results[tree] = _child(env, "--time", slug, "--code", str(code), "--repeat", str(args.repeat), *extra)
    print(f"{args.items:,} items, {args.items * PER_ITEM:,} judgments; median of {args.repeat} calls after a warm-up")
    print(f"{'case':<18} {'tree':>8} {'wall s':>7} {'CPU s':>6} {'queries':>7} {'digest':>13}")
    for case in results["this"]:
        if case == "profile":
            continue
        for tree in results:
            r = results[tree][case]
            print(f"{case:<18} {tree:>8} {r['wall_s']:>7.3f} {r['cpu_s']:>6.3f} {r['queries']:>7} {r['digest']:>13}")
        if "baseline" in results:
            b, t = results["baseline"][case], results["this"][case]
            same = "same output" if b["digest"] == t["digest"] else "OUTPUT DIFFERS"
            print(f"{'':<18} {'ratio':>8} {b['wall_s'] / t['wall_s']:>6.1f}x {b['cpu_s'] / t['cpu_s']:>5.1f}x   {same}")
    for tree in results:
        if "profile" in results[tree]:
            print(f"profile ({tree}): {results[tree]['profile']}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
