"""Reliability, with real processes: a Celery worker SIGKILLed in the middle of an export, a
PostgreSQL "restart" (a TCP proxy in front of it drops every connection and refuses new ones)
while an annotator submits in a real browser against a gunicorn server, a lost response, and an
expired lease given back by the reap task on a worker. (A worker killed mid-training:
tests/test_worker.py and tests/test_job_recovery.py.)"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from annotation import queue
from annotation.importing import import_items
from annotation.models import Assignment, Item, Judgment, Membership
from annotation.services import membership_set
from curation.models import ExportSnapshot
from curation.services import export_create
from tests.conftest import ROOT, jsonl, login, pair_row, start_worker, stop_worker

PAIRWISE = {"pairwise": {"strengths": ["better", "much better"], "allow_tie": True}}


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s")


# ---------------------------------------------------------------------------------------------
# A TCP proxy in front of PostgreSQL, and a gunicorn server whose database goes through it


class TcpProxy:
    """Relays 127.0.0.1:<port> to `target`. `down()` drops every open connection and closes new
    ones as soon as they arrive (PostgreSQL restarting, as its clients see it); `up()` relays again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refused = 0
        self._up = threading.Event()
        self._up.set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self._up.is_set():
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):  # wakes the pump of the other direction
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
            src.close()  # each socket is closed by the one pump that reads it

    def down(self) -> None:
        self._up.clear()
        with self._lock:
            live = list(self._open)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        self._up.set()

    def close(self) -> None:
        self.listener.close()
        self.down()


@contextlib.contextmanager
def postgres_proxy() -> Iterator[TcpProxy]:
    s = connection.settings_dict
    proxy = TcpProxy((s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432)))
    try:
        yield proxy
    finally:
        proxy.close()


