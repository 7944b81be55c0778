"""A running job's heartbeat comes from a thread of its own (config/jobs.py), so a job that reports
no progress for a while stays alive and a killed one is recognized within the stale threshold;
imports and AI labeling runs are swept like training runs and exports: a killed one is re-queued
and finishes with every row and every judgment exactly once. Real workers, a fake
OpenAI-compatible server on 127.0.0.1 that holds a request until the test lets it go."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from annotation.importing import import_items
from annotation.models import ImportJob, Item, Judgment
from models_srv.labeling import labeler_create, run_start
from models_srv.models import AILabelRun
from tests.conftest import ROOT, jsonl, pair_row, start_worker, stop_worker
from tests.fake_openai import FakeOpenAI

# Beats five times a second; two seconds of silence count as dead; Redis would redeliver only
# after an hour, so only the sweep can bring a killed job back.
FAST = {"JOB_HEARTBEAT_SECONDS": "0.2", "JOB_HEARTBEAT_STALE_SECONDS": "2", "CELERY_VISIBILITY_TIMEOUT": "3600"}
STALE = timedelta(seconds=2)


def wait_until(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def db_now() -> Any:
    with connection.cursor() as cur:
        cur.execute("SELECT now()")
        return cur.fetchone()[0]


def forget_killed_deliveries() -> None:
    from config.celery import app

    with app.connection_for_write() as conn:  # the killed worker's unacked message: no later test gets it
        conn.default_channel.client.delete("unacked", "unacked_index")


class HoldingOpenAI(FakeOpenAI):
    """Answers like FakeOpenAI, but holds every request whose prompt says HOLD until `release`."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.held = threading.Event()
        self.release = threading.Event()
        self.prompts: list[str] = []

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        prompt = body["messages"][1]["content"]
        with self.lock:
            self.prompts.append(prompt)
        if "HOLD" in prompt and not self.release.is_set():
            self.held.set()
            self.release.wait(300)
        return super().answer(body)

    def asked(self, marker: str) -> int:
        with self.lock:
            return sum(marker in p for p in self.prompts)


@pytest.fixture
def llm() -> Iterator[HoldingOpenAI]:
    with HoldingOpenAI() as server:
        try:
            yield server
        finally:
            server.release.set()  # before the server waits for its handlers to end


def _labeling_project(make_project: Any, markers: list[str]) -> Any:
    """One item per marker, in id order; the better response says GOOD (what the fake prefers)."""
    project = make_project("live-llm")
    rows = [
        {
            "id": f"i{n:03d}",
            "prompt": f"Question {n} {marker} case:good",
            "response_a": "GOOD answer",
            "response_b": "BAD answer",
        }
        for n, marker in enumerate(markers)
    ]
    import_items(project=project, fileobj=jsonl(rows))
    return project


def _start_run(project: Any, url: str) -> AILabelRun:
    labeler = labeler_create(
        project=project,
        kind="llm",
        name="judge",
        config={"base_url": url, "model": "judge-1", "concurrency": 4, "backoff_s": 0.01, "max_retries": 1},
        api_key="sk-test",
    )
    return run_start(project=project, labeler=labeler)  # its task goes out on commit (autocommit here)


def _run(run: AILabelRun) -> AILabelRun:
    run.refresh_from_db()
    return run


# ---------------------------------------------------------------------------------------------
# The liveness thread


@pytest.mark.worker
def test_a_job_waiting_on_a_slow_step_keeps_its_heartbeat_fresh(worker_env, make_project, llm, tmp_path) -> None:
    project = _labeling_project(make_project, ["HOLD", "plain"])
    worker = start_worker(tmp_path / "w.log", **FAST)
    try:
        run = _start_run(project, llm.url)
        assert llm.held.wait(120), "the run never asked the model"
        held_since = db_now()
        # Nothing reports progress while the model thinks; the heartbeat goes on regardless,
        # well past the stale threshold, so the sweep never takes a healthy run for a dead one.
        wait_until(lambda: _run(run).heartbeat_at > held_since + 2 * STALE, 60, "heartbeats during the held request")
        assert not llm.release.is_set() and _run(run).status == "running"
        llm.release.set()
        wait_until(lambda: _run(run).status == "succeeded", 120, "the run to finish")
    finally:
        stop_worker(worker)
    assert run.attempts == 1 and run.done == 2
    assert Judgment.objects.filter(labeler=run.labeler).count() == 2


