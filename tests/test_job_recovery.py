"""A job whose worker dies is run again or failed within minutes, whatever the broker: the sweep
(beat, every minute) re-queues a run whose heartbeat went stale, a run that lost its claim never
registers anything. (The broker's own redelivery:
tests/test_worker.py; exports: tests/test_reliability.py.)"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tests.conftest import start_worker, stop_worker
from tests.test_reward_training import TINY, synthetic_pairs
from tests.test_worker import (
    KILLED_RUN,
    assert_killed_mid_run,
    assert_registered_whole,
    import_items_rows,
    kill_at_first_training_report,
    wait_for_run,
)


def _wait_stale(version: Any, seconds: float) -> None:
    """Until the killed run's last heartbeat is `seconds` old (by the database's clock)."""
    while True:
        version.refresh_from_db()
        if version.heartbeat_at < timezone.now() - timedelta(seconds=seconds):
            return
        time.sleep(0.2)


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
    _wait_stale(version, 2)
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