def database_url_via(host: str = "127.0.0.1", port: int | None = None) -> str:
    """The test database's URL, optionally through another host and port."""
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{host}:{port or s['PORT'] or 5432}/{s['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    log: Path

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        try:
            request = urllib.request.Request(self.url + path, headers=headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


@contextlib.contextmanager
def gunicorn_server(tmp_path: Path, *, database_url: str, static: bool = False, **env: str) -> Iterator[Server]:
    """The production web server (gunicorn, one process, four threads) on a free port."""
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "0",
        "STATIC_MANIFEST": "0",
        "STATIC_ROOT": str(tmp_path / "static"),
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "test-only-secret-key-not-for-production",
        **env,
    }
    if static:  # whitenoise serves STATIC_ROOT: collect the page's JavaScript there first
        command = [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"]
        subprocess.run(command, cwd=ROOT, env=full_env, check=True, timeout=120)
    port, log = free_port(), tmp_path / "gunicorn.log"
    command = [
        sys.executable, "-m", "gunicorn", "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
        "--workers", "1", "--threads", "4", "--timeout", "60", "--error-logfile", str(log),
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=full_env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited early:\n{log.read_text() if log.exists() else ''}")
            try:
                server.get("/healthz")  # 200 or 503: it answers
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("gunicorn did not answer in 60 s")
                time.sleep(0.2)
        yield server
    finally:
        stop_worker(proc)  # the same: SIGTERM to its process group, SIGKILL if it lingers


# ---------------------------------------------------------------------------------------------
# A worker SIGKILLed in the middle of an export

# One item per page (EXPORT_CHUNK_ITEMS) makes an export of a few hundred items take seconds,
# so the worker can be killed mid-pass; the visibility timeout and staleness are shortened so
# the broker hands the task out again within the test.
SLOW_EXPORT = {"EXPORT_CHUNK_ITEMS": "1", "CELERY_VISIBILITY_TIMEOUT": "3", "EXPORT_HEARTBEAT_STALE_SECONDS": "2"}
EXPORT_ITEMS = 600


def _export_mid_run(project: Any, curator: Any, tmp_path: Path, env: dict[str, str]) -> ExportSnapshot:
    """Start an export on a real worker, SIGKILL the worker (its whole process group) mid-pass."""
    import_items(project=project, fileobj=jsonl([pair_row(i, label="AB"[i % 2]) for i in range(EXPORT_ITEMS)]))
    worker = start_worker(tmp_path / "w1.log", **env)
    try:
        # The labels come in the file: the imported source (the default exports annotators' only).
        filters = {"label_source": "imported"}
        snapshot = export_create(project=project, user=curator, filters=filters, formats=["pairs", "raw"])

        def writing() -> bool:
            snapshot.refresh_from_db()
            return snapshot.status == "running" and snapshot.progress.get("items", 0) > 0

        wait_until(writing, 30, "the export reporting progress", every=0.05)
    finally:
        stop_worker(worker, kill=True)
    snapshot.refresh_from_db()
    # Killed mid-pass: still running, nothing registered, no bundle claimed or in place.
    assert snapshot.status == "running" and snapshot.progress["phase"] == "writing", snapshot.progress
    assert 0 < snapshot.progress["items"] < EXPORT_ITEMS
    assert (snapshot.files, snapshot.bundle_path, snapshot.bundle_sha256, snapshot.counts) == ([], "", "", {})
    assert snapshot.finished_at is None and not snapshot.folder.exists()
    return snapshot


def _partials(snapshot: ExportSnapshot) -> list[Path]:
    """Every attempt's half-written folder (`<code>.<attempt>.partial`)."""
    return list(snapshot.folder.parent.glob(f"{snapshot.code}*.partial"))


def _wait_finished(snapshot: ExportSnapshot, timeout: float) -> ExportSnapshot:
    def finished() -> bool:
        snapshot.refresh_from_db()
        return snapshot.is_finished

    wait_until(finished, timeout, f"export still {snapshot.status} ({snapshot.progress})", every=0.2)
    return snapshot


@pytest.mark.worker
def test_an_export_whose_worker_is_killed_is_redelivered_and_verifies(
    worker_env: None, make_project: Any, curator: Any, tmp_path: Path
) -> None:
    project = make_project("exp-kill", schema=PAIRWISE, curator=curator)
    snapshot = _export_mid_run(project, curator, tmp_path, SLOW_EXPORT)
    time.sleep(3.5)  # past the visibility timeout: the unacknowledged task is handed out again
    second = start_worker(tmp_path / "w2.log", **SLOW_EXPORT)
    try:
        snapshot = _wait_finished(snapshot, 180)
    finally:
        stop_worker(second)

    _assert_done_and_verified(snapshot)


def _assert_done_and_verified(snapshot: ExportSnapshot) -> None:
    assert snapshot.status == "done", snapshot.error
    assert snapshot.attempts == 2  # built again from scratch by the second attempt
    assert snapshot.counts["rows"]["raw"] == {"train": EXPORT_ITEMS}
    bundle = snapshot.bundle_file
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == snapshot.bundle_sha256
    assert snapshot.bundle_bytes == bundle.stat().st_size
    assert sorted(p.name for p in snapshot.folder.iterdir()) == sorted(["README.md", "SHA256SUMS", bundle.name])
    assert not _partials(snapshot)
    # Every data file in the bundle matches SHA256SUMS and the checksums registered on the snapshot.
    top = bundle.stem
    with zipfile.ZipFile(bundle) as zf:
        sums = dict(reversed(line.split("  ")) for line in zf.read(f"{top}/SHA256SUMS").decode().splitlines())
        registered = {f["name"]: f["sha256"] for f in snapshot.files}
        assert set(registered) <= set(sums) and registered
        for name, digest in sums.items():
            assert hashlib.sha256(zf.read(f"{top}/{name}")).hexdigest() == digest, name
            assert registered.get(name, digest) == digest


@pytest.mark.worker
def test_an_export_whose_worker_is_killed_is_requeued_by_the_sweep(
    worker_env: None, make_project: Any, curator: Any, tmp_path: Path
) -> None:
    from config.celery import app
    from curation.tasks import recover_stale_exports

    # The broker would hand it out again only after an hour: the sweep does not wait for it.
    env = {**SLOW_EXPORT, "CELERY_VISIBILITY_TIMEOUT": "3600", "EXPORT_HEARTBEAT_STALE_SECONDS": "1"}
    project = make_project("exp-dead", schema=PAIRWISE, curator=curator)
    snapshot = _export_mid_run(project, curator, tmp_path, env)
    assert _partials(snapshot)  # the killed worker's half-written files

    def silent() -> bool:
        snapshot.refresh_from_db()
        return snapshot.heartbeat_at < timezone.now() - timedelta(seconds=1)

    wait_until(silent, 30, "the killed export's heartbeat going stale")
    second = start_worker(tmp_path / "w2.log", **env)
    try:
        recover_stale_exports.delay()  # what beat sends every minute
        snapshot = _wait_finished(snapshot, 180)
    finally:
        stop_worker(second)
        with app.connection_for_write() as conn:  # forget the killed delivery: no later test gets it
            client = conn.default_channel.client
            client.delete("unacked", "unacked_index")
    _assert_done_and_verified(snapshot)


def test_an_export_killed_at_every_attempt_is_failed_by_the_sweep_and_leaves_nothing(
    make_project: Any, curator: Any
) -> None:
    from curation.services import recover_stale_exports

    project = make_project("exp-worn", schema=PAIRWISE, curator=curator)
    snapshot = export_create(project=project, user=curator, filters={}, formats="pairs", enqueue=False)
    long_ago = timezone.now() - timedelta(hours=1)
    ExportSnapshot.objects.filter(id=snapshot.id).update(status="running", attempts=3, heartbeat_at=long_ago)
    half = snapshot.folder.with_name(f"{snapshot.code}.3.partial")
    half.mkdir(parents=True)
    (half / "pairs.jsonl").write_text("half")
    assert recover_stale_exports() == {"requeued": 0, "failed": 1}
    snapshot.refresh_from_db()
    assert snapshot.status == "failed" and "stopped reporting" in snapshot.error and "3 attempts" in snapshot.error
    assert snapshot.finished_at is not None and (snapshot.bundle_path, snapshot.files) == ("", [])
    assert not snapshot.folder.exists() and not _partials(snapshot)


# ---------------------------------------------------------------------------------------------
# The database restarts while an annotator submits


def _annotation_project(make_project: Any, make_user: Any, slug: str) -> Any:
    annotator = make_user("ann")
    project = make_project(slug, schema=PAIRWISE)
    membership_set(project=project, user=annotator, role=Membership.Role.ANNOTATOR)
    import_items(project=project, fileobj=jsonl([pair_row(0)]))
    return project


@pytest.mark.django_db(transaction=True)
def test_a_database_restart_during_annotation_loses_no_judgment(
    browser: Any, make_project: Any, make_user: Any, tmp_path: Path
) -> None:
    project = _annotation_project(make_project, make_user, "restart")
    with (
        postgres_proxy() as proxy,
        gunicorn_server(tmp_path, database_url=database_url_via(port=proxy.port), static=True) as server,
    ):
        context = browser.new_context(base_url=server.url)
        try:
            page = context.new_page()
            page.set_default_timeout(15_000)
            submits: list[int] = []
            page.on("response", lambda r: submits.append(r.status) if r.url.endswith("/submit") else None)
            login(page, "ann", "ann-pw-123")
            page.goto(f"/p/{project.slug}/annotate")
            page.wait_for_selector("#item-form")
            page.keyboard.press("1")  # A is much better

            proxy.down()
            down_at = time.monotonic()
            # While the database is away, pages answer 503 with Retry-After, not a 500 traceback.
            outage = page.request.get(f"/p/{project.slug}/annotate")
            assert outage.status == 503 and outage.headers["retry-after"] == "2"
            assert "unavailable" in outage.text() and "Traceback" not in outage.text()
            health = page.request.get("/healthz")
            assert health.status == 503 and health.json()["checks"]["database"]["ok"] is False

            page.keyboard.press("Control+Enter")  # submit: the first attempts meet the outage
            while 503 not in submits or time.monotonic() - down_at < 2:
                page.wait_for_timeout(100)
            assert "retrying" in page.locator("#item-error").inner_text()
            assert Judgment.objects.count() == 0
            proxy.up()  # the database is back: the page's next retry goes through

            page.wait_for_selector("#queue-empty", timeout=20_000)
        finally:
            context.close()
    assert proxy.refused > 0  # the server did try to reconnect during the outage
    assert submits[-1] == 200 and submits.count(503) >= 1, submits
    judgment = Judgment.objects.get()  # exactly one
    assert judgment.payload["pairwise"] == {"choice": "AB"[judgment.response_order[0]], "strength": 2}
    assert Assignment.objects.get().state == "submitted"
    assert Item.objects.get().human_count == 1


@pytest.mark.django_db(transaction=True)
def test_a_lost_response_is_retried_and_stored_once(page: Any, make_project: Any, make_user: Any) -> None:
    """The answer reached the server and was stored, but the connection broke before the response
    came back: the page sends it again (same assignment, the idempotency key) and moves on."""
    project = _annotation_project(make_project, make_user, "lost")
    attempts: list[str] = []

    def lose_first_response(route: Any) -> None:
        if not attempts:
            attempts.append("lost")
            route.fetch()  # the server stores the judgment...
            route.abort("connectionreset")  # ...and its answer never arrives
        else:
            attempts.append("passed")
            route.continue_()

    login(page, "ann", "ann-pw-123")
    page.route("**/submit", lose_first_response)
    page.goto(f"/p/{project.slug}/annotate")
    page.wait_for_selector("#item-form")
    page.keyboard.press("5")  # B is much better
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#queue-empty")
    assert attempts == ["lost", "passed"]
    judgment = Judgment.objects.get()
    assert judgment.payload["pairwise"] == {"choice": "AB"[judgment.response_order[1]], "strength": 2}
    assert Item.objects.get().human_count == 1


# ---------------------------------------------------------------------------------------------
# Expired leases go back to the queue through the periodic task on a worker


@pytest.mark.worker
def test_the_reap_task_on_a_worker_returns_an_expired_lease(
    celery_worker_process: Any, make_project: Any, make_user: Any
) -> None:
    from annotation.tasks import reap_expired_leases

    alice, bob = make_user("alice"), make_user("bob")
    project = make_project("reap", schema=PAIRWISE, overlap=1, lease_seconds=60)
    for user in (alice, bob):
        membership_set(project=project, user=user, role=Membership.Role.ANNOTATOR)
    import_items(project=project, fileobj=jsonl([pair_row(0)]))
    lease = queue.next_assignment(project=project, user=alice)
    assert lease is not None and Item.objects.get().leased_count == 1
    past = timezone.now() - timedelta(minutes=2)
    Assignment.objects.filter(id=lease.id).update(leased_at=past - timedelta(minutes=1), expires_at=past)

    reap_expired_leases.delay()  # what beat sends every minute
    wait_until(lambda: Assignment.objects.get(id=lease.id).state == "expired", 30, "the lease expiring")
    assert Item.objects.get().leased_count == 0  # the slot is free again
    bobs = queue.next_assignment(project=project, user=bob)
    assert bobs is not None and bobs.item_id == lease.item_id


# ---------------------------------------------------------------------------------------------
# A training run whose worker died and that nobody can take over ends failed
# (the redelivered, taken-over run: tests/test_worker.py::test_a_worker_killed_mid_run_leaves_the_registry_consistent)


def test_a_dead_training_run_is_requeued_or_given_up_by_the_sweep(
    make_project: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from models_srv.models import RewardModelVersion
    from models_srv.services import artifacts_root, recover_stale_runs, training_run, training_start

    project = make_project("rm-dead", schema=PAIRWISE)
    import_items(project=project, fileobj=jsonl([pair_row(i, label="AB"[i % 2]) for i in range(4)]))

    def start() -> Any:
        return training_start(project=project, config={"mode": "frozen"}, enqueue=False)

    long_ago = timezone.now() - timedelta(hours=2)

    worn = start()  # killed three times: the next redelivery gives up instead of training again
    RewardModelVersion.objects.filter(id=worn.id).update(status="running", attempts=3, heartbeat_at=long_ago)
    assert training_run(version_id=worn.id, redelivered=True) is None
    worn.refresh_from_db()
    assert worn.status == "failed" and "gave up after 3 attempts" in worn.error and not worn.is_current

    # Never redelivered (the broker waits an hour, or never): the sweep decides.
    alive, silent, worn_out = start(), start(), start()
    RewardModelVersion.objects.filter(id=alive.id).update(status="running", attempts=1, heartbeat_at=timezone.now())
    RewardModelVersion.objects.filter(id=silent.id).update(status="running", attempts=1, heartbeat_at=long_ago)
    RewardModelVersion.objects.filter(id=worn_out.id).update(status="running", attempts=3, heartbeat_at=long_ago)
    assert training_run(version_id=alive.id, redelivered=True) is None  # alive: left alone
    runs = {"alive": alive, "silent": silent, "worn_out": worn_out}
    half_written = {name: artifacts_root() / project.slug / f"{run.uuid}.1.partial" for name, run in runs.items()}
    for folder in half_written.values():
        folder.mkdir(parents=True)
        (folder / "heads.safetensors").write_bytes(b"half")
    with django_capture_on_commit_callbacks() as sent:
        assert recover_stale_runs() == {"requeued": 1, "failed": 1}
    assert len(sent) == 1  # the silent run's task, sent again
    assert {name: folder.exists() for name, folder in half_written.items()} == {
        "alive": True,
        "silent": False,
        "worn_out": False,
    }
    for run in runs.values():
        run.refresh_from_db()
    assert alive.status == "running" and alive.attempts == 1
    assert silent.status == "queued" and silent.attempts == 1 and silent.artifact_path == ""
    assert worn_out.status == "failed" and "stopped reporting" in worn_out.error and worn_out.artifact_path == ""
    assert recover_stale_runs() == {"requeued": 0, "failed": 0}  # nothing twice


# ---------------------------------------------------------------------------------------------
# The 503 itself: from a view (the middleware) and from outside one (the 500 handler)


def test_database_errors_answer_503_with_retry_after_wherever_they_are_raised(rf: Any) -> None:
    from django.db import InterfaceError, OperationalError

    from config.reliability import DatabaseUnavailableMiddleware, server_error

    middleware = DatabaseUnavailableMiddleware(lambda request: None)
    page = middleware.process_exception(rf.get("/p/x/annotate"), OperationalError("connection refused"))
    assert (page.status_code, page["Retry-After"], page["Content-Type"]) == (503, "2", "text/plain; charset=utf-8")
    api = middleware.process_exception(rf.get("/api/v1/projects"), InterfaceError("connection already closed"))
    assert api.status_code == 503 and "unavailable" in json.loads(api.content)["detail"]
    assert middleware.process_exception(rf.get("/"), ValueError("a bug")) is None  # not ours: a 500

    try:
        raise OperationalError("the session could not be saved")  # e.g. in a middleware
    except OperationalError:
        assert server_error(rf.get("/accounts/login/")).status_code == 503
    try:
        raise ValueError("a bug")
    except ValueError:
        assert server_error(rf.get("/")).status_code == 500


@pytest.mark.django_db(transaction=True)
def test_the_health_check_asks_the_server_only_once_something_arrived(monkeypatch: Any) -> None:
    """config.postgresql: a quiet connection passes the per-request check without a round trip;
    one whose server went away (here, its backend terminated) is checked, closed and replaced."""
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper as DjangoWrapper

    asked: list[int] = []
    real = DjangoWrapper.is_usable
    monkeypatch.setattr(DjangoWrapper, "is_usable", lambda self: asked.append(1) or real(self))
    conn = connections.create_connection("default")
    try:
        assert type(conn).__module__ == "config.postgresql.base"
        conn.ensure_connection()
        assert conn.health_check_enabled
        pid = conn.connection.info.backend_pid
        for _ in range(3):  # three requests in a row on a quiet connection
            conn.health_check_done = False
            conn.close_if_health_check_failed()
        assert asked == [] and conn.connection is not None

        with connection.cursor() as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 10
        while conn._quiet() and time.monotonic() < deadline:  # the server's goodbye is on its way
            time.sleep(0.05)
        conn.health_check_done = False
        conn.close_if_health_check_failed()
        assert asked == [1] and conn.connection is None  # asked, found dead, closed
        with conn.cursor() as cursor:  # the next use opens a new connection
            cursor.execute("SELECT pg_backend_pid()")
            assert cursor.fetchone()[0] != pid
    finally:
        conn.close()


@pytest.mark.django_db
def test_timestamps_come_back_as_djangos_own_loader_reads_them() -> None:
    """config.postgresql: cursors read timestamptz with psycopg's C loader where the connection and
    Django are both on UTC; the values are exactly those Django's loader gives."""
    import datetime as dt

    from django.db.backends.postgresql.psycopg_any import register_tzloader
    from psycopg.pq import Format

    from config.postgresql.base import _FAST_TZ_LOADER, _TIMESTAMPTZ

    values = [
        "2026-12-03 05:40:01.123456+00",
        "1999-12-31 23:59:59+05:30",
        "2024-02-29 12:00:00.5-08",
        "1970-01-01 00:00:00+00",
        "0500-06-15 10:11:12.000001+00",
        "9999-12-31 23:59:59.999999+00",
    ]
    sql = "SELECT " + ", ".join(["%s::timestamptz"] * len(values))
    with connection.cursor() as c:
        assert c.cursor.adapters.get_loader(_TIMESTAMPTZ, Format.TEXT) is _FAST_TZ_LOADER
        c.execute(sql, values)
        fast = c.fetchone()
    djangos = connection.connection.cursor()  # a plain psycopg cursor with Django's loader on it
    register_tzloader(connection.timezone, djangos)
    djangos.execute(sql, values)
    slow = djangos.fetchone()
    djangos.close()
    assert fast == slow
    assert [v.tzinfo for v in fast] == [dt.UTC] * len(values)
    assert [v.tzinfo for v in slow] == [dt.UTC] * len(values)
    assert fast[1] == dt.datetime(1999, 12, 31, 18, 29, 59, tzinfo=dt.UTC)


@pytest.mark.django_db(transaction=True)
def test_the_kept_cursor_behaves_as_djangos_own() -> None:
    """annotation.rows on config.postgresql's kept cursor: Django's errors, no statement inside a
    broken transaction, a new cursor after the connection is replaced, and nothing run in a
    transaction that Django's would not have run there."""
    from django.db import DatabaseError, DataError, connections, transaction
    from django.db.transaction import TransactionManagementError

    from annotation import rows

    assert rows.fetch_one("SELECT %s::int + 1", [1]) == (2,)
    first = connection._kept
    assert first is not None and rows.fetch_one("SELECT 3", []) == (3,) and connection._kept is first
    with pytest.raises(DataError):
        rows.fetch_one("SELECT 1 / 0", [])
    assert rows.fetch_one("SELECT 4", []) == (4,)  # autocommit: the failed statement left nothing behind
    with pytest.raises(TransactionManagementError), transaction.atomic():
        with contextlib.suppress(DataError):
            rows.fetch_one("SELECT 1 / 0", [])
        connection.needs_rollback = True  # what Django marks when an error passes through atomic
        rows.fetch_one("SELECT 6", [])
    wrapper, refused = connections["default"], []  # this thread's DatabaseWrapper, not the proxy

    def other_thread() -> None:
        try:
            wrapper.kept_cursor()
        except DatabaseError as exc:
            refused.append(exc)

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert refused and "thread" in str(refused[0])
    connection.close()
    assert rows.fetch_one("SELECT 7", []) == (7,)
    assert connection._kept is not first and connection._kept.connection is connection.connection