@pytest.mark.worker
def test_an_attempt_whose_heartbeat_lost_the_run_stops_and_writes_nothing(
    worker_env, make_project, llm, tmp_path
) -> None:
    # 32 items in the first batch (one held), 8 in the second.
    project = _labeling_project(make_project, ["HOLD"] + ["plain"] * 31 + ["LATE"] * 8)
    log = tmp_path / "w.log"
    worker = start_worker(log, **FAST)
    try:
        run = _start_run(project, llm.url)
        assert llm.held.wait(120), "the run never asked the model"
        # Meanwhile the sweep re-queued the run and another worker claimed it (its attempt 2).
        AILabelRun.objects.filter(id=run.id).update(attempts=2, heartbeat_at=timezone.now())
        wait_until(lambda: "no longer this attempt's" in log.read_text(), 60, "the heartbeat to notice")
        llm.release.set()
        wait_until(lambda: "lost the run to a takeover" in log.read_text(), 60, "the attempt to stop")
    finally:
        stop_worker(worker)
    run.refresh_from_db()
    assert (run.status, run.attempts, run.done, run.failed) == ("running", 2, 0, 0)  # left to its new owner
    assert Judgment.objects.filter(labeler=run.labeler).count() == 0  # its batch rolled back
    assert llm.asked("LATE") == 0  # and it asked nothing more


def test_heartbeats_wait_out_a_write_transaction_on_sqlite(tmp_path: Path) -> None:
    """`make run`'s embedded default: one SQLite file, one writer at a time."""
    script = """
import logging, django, threading
django.setup()
from django.core.management import call_command
from django.db import transaction
from django.db.migrations.recorder import MigrationRecorder
from config.jobs import liveness
warnings = []
class Catch(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("config.jobs").addHandler(Catch())
call_command("migrate", "contenttypes", verbosity=0)
rows = MigrationRecorder.Migration.objects.filter(app="contenttypes", name="0001_initial")
with liveness(rows, every=0.02, field="applied") as beat:
    for _ in range(3):  # the task's own writes, each holding the write lock a while
        with transaction.atomic():
            MigrationRecorder.Migration.objects.filter(app="contenttypes").update(name="0001_initial")
            threading.Event().wait(0.5)
    seen = beat.beats
    for _ in range(500):  # and beats on after them
        if beat.beats > seen:
            break
        threading.Event().wait(0.02)
print("beats", beat.beats, "lost", beat.lost.is_set(), "warnings", warnings)
assert beat.beats > seen and not beat.lost.is_set() and not warnings
"""
    env_db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": env_db, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "lost False" in out.stdout


# ---------------------------------------------------------------------------------------------
# Killed imports and labeling runs are re-queued by the sweep


@pytest.mark.worker
def test_a_killed_labeling_run_is_requeued_and_judges_every_item_once(worker_env, make_project, llm, tmp_path) -> None:
    from models_srv.tasks import recover_stale_label_runs

    # The first batch (32 items) is judged; the worker dies waiting on the second batch's model.
    project = _labeling_project(make_project, ["plain"] * 32 + ["HOLD"] + ["plain"] * 7)
    first = start_worker(tmp_path / "w1.log", **FAST)
    run = _start_run(project, llm.url)
    assert llm.held.wait(120), "the run never reached its second batch"
    stop_worker(first, kill=True)
    llm.release.set()
    assert Judgment.objects.filter(labeler=run.labeler).count() == 32
    assert _run(run).status == "running"
    wait_until(lambda: _run(run).heartbeat_at < db_now() - STALE, 60, "the killed run's heartbeat going stale")
    second = start_worker(tmp_path / "w2.log", **FAST)
    try:
        recover_stale_label_runs.delay()  # what beat sends every minute
        wait_until(lambda: _run(run).status == "succeeded", 120, "the re-queued run to finish")
    finally:
        stop_worker(second)
        forget_killed_deliveries()
    judged = list(Judgment.objects.filter(labeler=run.labeler).values_list("item_id", flat=True))
    assert sorted(judged) == sorted(Item.objects.filter(project=project).values_list("id", flat=True))
    assert (run.attempts, run.done, run.skipped, run.failed) == (2, 40, 0, 0)


