"""Flows that cross Celery, through a real worker process against Redis and the test database."""

from __future__ import annotations

import io
import json
import time

import pytest
from django.test import Client
from django.urls import reverse

from annotation.models import ImportJob, Item, Judgment, Membership
from annotation.services import membership_set
from tests.conftest import jsonl, pair_row
from tests.test_reward_training import TINY

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


# A run that dies is run again from the start: the test's run is short by design (tiny model,
# few epochs), and the worker is killed at the run's first training progress report, not at a
# time, so a slow machine makes both halves slower alike and cannot make the test fail.
KILLED_RUN = {"from_config": TINY, "mode": "full", "epochs": 4, "max_length": 32, "batch_size": 8}


def wait_for_run(version, statuses: set[str], stall: float = 180):
    """Wait until the run reaches one of `statuses`; fail only when it shows no change (status,
    attempt, progress) for `stall` seconds: a slow machine is slow, not stuck."""
    seen, since = None, time.monotonic()
    while True:
        version.refresh_from_db()
        if version.status in statuses:
            return version
        state = (version.status, version.attempts, version.progress, version.heartbeat_at)
        if state != seen:
            seen, since = state, time.monotonic()
        elif time.monotonic() - since > stall:
            raise AssertionError(f"version stuck at {version.status} ({version.progress}) for {stall} s")
        time.sleep(0.2)


def kill_at_first_training_report(worker, version) -> None:
    """SIGKILL the worker's whole process group as soon as the run reports a training step."""
    from tests.conftest import stop_worker

    try:
        seen, since = None, time.monotonic()
        while True:
            version.refresh_from_db()
            if version.progress.get("phase") == "training":
                break
            assert version.status in ("queued", "running"), (version.status, version.error)
            if version.progress != seen:
                seen, since = version.progress, time.monotonic()
            assert time.monotonic() - since < 180, f"no progress from {version.progress}"
            time.sleep(0.05)
    finally:
        stop_worker(worker, kill=True)


def wait_until_stale(version, seconds: float, timeout: float = 120) -> None:
    """Wait until the run's last heartbeat is more than `seconds` old (a dead worker beats no more).
    Bounded: a heartbeat that never goes stale (something still beating) fails instead of hanging."""
    from datetime import timedelta

    from django.utils import timezone

    deadline = time.monotonic() + timeout
    while True:
        version.refresh_from_db()
        if timezone.now() - version.heartbeat_at > timedelta(seconds=seconds + 0.5):
            return
        assert time.monotonic() < deadline, f"heartbeat still fresh after {timeout} s: {version.heartbeat_at}"
        time.sleep(0.1)


def assert_killed_mid_run(version) -> None:
    """Killed while training: still `running`, nothing registered, no folder in its final place."""
    from models_srv.services import artifacts_root

    version.refresh_from_db()
    assert version.status == "running" and version.progress["phase"] == "training", version.progress
    assert not version.is_current and version.artifact_path == "" and version.finished_at is None
    assert not (artifacts_root() / version.project.slug / str(version.uuid)).exists()


def assert_registered_whole(version, attempts: int) -> None:
    """Succeeded on the given attempt, current, its artifacts complete (they load), no leftovers."""
    from pathlib import Path

    from models_srv import engine
    from models_srv.services import artifacts_root

    assert version.status == "succeeded", version.error
    assert version.attempts == attempts
    assert version.is_current and version.artifact_path
    engine.load_model(Path(version.artifact_path))  # every file the registry points at is there
    assert not list((artifacts_root() / version.project.slug).glob(f"{version.uuid}*.partial"))


def test_a_worker_killed_mid_run_leaves_the_registry_consistent(worker_env, make_project, tmp_path) -> None:
    from models_srv.services import training_start
    from tests.conftest import start_worker, stop_worker
    from tests.test_reward_training import synthetic_pairs

    # The broker hands the killed worker's message out again after 3 s; the run counts as dead
    # after 2 s of silence, so the redelivered task takes it over.
    env = {"CELERY_VISIBILITY_TIMEOUT": "3", "RM_HEARTBEAT_STALE_SECONDS": "2"}
    project = make_project("killed")
    import_items_rows(project, synthetic_pairs(200))
    first = start_worker(tmp_path / "w1.log", **env)
    version = training_start(project=project, config=KILLED_RUN)
    kill_at_first_training_report(first, version)
    assert_killed_mid_run(version)
    # A redelivered message leaves a run whose heartbeat is still fresh to its owner (the sweep
    # would take it later): start the next worker only once the dead run has gone stale, or the
    # message can arrive first and be dropped, leaving the run to a sweep this test has no beat for.
    wait_until_stale(version, seconds=float(env["RM_HEARTBEAT_STALE_SECONDS"]))
    second = start_worker(tmp_path / "w2.log", **env)  # the broker hands the unacked task out again
    try:
        version = wait_for_run(version, {"succeeded", "failed"})
    finally:
        stop_worker(second)
    assert_registered_whole(version, attempts=2)


def import_items_rows(project, rows) -> None:
    from annotation.importing import import_items

    import_items(project=project, fileobj=jsonl(rows))


