"""Noisy-label candidates from out-of-fold margins: cross-fitting never scores an item with a model
that trained on it, finds planted flips on a separable set, is stored per item by a job the curator
starts from the review page, and is what the review queue reads."""

from __future__ import annotations

import math
import random
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotation.importing import import_items
from annotation.models import Item, Membership
from annotation.services import membership_set
from curation import candidates
from models_srv import engine, services
from models_srv.crossfit import assign_folds, crossfit
from models_srv.data import Examples, PairExample
from models_srv.models import CrossFitRun, DataSnapshot, OutOfFoldMargin, RunStatus
from tests.conftest import jsonl
from tests.test_reward_training import BAD, GOOD, TINY

FROZEN = {"from_config": TINY, "mode": "frozen", "max_length": 32}


def separable(n: int, flips: set[int], seed: int = 0) -> Examples:
    """The preferred response says a good word twice, the other a bad one; `flips` swap the label."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        filler = " ".join(rng.choices(["the", "answer", "is", "a", "some", "text"], k=4))
        good, bad = f"{filler} {rng.choice(GOOD)} {rng.choice(GOOD)}", f"{filler} {rng.choice(BAD)} {rng.choice(BAD)}"
        chosen, rejected = (bad, good) if i in flips else (good, bad)
        pairs.append(PairExample(1000 + i, f"question {i}", chosen, rejected, 1))
    return Examples(pairs=pairs)


def test_folds_are_by_item_seeded_and_balanced() -> None:
    folds = assign_folds([5, 3, 3, 9, 1, 7, 2, 8, 4, 6, 10], k=3, seed=1)
    assert sorted(folds) == list(range(1, 11))  # an item twice gets one fold
    assert sorted(list(folds.values()).count(f) for f in range(3)) == [3, 3, 4]
    assert folds == assign_folds(reversed(range(1, 11)), k=3, seed=1)  # whatever the order
    assert folds != assign_folds(range(1, 11), k=3, seed=2)
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds([1, 2], k=1)


def test_no_item_is_scored_by_a_model_that_trained_on_it(db, monkeypatch) -> None:
    examples = separable(30, set())
    examples.pairs.append(PairExample(1000, "question 0", "another answer", "a third one", 2))  # item 1000 twice
    trained_on: list[set[str]] = []
    scored_with: list[set[str]] = []
    real_train = engine.train

    def spy(data, config, progress=None, should_stop=None):
        model = real_train(data, config, progress, should_stop)
        seen = {p for p, _ in data.train.texts()}
        trained_on.append(seen)
        real_score = model.score

        def score(texts, use_cache=True):
            scored_with.append({p for p, _ in texts})
            return real_score(texts, use_cache)

        model.score = score
        return model

    monkeypatch.setattr(engine, "train", spy)
    out = crossfit(examples, engine.TrainConfig(**FROZEN, epochs=2, ensemble=2), k=4, seed=3)
    assert len(trained_on) == len(scored_with) == 4
    for seen, scored in zip(trained_on, scored_with, strict=True):
        assert scored and not seen & scored  # the prompts (one per item) a fold's model scored, it never saw
    assert [o.item_id for o in out] == [p.item_id for p in examples.pairs]
    assert out[0].fold == out[-1].fold  # both labels of item 1000 in one fold
    assert {o.fold for o in out} == {0, 1, 2, 3}
    assert all(o.spread >= 0 and 0 < o.probability < 1 for o in out)
    assert out[0].probability == pytest.approx(1 / (1 + math.exp(-out[0].margin)))


def test_a_memorizable_random_label_is_not_predicted_out_of_fold(db) -> None:
    """Random labels on random texts: a model that saw them fits them; one that did not is at chance.
    Were any held-out item in its fold's training data, the out-of-fold accuracy would climb too."""
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta", "zeta", "rho"]
    pairs = []
    for i in range(60):
        a, b = " ".join(rng.choices(words, k=6)), " ".join(rng.choices(words, k=6))
        pairs.append(PairExample(i, f"q{i}", a, b, 1))
    examples = Examples(pairs=pairs)
    config = engine.TrainConfig(**FROZEN, epochs=120, ensemble=1, head="mlp", l2=0.0, lr=3e-2)
    out = crossfit(examples, config, k=5, seed=0)
    from models_srv.data import SplitData

    model = engine.train(SplitData(train=examples, eval=Examples(), aspects={}), config)
    mean, _, _ = model.score([(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs])
    in_sample = sum(float(mean[i]) > float(mean[60 + i]) for i in range(60)) / 60
    out_of_fold = sum(o.margin > 0 for o in out) / 60
    assert in_sample >= 0.9, in_sample
    assert out_of_fold <= 0.7, out_of_fold


def test_planted_flips_on_a_separable_set_are_found(db) -> None:
    flips = set(random.Random(1).sample(range(200), 20))
    examples = separable(200, flips)
    config = engine.TrainConfig(**FROZEN, epochs=80, ensemble=3, lr=1e-2)
    out = crossfit(examples, config, k=5, seed=0)
    lowest = sorted(range(200), key=lambda i: out[i].probability)[: len(flips)]
    recall_at_k = len(flips & set(lowest)) / len(flips)
    assert recall_at_k >= 0.95, recall_at_k
    assert {i for i, o in enumerate(out) if o.probability < 0.5} >= flips


# ---------------------------------------------------------------------------------------------
# The job, and the review queue reading what it stored


def rows(n: int, flips: set[int]) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        good, bad = (
            f"this is {rng.choice(GOOD)} and {rng.choice(GOOD)}",
            f"this is {rng.choice(BAD)} and {rng.choice(BAD)}",
        )
        a_good = i % 2 == 0
        label = "A" if a_good else "B"
        if i in flips:
            label = "B" if a_good else "A"
        out.append(
            {
                "id": f"s{i}",
                "prompt": f"question {i}",
                "response_a": good if a_good else bad,
                "response_b": bad if a_good else good,
                "label": label,
                "strength": 1,
            }
        )
    return out


def test_the_job_stores_margins_in_stored_order_and_the_queue_reads_them(make_project) -> None:
    project = make_project("noise", schema={"pairwise": {"strengths": ["better", "much better"]}})
    import_items(project=project, fileobj=jsonl(rows(120, {3, 8})))
    run = services.crossfit_start(project=project, config={**FROZEN, "epochs": 80, "lr": 1e-2}, enqueue=False)
    assert services.crossfit_start(project=project, enqueue=False) == run  # one active run per project
    run = services.crossfit_run(run_id=run.id)
    assert run.status == "succeeded", run.error
    assert services.crossfit_run(run_id=run.id) is None  # a second delivery changes nothing
    assert run.counts == {"items": 120, "pairs": 120}
    margins = {m.item.external_id: m.margin for m in OutOfFoldMargin.objects.filter(run=run).select_related("item")}
    assert sum((margins[f"s{i}"] < 0) == (i % 2 == 0) for i in range(120)) >= 110  # r(B) - r(A): A good when even

    found = {c["external_id"]: c for c in candidates.noisy_candidates(project)}
    assert {"s3", "s8"} <= {k for k, c in found.items() if "out_of_fold_disagrees" in c["reasons"]}
    evidence = found["s3"]["evidence"]["out_of_fold_disagrees"]
    assert evidence["label"] == "A" and evidence["probability_of_label"] < 0.5 and evidence["margin_b_minus_a"] > 0
    assert len([c for c in found.values() if "out_of_fold_disagrees" in c["reasons"]]) <= 12


def test_the_queue_reads_the_latest_succeeded_run_not_the_current_model(make_project) -> None:
    project = make_project("noise2", schema={"pairwise": {"strengths": ["better"]}})
    import_items(project=project, fileobj=jsonl(rows(6, set())))
    items = {i.external_id: i for i in Item.objects.filter(project=project)}
    snapshot = DataSnapshot.objects.create(project=project)
    earlier = timezone.now() - timedelta(hours=1)
    old = CrossFitRun.objects.create(
        project=project, config={}, snapshot=snapshot, status=RunStatus.SUCCEEDED, finished_at=earlier
    )
    OutOfFoldMargin.objects.create(run=old, item=items["s0"], fold=0, margin=5.0)  # s0: label A, model says B
    assert [c["external_id"] for c in candidates.noisy_candidates(project)] == ["s0"]

    new = CrossFitRun.objects.create(
        project=project, config={}, snapshot=snapshot, status=RunStatus.SUCCEEDED, finished_at=timezone.now()
    )
    OutOfFoldMargin.objects.create(run=new, item=items["s0"], fold=1, margin=-2.0)  # agrees with A now
    OutOfFoldMargin.objects.create(run=new, item=items["s1"], fold=0, margin=-0.5)  # s1: label B, p = 0.38
    OutOfFoldMargin.objects.create(run=new, item=items["s3"], fold=2, margin=-3.0)  # s3: label B, p = 0.05
    CrossFitRun.objects.create(project=project, config={}, snapshot=snapshot, status=RunStatus.FAILED)
    found = candidates.noisy_candidates(project)
    assert [c["external_id"] for c in found] == ["s3", "s1"]  # lowest probability of the label first
    assert found[1]["evidence"]["out_of_fold_disagrees"]["probability_of_label"] == pytest.approx(0.3775, abs=1e-4)


def test_the_curator_starts_it_from_the_review_page_through_the_worker(
    celery_worker_process, make_project, make_user
) -> None:
    curator = make_user("nora")
    project = make_project("noise-worker", schema={"pairwise": {"strengths": ["better"]}}, curator=curator)
    membership_set(project=project, user=curator, role=Membership.Role.CURATOR)
    import_items(project=project, fileobj=jsonl(rows(40, {5})))
    c = Client()
    c.force_login(curator)
    page = c.get(reverse("curation:review", args=[project.slug]))
    assert b"No out-of-fold margins yet" in page.content and b"Compute out-of-fold margins" in page.content

    response = c.post(reverse("curation:review_crossfit", args=[project.slug]), headers={"HX-Request": "true"})
    assert response.status_code == 200 and b"Computing" in response.content and b"every 2s" in response.content
    run = CrossFitRun.objects.get(project=project)
    assert run.config["backbone"] == "default" and run.folds == 5  # no current model: TrainConfig's defaults
    deadline = time.monotonic() + 180
    while run.is_active and time.monotonic() < deadline:
        time.sleep(0.5)
        run.refresh_from_db()
    assert run.status == "succeeded", (run.status, run.progress, run.error)
    assert OutOfFoldMargin.objects.filter(run=run).count() == 40

    part = c.get(reverse("curation:review", args=[project.slug]), headers={"HX-Request": "true"})
    assert b"Out-of-fold margins computed" in part.content and b"every 2s" not in part.content
    page = c.get(reverse("curation:review", args=[project.slug]))
    assert b"out_of_fold_disagrees" in page.content and b"Recompute out-of-fold margins" in page.content


def test_a_run_whose_worker_died_is_queued_again_then_given_up(
    make_project, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    from models_srv import tasks

    sent: list[int] = []
    monkeypatch.setattr(tasks.gpu_crossfit, "delay", sent.append)
    project = make_project("noise3", schema={"pairwise": {"strengths": ["better"]}})
    import_items(project=project, fileobj=jsonl(rows(6, set())))
    run = services.crossfit_start(project=project, config=FROZEN, enqueue=False)
    silent = timezone.now() - timedelta(hours=1)
    CrossFitRun.objects.filter(id=run.id).update(status=RunStatus.RUNNING, attempts=1, heartbeat_at=silent)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.recover_stale_crossfits() == {"requeued": 1, "failed": 0}
    assert sent == [run.id] and CrossFitRun.objects.get(id=run.id).status == RunStatus.QUEUED
    assert services.crossfit_run(run_id=run.id, redelivered=True).status == RunStatus.SUCCEEDED
    CrossFitRun.objects.filter(id=run.id).update(status=RunStatus.RUNNING, attempts=3, heartbeat_at=silent)
    assert services.recover_stale_crossfits() == {"requeued": 0, "failed": 1}
    assert CrossFitRun.objects.get(id=run.id).status == RunStatus.FAILED


def test_too_few_items_is_refused_with_a_reason(project, curator) -> None:
    import_items(project=project, fileobj=jsonl(rows(3, set())))
    c = Client()
    c.force_login(curator)
    response = c.post(reverse("curation:review_crossfit", args=[project.slug]), headers={"HX-Request": "true"})
    assert response.status_code == 409 and b"at least 5 items" in response.content
    assert not CrossFitRun.objects.exists()