@pytest.mark.worker
def test_a_killed_import_is_requeued_and_imports_every_row_once(worker_env, make_project, curator, tmp_path) -> None:
    import psycopg

    from annotation.services import import_job_create
    from annotation.tasks import recover_stale_imports

    project = make_project("live-import", curator=curator)
    rows = 3000
    data = jsonl([pair_row(i) for i in range(rows)]).getvalue()
    s = connection.settings_dict
    # Another transaction holds the items table: the import blocks at its first insert, inside
    # its transaction, and is killed there.
    blocker = psycopg.connect(host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"], dbname=s["NAME"])
    blocker.execute("LOCK TABLE annotation_item IN EXCLUSIVE MODE")
    first = start_worker(tmp_path / "w1.log", **FAST)
    try:
        job = import_job_create(
            project=project, upload=io.BytesIO(data), name="rows.jsonl", source=ImportJob.Source.API, created_by=curator
        )

        def blocked() -> bool:
            with connection.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'annotation_item'::regclass"
                )
                return cur.fetchone()[0] > 0

        wait_until(blocked, 120, "the import to reach its first insert")
        stop_worker(first, kill=True)
    finally:
        blocker.rollback()
        blocker.close()
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("running", 1)
    stored = Path(job.file.path)
    assert stored.exists()  # the upload is kept for the next attempt
    wait_until(lambda: Item.objects.filter(project=project).count() == 0 and _stale(job), 60, "a silent job")
    second = start_worker(tmp_path / "w2.log", **FAST)
    try:
        recover_stale_imports.delay()  # what beat sends every minute
        wait_until(lambda: _refreshed(job).is_finished, 120, "the re-queued import to finish")
    finally:
        stop_worker(second)
        forget_killed_deliveries()
    assert job.status == "succeeded", job.errors
    assert (job.attempts, job.rows_read, job.items_created, job.items_existing) == (2, rows, rows, 0)
    assert Item.objects.filter(project=project).count() == rows
    assert Item.objects.filter(project=project, import_job=job).count() == rows


def _refreshed(job: ImportJob) -> ImportJob:
    job.refresh_from_db()
    return job


def _stale(job: ImportJob) -> bool:
    return _refreshed(job).heartbeat_at < db_now() - STALE


# ---------------------------------------------------------------------------------------------
# The sweeps' decisions


def test_silent_imports_and_label_runs_are_requeued_or_given_up(
    make_project, curator, django_capture_on_commit_callbacks
) -> None:
    from annotation.services import import_job_create, recover_stale_imports
    from models_srv.labeling import recover_stale_label_runs

    project = make_project("swept-jobs", curator=curator)
    long_ago = timezone.now() - timedelta(hours=1)
    jobs = [
        import_job_create(
            project=project, upload=jsonl([pair_row(1)]), name="r.jsonl", source=ImportJob.Source.API, created_by=None
        )
        for _ in range(3)
    ]
    alive, silent, worn = jobs
    ImportJob.objects.filter(id=alive.id).update(status="running", attempts=1, heartbeat_at=timezone.now())
    ImportJob.objects.filter(id=silent.id).update(status="running", attempts=1, heartbeat_at=long_ago)
    ImportJob.objects.filter(id=worn.id).update(status="running", attempts=3, heartbeat_at=long_ago)
    with django_capture_on_commit_callbacks() as sent:
        assert recover_stale_imports() == {"requeued": 1, "failed": 1}
    assert len(sent) == 1
    assert [_refreshed(j).status for j in jobs] == ["running", "pending", "failed"]
    assert "gave up" in worn.errors[0] and Path(silent.file.path).exists()
    assert recover_stale_imports() == {"requeued": 0, "failed": 0}

    import_items(project=project, fileobj=jsonl([pair_row(i) for i in range(3)]))
    labeler = labeler_create(
        project=project, kind="llm", name="j", config={"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    )
    runs = [AILabelRun.objects.create(project=project, labeler=labeler, item_ids=[]) for _ in range(3)]
    for run, (attempts, beat) in zip(runs, [(1, timezone.now()), (1, long_ago), (3, long_ago)], strict=True):
        AILabelRun.objects.filter(id=run.id).update(status="running", attempts=attempts, heartbeat_at=beat)
    with django_capture_on_commit_callbacks() as sent:
        assert recover_stale_label_runs() == {"requeued": 1, "failed": 1}
    assert len(sent) == 1
    assert [_run(r).status for r in runs] == ["running", "queued", "failed"]
    assert "gave up" in runs[2].error
    assert json.dumps(recover_stale_label_runs()) == json.dumps({"requeued": 0, "failed": 0})
