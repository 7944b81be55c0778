"""A job whose worker dies is run again or failed within minutes, whatever the broker: the sweep
(beat, every minute) re-queues a run whose heartbeat went stale, a run that lost its claim never
registers anything, and `make run` starts beat and stops whole. (The broker's own redelivery:
tests/test_worker.py; exports: tests/test_reliability.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from tests.conftest import ROOT, start_worker, stop_worker
from tests.test_reward_training import TINY, synthetic_pairs
from tests.test_worker import (
    KILLED_RUN,
    assert_killed_mid_run,
    assert_registered_whole,
    import_items_rows,
    kill_at_first_training_report,
    wait_for_run,
    wait_until_stale,
)


@pytest.mark.worker
def test_a_killed_training_run_is_requeued_by_the_sweep_and_finishes(worker_env, make_project, tmp_path) -> None:
    from config.celery import app
    from models_srv.services import training_run, training_start
    from models_srv.tasks import recover_stale_runs

    # The default visibility timeout: Redis would hand the killed worker's message out again only
    # after an hour. The sweep must not wait for it.
    env = {"CELERY_VISIBILITY_TIMEOUT": "3600", "RM_HEARTBEAT_STALE_SECONDS": "2"}
    project = make_project("swept")
    import_items_rows(project, synthetic_pairs(200))
    first = start_worker(tmp_path / "w1.log", **env)
    version = training_start(project=project, config=KILLED_RUN)
    kill_at_first_training_report(first, version)
    assert_killed_mid_run(version)
    wait_until_stale(version, seconds=2)
    second = start_worker(tmp_path / "w2.log", **env)
    try:
        recover_stale_runs.delay()  # what beat sends every minute, run by the worker
        version = wait_for_run(version, {"succeeded", "failed"})
    finally:
        stop_worker(second)
        with app.connection_for_write() as conn:  # forget the killed delivery: no later test gets it
            conn.default_channel.client.delete("unacked", "unacked_index")
    assert_registered_whole(version, attempts=2)
    # The killed delivery, were the broker to hand it out after all, finds the run finished.
    assert training_run(version_id=version.id, redelivered=True) is None
    version.refresh_from_db()
    assert version.status == "succeeded" and version.attempts == 2


def test_an_attempt_that_lost_its_run_registers_nothing(make_project) -> None:
    from models_srv.models import RewardModelVersion
    from models_srv.services import artifacts_root, training_run, training_start

    project = make_project("superseded")
    import_items_rows(project, synthetic_pairs(40))
    version = training_start(project=project, config={**KILLED_RUN, "from_config": TINY}, enqueue=False)

    def taken_over(info: dict[str, Any]) -> None:
        # This attempt went silent too long: the sweep re-queued the run and another worker
        # claimed it (its attempt 2) while this one was still training.
        if info.get("phase") == "training":
            RewardModelVersion.objects.filter(id=version.id).update(attempts=2, heartbeat_at=timezone.now())

    assert training_run(version_id=version.id, echo=taken_over) is None
    version.refresh_from_db()
    assert version.status == "running" and version.attempts == 2  # left to its new owner
    assert not version.is_current and version.artifact_path == "" and version.metrics == {}
    assert not list((artifacts_root() / project.slug).glob(f"{version.uuid}*"))


# ---------------------------------------------------------------------------------------------
# `make run`: web, worker and beat on the embedded defaults, stopped whole by one signal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.worker
def test_make_run_starts_beat_and_a_sigterm_stops_every_process(tmp_path: Path) -> None:
    port = _free_port()
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(VAR_DIR=str(var), PORT=str(port), DEBUG="1")  # SQLite and the filesystem broker in var/
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        ["scripts/run.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    groups: set[int] = set()
    try:
        deadline = time.monotonic() + 180  # migrate and the demo on a fresh SQLite file
        while True:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.5)
        worker_log = var / "worker.log"
        while "beat: Starting" not in (worker_log.read_text() if worker_log.exists() else ""):
            assert time.monotonic() < deadline, "beat did not start"
            time.sleep(0.3)
        while not list(var.glob("celerybeat-schedule*")):
            assert time.monotonic() < deadline, "no beat schedule file"
            time.sleep(0.3)
        # Every process run.sh started, in whatever process group it put them.
        out = subprocess.run(["ps", "-eo", "pid=,pgid=,sid="], capture_output=True, text=True, check=True).stdout
        groups = {int(pgid) for _, pgid, sid in (line.split() for line in out.splitlines()) if int(sid) == proc.pid}
        assert len(groups) >= 2, out  # the script and the worker at least

        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)  # what a terminal's Ctrl-C or a supervisor sends
        proc.wait(timeout=60)
        while any(_group_alive(g) for g in groups):
            assert time.monotonic() - started < 60, "processes left running"
            time.sleep(0.1)
        print(f"everything stopped {time.monotonic() - started:.1f} s after SIGTERM")
    finally:
        for g in groups | {proc.pid}:
            if _group_alive(g):
                os.killpg(g, signal.SIGKILL)
        proc.wait()
        log.close()
