"""Flows that cross Celery, through a real worker process against Redis and the test database."""

from __future__ import annotations

import io
import time

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import ImportJob, Item, Judgment, Membership
from annotation.services import membership_set
from tests.conftest import jsonl, pair_row

pytestmark = pytest.mark.worker


def _wait_for(job: ImportJob, timeout: float = 60) -> ImportJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.is_finished:
            return job
        time.sleep(0.2)
    raise AssertionError(f"import job still {job.status} after {timeout} s")


def test_an_upload_is_imported_by_the_worker(celery_worker_process, make_project, make_user) -> None:
    curator = make_user("wendy", can_create=True)
    project = make_project("worker", curator=curator)
    membership_set(project=project, user=curator, role=Membership.Role.CURATOR)
    c = Client()
    c.force_login(curator)

    good = io.BytesIO(jsonl([pair_row(i, label="A") for i in range(25)]).getvalue())
    good.name = "good.jsonl"
    response = c.post(reverse("annotation:import_upload", args=[project.slug]), {"file": good})
    assert response.status_code == 302
    job = _wait_for(ImportJob.objects.get(original_name="good.jsonl"))
    assert (job.status, job.items_created, job.judgments_created, job.format) == ("succeeded", 25, 25, "jsonl")

    bad = io.BytesIO(b'{"id": "x", "prompt": "p", "response_a": "a", "response_b": "b"}\n{"id": "y"}\n')
    bad.name = "bad.jsonl"
    c.post(reverse("annotation:import_upload", args=[project.slug]), {"file": bad})
    job = _wait_for(ImportJob.objects.get(original_name="bad.jsonl"))
    assert job.status == "failed"
    assert job.errors == ["line 2: missing prompt (or messages)"]
    assert Item.objects.filter(project=project).count() == 25
    assert Judgment.objects.filter(item__project=project).count() == 25


def _wait_status(version, statuses: set[str], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version.refresh_from_db()
        if version.status in statuses:
            return version
        time.sleep(0.3)
    raise AssertionError(f"version still {version.status} ({version.progress}) after {timeout} s")


TINY = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}


def test_a_training_run_goes_through_the_gpu_queue(celery_worker_process, make_project) -> None:
    from models_srv.services import training_start
    from tests.test_reward_training import synthetic_pairs

    project = make_project("train-worker")
    import_items_rows(project, synthetic_pairs(120))
    config = {"from_config": TINY, "mode": "full", "epochs": 2, "max_length": 32, "lr": 2e-3}
    version = training_start(project=project, config=config)  # queued on commit (autocommit here)
    version = _wait_status(version, {"succeeded", "failed"})
    assert version.status == "succeeded", version.error
    assert version.is_current and version.metrics["pairwise"]["n"] > 0
    assert version.attempts == 1


def test_a_worker_killed_mid_run_leaves_the_registry_consistent(worker_env, make_project, tmp_path) -> None:
    from models_srv.services import training_start
    from tests.conftest import start_worker, stop_worker
    from tests.test_reward_training import synthetic_pairs

    env = {"CELERY_VISIBILITY_TIMEOUT": "3", "RM_HEARTBEAT_STALE_SECONDS": "2"}
    project = make_project("killed")
    import_items_rows(project, synthetic_pairs(200))
    config = {"from_config": TINY, "mode": "full", "epochs": 40, "max_length": 32, "batch_size": 8}
    first = start_worker(tmp_path / "w1.log", **env)
    version = training_start(project=project, config=config)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        version.refresh_from_db()
        if version.progress.get("phase") == "training":
            break
        time.sleep(0.2)
    assert version.status == "running"
    stop_worker(first, kill=True)  # SIGKILL the whole worker, mid-epoch
    time.sleep(4)
    version.refresh_from_db()
    assert version.status == "running" and not version.is_current and version.artifact_path == ""
    second = start_worker(tmp_path / "w2.log", **env)  # the broker hands the unacked task out again
    try:
        version = _wait_status(version, {"succeeded", "failed"}, timeout=180)
    finally:
        stop_worker(second)
    assert version.status == "succeeded", version.error
    assert version.attempts == 2
    assert version.is_current and version.artifact_path


def import_items_rows(project, rows) -> None:
    from annotation.importing import import_items

    import_items(project=project, fileobj=jsonl(rows))