def _wait_run(run, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in {"succeeded", "failed", "cancelled"}:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run still {run.status} after {timeout} s ({run.done}/{run.total})")


TINY_CAUSAL = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256}


def test_density_ratio_judge_labels_through_the_gpu_queue(celery_worker_process, make_project) -> None:
    from annotation.models import Judgment
    from models_srv.labeling import labeler_create, run_start

    project = make_project("cdr", schema={"pairwise": {"strengths": ["better", "much better"], "allow_tie": False}})
    rows = [
        {
            "id": f"d{i}",
            "prompt": f"Say something about {i}",
            "response_a": f"answer {i} one",
            "response_b": f"reply {i} two",
        }
        for i in range(6)
    ]
    import_items_rows(project, rows)
    config = {
        "strong": "tiny-strong",
        "weak": "tiny-weak",
        "preamble": "Prefer helpful, harmless answers.",
        "from_config": {"strong": {**TINY_CAUSAL, "seed": 1}, "weak": {**TINY_CAUSAL, "seed": 2}},
    }
    labeler = labeler_create(project=project, kind="density_ratio", name="cdr", config=config)
    run = _wait_run(run_start(project=project, labeler=labeler))
    assert run.status == "succeeded", run.error
    assert run.done == 6 and run.failed == 0
    for j in Judgment.objects.filter(labeler=labeler):
        assert j.payload["pairwise"]["choice"] in ("A", "B")
        assert 0.5 <= j.confidence <= 1
        rewards = json.loads(j.raw_output)["rewards"]
        assert j.payload["pairwise"]["choice"] == ("B" if rewards[1] > rewards[0] else "A")


def test_reward_model_judge_labels_through_the_ai_queue(celery_worker_process, make_project, settings, tmp_path):
    """The judge labels every item; its agreement with the human labels is measured on the items
    its version never trained on (the snapshot's held-out half), where it must beat chance and
    equal the version's own held-out accuracy (the same model on the same items). The preference
    follows words of the responses, so a model that learned it can show it on 120 items."""
    from models_srv import services
    from models_srv.labeling import labeler_create, run_start
    from tests.chance import above_chance
    from tests.test_reward_training import synthetic_pairs

    settings.MEDIA_ROOT = tmp_path  # the worker loads the version from its stored absolute path
    project = make_project("rm-judge", schema={"pairwise": {"strengths": ["better", "much better"]}})
    import_items_rows(project, synthetic_pairs(240))
    config = {
        "from_config": TINY,
        "mode": "full",
        "epochs": 4,
        "lr": 2e-3,
        "max_length": 48,
        "ensemble": 3,
        "eval_fraction": 0.5,
    }
    version = services.training_run(
        version_id=services.training_start(project=project, config=config, enqueue=False).id
    )
    assert version.status == "succeeded", version.error
    labeler = labeler_create(project=project, kind="reward_model", name="rm-current", config={"version": "current"})
    run = _wait_run(run_start(project=project, labeler=labeler), timeout=300)
    assert run.status == "succeeded", run.error
    assert run.done == 240 and run.failed == 0
    ai = {j.item_id: j for j in Judgment.objects.filter(labeler=labeler)}
    human = {j.item_id: j for j in Judgment.objects.filter(labeler__kind="imported", item__project=project)}
    snapshot = version.snapshot
    trained = set(
        Judgment.objects.filter(id__in=snapshot.judgment_ids)
        .exclude(item_id__in=snapshot.eval_item_ids)
        .values_list("item_id", flat=True)
    )
    held_out = sorted(set(human) - trained)
    assert set(held_out) == set(snapshot.eval_item_ids) and len(held_out) >= 90

    def agreement(items: list[int]) -> float:
        same = sum(ai[i].payload["pairwise"]["choice"] == human[i].payload["pairwise"]["choice"] for i in items)
        return same / len(items)

    agree = agreement(held_out)
    print(f"agreement: held out {agree:.4f} on {len(held_out)}, trained on {agreement(sorted(trained)):.4f}")
    assert above_chance(agree, len(held_out))
    assert agree == pytest.approx(version.metrics["pairwise"]["accuracy"], abs=1e-3)
    assert all(0.5 <= j.confidence <= 1 for j in ai.values())


def test_rerouting_runs_on_a_worker(celery_worker_process, make_project, make_user) -> None:
    from django.urls import reverse

    from models_srv.models import RouterVersion

    curator = make_user("router-cur", can_create=True)
    project = make_project("reroute", curator=curator, human_budget=0.5, routing_policy="learned")
    import_items_rows(project, [pair_row(i) for i in range(10)])
    c = Client()
    c.force_login(curator)
    assert c.post(reverse("models_srv:routing_run", args=[project.slug])).status_code == 302
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not RouterVersion.objects.filter(project=project).exists():
        time.sleep(0.3)
    router = RouterVersion.objects.get(project=project)
    assert not router.learned  # no calibration slice yet: the cold-start rule
    assert sum(router.counts.values()) == 10
    assert router.counts.get("human", 0) + router.counts.get("both", 0) == 5
