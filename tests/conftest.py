"""Shared fixtures: personas (curator, annotator, outsider), project builders, a real Celery worker."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection

from annotation.models import Membership, Project
from annotation.services import ProjectSpec, membership_set, project_create

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
HH_FILE = SHARED_DATA / "hh_harmless_pairs.jsonl.gz"
QA_FILE = SHARED_DATA / "qa_feedback_finegrained.json.gz"

PAIRWISE_SCHEMA = {"pairwise": {"strengths": ["better", "much better"], "allow_tie": True}}
RUBRIC_SCHEMA = {
    "pairwise": {"strengths": ["better", "much better"], "allow_tie": True, "justification": "optional"},
    "rubric": {"aspects": [{"name": "helpfulness", "scale": {"min": 1, "max": 5}}]},
    "spans": {"categories": [{"name": "factual"}, {"name": "irrelevant"}]},
}


def settings_probe(probe: str, *, drop: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess[str]:
    """Load the settings in a fresh interpreter with `env` (and without the variables in `drop`)
    and run `probe`: how a process started with that environment would see them."""
    base = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def needs_shared(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"shared data file {path} is absent (a user's clone)")


@pytest.fixture
def make_user(db: None) -> Callable[..., Any]:
    def make(username: str, *, can_create: bool = False, superuser: bool = False) -> Any:
        user = get_user_model().objects.create_user(
            username=username, password=f"{username}-pw-123", is_superuser=superuser
        )
        if can_create:
            user.user_permissions.add(Permission.objects.get(codename="add_project"))
        return user

    return make


@pytest.fixture
def curator(make_user: Callable[..., Any]) -> Any:
    return make_user("carol", can_create=True)


@pytest.fixture
def annotator(make_user: Callable[..., Any]) -> Any:
    return make_user("alice")


@pytest.fixture
def outsider(make_user: Callable[..., Any]) -> Any:
    return make_user("oscar", can_create=True)


@pytest.fixture
def make_project(db: None) -> Callable[..., Project]:
    def make(slug: str = "p1", schema: dict[str, Any] | None = None, curator: Any = None, **extra: Any) -> Project:
        spec = ProjectSpec.parse({"slug": slug, "name": slug.upper(), "schema": schema or PAIRWISE_SCHEMA, **extra})
        return project_create(spec=spec, created_by=curator)

    return make


@pytest.fixture
def project(make_project: Callable[..., Project], curator: Any, annotator: Any) -> Project:
    p = make_project("p1", curator=curator)
    membership_set(project=p, user=annotator, role=Membership.Role.ANNOTATOR)
    return p


def jsonl(rows: list[dict[str, Any]]) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def pair_row(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"r{i}",
        "prompt": f"Question {i}?",
        "response_a": f"Answer A{i}",
        "response_b": f"Answer B{i}",
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# A real Celery worker process against Redis and the test database.


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def start_worker(log: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    """A Celery worker process (its own process group, so it can be killed whole) on all queues."""
    env = {**os.environ, "DATABASE_URL": _database_url(), **extra_env}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            "default,ai,gpu",
            "-c",
            "1",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
            "--logfile",
            str(log),
            "-n",
            f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"worker exited early:\n{log.read_text() if log.exists() else ''}")
        if log.exists() and log.read_text().count("ready.") > 0:
            return proc
        time.sleep(0.2)
    stop_worker(proc, kill=True)
    pytest.fail("worker did not become ready in 60 s")


def stop_worker(proc: subprocess.Popen[bytes], kill: bool = False) -> None:
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def worker_env(transactional_db: None) -> Iterator[None]:
    from config.celery import app

    if connection.vendor != "postgresql":
        pytest.skip("the worker test needs the PostgreSQL test database")
    app.control.purge()
    yield


@pytest.fixture
def celery_worker_process(worker_env: None, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(tmp_path / "worker.log")
    yield proc
    stop_worker(proc)


# ---------------------------------------------------------------------------------------------
# A real headless Chromium driven by Playwright (Debian's /usr/bin/chromium; no download).

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (make test installs it where apt-get can)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API drives an event loop in a greenlet; Django's ORM calls in the test
    # body happen outside it, so the async-safety guard would only raise false alarms here.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, live_server: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=live_server.url)
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


def login(page: Any, username: str, password: str) -> None:
    """Log in with the keyboard alone."""
    page.goto("/accounts/login/")
    page.focus("#id_username")
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_selector("header form[action='/accounts/logout/']")
