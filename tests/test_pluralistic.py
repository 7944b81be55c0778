"""The pluralistic mixture finds planted preference groups, picks their number, places a newcomer,
and beats one Bradley-Terry model for the annotators it models (models_srv/pluralistic.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models_srv import pluralistic as pl
from tests.test_reward_training import TINY


def planted(n_per_group: tuple[int, ...], judgments: int, seed: int, flip: float = 0.1):
    """Annotators in groups, each group preferring along its own direction of 6 features."""
    rng = np.random.default_rng(seed)
    truth = [np.array([3.0, 0, 0, 0, 0, 0]), np.array([0, 0, -3.0, 0, 0, 0]), np.array([0, 0, 0, 0, 3.0, 0])]
    diffs, anns, groups = [], [], []
    a = 0
    for g, n in enumerate(n_per_group):
        for _ in range(n):
            x = rng.normal(size=(judgments, 6))
            first = (x @ truth[g] > 0) ^ (rng.random(judgments) < flip)
            diffs.append(np.where(first[:, None], x, -x))
            anns.append(np.full(judgments, a))
            groups.append(g)
            a += 1
    return np.vstack(diffs), np.concatenate(anns), groups, truth


@pytest.mark.parametrize("sizes", [(6, 6), (8, 4), (5, 4, 3)])
def test_recovers_planted_groups_and_their_number(sizes):
    d, ann, groups, _ = planted(sizes, judgments=40, seed=1)
    t = np.ones(len(d))
    choice = pl.choose_k(d, t, ann, len(groups), seed=0)
    assert choice.k == len(sizes), choice.scores
    m = pl.fit(d, t, ann, len(groups), choice.k, seed=0)
    assert pl.adjusted_rand_index(groups, list(m.posterior.argmax(axis=1))) >= 0.9
    assert m.posterior.max(axis=1).min() > 0.9  # confident about everyone
    np.testing.assert_allclose(sorted(m.sizes), sorted(np.array(sizes) / sum(sizes)), atol=0.05)


def test_one_group_is_not_split():
    d, ann, groups, _ = planted((12,), judgments=40, seed=2)
    assert pl.choose_k(d, np.ones(len(d)), ann, len(groups), seed=0).k == 1


def test_k_counts_annotators_not_judgments():
    """BIC over annotators: two of ten annotators with 20 judgments each are a group of their own,
    and so are six of twenty with 10 each (where held-out judgments chose 3 groups and BIC over
    judgments 1); twenty annotators with 10 judgments each in one group stay one group."""
    for sizes, judgments in (((8, 2), 20), ((14, 6), 10)):
        d, ann, groups, _ = planted(sizes, judgments=judgments, seed=0)
        choice = pl.choose_k(d, np.ones(len(d)), ann, len(groups), seed=0)
        assert choice.k == 2 and max(choice.scores, key=choice.scores.__getitem__) == 2, choice.scores
        assert choice.mixture.k == 2
        assert pl.adjusted_rand_index(groups, list(choice.mixture.posterior.argmax(axis=1))) == 1.0
    d, ann, groups, _ = planted((20,), judgments=10, seed=0)
    assert pl.choose_k(d, np.ones(len(d)), ann, len(groups), seed=0).k == 1


def test_the_e_step_scores_each_annotator_under_heads_refitted_without_them():
    """The one-Newton-step left-out likelihood is close to refitting each head without the
    annotator, and far from the in-sample likelihood a small group's head gives its members."""
    d, ann, groups, _ = planted((5, 3), judgments=15, seed=0)
    t, n = np.ones(len(d)), len(groups)
    m = pl.fit(d, t, ann, n, 2, seed=0)
    onehot = np.eye(n)[ann]
    rows = [np.flatnonzero(ann == a) for a in range(n)]
    weights = m.posterior[ann]
    left = pl._left_out(d, t, ann, rows, m.heads, weights, 3.0)
    refit = np.zeros_like(left)
    for a in range(n):
        keep = ann != a
        for c in range(2):
            head = pl._fit_head(d[keep], t[keep], weights[keep, c], 3.0, np.zeros(d.shape[1]))
            refit[a, c] = pl._loglik_per_head(d[~keep], t[~keep], head[None]).sum()
    in_sample = onehot.T @ pl._loglik_per_head(d, t, m.heads)
    assert np.abs(left - refit).max() < 0.3
    assert np.abs(in_sample - refit).max() > 1.5


def test_beats_one_model_on_held_out_judgments_and_places_a_newcomer():
    d, ann, groups, truth = planted((6, 6), judgments=40, seed=3)
    t = np.ones(len(d))
    mix = pl.fit(d, t, ann, len(groups), 2, seed=0)
    one = pl.fit(d, t, ann, len(groups), 1, seed=0)
    rng = np.random.default_rng(9)
    test = rng.normal(size=(400, 6))
    mix_acc, one_acc = [], []
    for a, g in enumerate(groups):
        label = test @ truth[g] > 0
        mix_acc.append(np.mean((mix.prob(mix.posterior[a], test) > 0.5) == label))
        one_acc.append(np.mean((one.prob(one.posterior[a], test) > 0.5) == label))
    assert np.mean(mix_acc) > 0.9
    assert np.mean(mix_acc) > np.mean(one_acc) + 0.15

    # a newcomer starts from the population mix and is placed by a few judgments
    np.testing.assert_allclose(mix.place(np.zeros((0, 6)), np.zeros(0)), mix.sizes)
    x = rng.normal(size=(12, 6))
    first = x @ truth[1] > 0
    placed = mix.place(np.where(first[:, None], x, -x), np.ones(12))
    group_of_1 = int(np.argmax(np.bincount(mix.posterior[[a for a, g in enumerate(groups) if g == 1]].argmax(axis=1))))
    assert placed[group_of_1] > 0.9


def test_adjusted_rand_index():
    assert pl.adjusted_rand_index([0, 0, 1, 1], ["a", "a", "b", "b"]) == 1.0
    assert pl.adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) < 0
    assert abs(pl.adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) - 0.2424) < 1e-3


def test_feature_map_round_trips():
    rng = np.random.default_rng(0)
    emb, lengths = rng.normal(size=(50, 20)), rng.integers(10, 500, size=50)
    fmap = pl.FeatureMap.fit(emb, lengths, dims=4)
    again = pl.FeatureMap.from_json(fmap.to_json())
    np.testing.assert_allclose(fmap(emb, lengths), again(emb, lengths))
    phi = fmap(emb, lengths)
    assert phi.shape == (50, 5)
    np.testing.assert_allclose(phi.std(axis=0), 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Through the app: imported per-annotator judgments, the training service, the version's metrics


def two_camps(n_items: int, seed: int = 0) -> list[dict]:
    """Eight annotators in two camps: four prefer the longer response, four the shorter; each
    judges every item, 5 % of answers flipped."""
    import random

    rng = random.Random(seed)
    words = ["the", "answer", "is", "a", "very", "some", "text", "here", "and", "more"]
    rows = []
    for i in range(n_items):
        short = " ".join(rng.choices(words, k=rng.randint(2, 5)))
        long = " ".join(rng.choices(words, k=rng.randint(14, 30)))
        a_long = rng.random() < 0.5
        a, b = (long, short) if a_long else (short, long)
        judgments = []
        for j in range(8):
            wants_long = j < 4
            pick_a = (a_long == wants_long) != (rng.random() < 0.05)
            judgments.append({"annotator": f"ann{j}", "pairwise": {"choice": "A" if pick_a else "B", "strength": 1}})
        rows.append(
            {"id": f"c{i}", "prompt": f"question {i}", "response_a": a, "response_b": b, "judgments": judgments}
        )
    return rows


@pytest.mark.django_db
def test_pluralistic_mode_trains_versions_and_finds_the_camps(make_project, settings, tmp_path) -> None:
    from annotation.importing import import_items
    from annotation.models import Labeler
    from models_srv import services
    from models_srv.engine import load_model
    from tests.conftest import jsonl

    settings.MEDIA_ROOT = tmp_path
    project = make_project("camps", schema={"pairwise": {"strengths": ["better"]}})
    import_items(project=project, fileobj=jsonl(two_camps(60)))
    config = {"from_config": TINY, "mode": "pluralistic", "label_source": "imported", "max_length": 32}
    version = services.training_start(project=project, config=config, enqueue=False)
    version = services.training_run(version_id=version.id)
    assert version.status == "succeeded", version.error

    plural = version.metrics["pluralistic"]
    assert plural["k"] == 2, plural["k_scores"]
    names = dict(Labeler.objects.filter(project=project).values_list("id", "name"))
    camps = [{names[m["labeler"]] for m in g["members"]} for g in plural["groups"]]
    assert sorted(camps, key=sorted) == [{"ann0", "ann1", "ann2", "ann3"}, {"ann4", "ann5", "ann6", "ann7"}]
    assert all(m["confidence"] > 0.9 for g in plural["groups"] for m in g["members"])
    # the camp that likes long answers has a positive weight on length, the other a negative one
    weight = {frozenset(c): g["length_weight"] for c, g in zip(camps, plural["groups"], strict=True)}
    assert weight[frozenset({"ann0", "ann1", "ann2", "ann3"})] > 0 > weight[frozenset({"ann4", "ann5", "ann6", "ann7"})]
    # each annotator, scored with their own weighting, is predicted far better than by the average
    assert plural["own_accuracy"] >= 0.9 > 0.6 >= plural["population_accuracy"]
    assert all(v["n"] > 0 for v in plural["per_annotator"].values())

    # the saved version loads and scores like any reward model (population scores, spread > 0)
    model = load_model(Path(version.artifact_path))
    mean, spread, aspects = model.score([("q", "short one"), ("q", " ".join(["long"] * 25))])
    assert aspects is None and len(mean) == 2 and float(spread.min()) > 0

    # and is promoted and rescores the project's items like any other version
    from models_srv.models import ResponseScore

    services.version_make_current(version=version, by=None)
    version.refresh_from_db()
    assert version.is_current
    assert services.rescore(version_id=version.id) == 60 * 2
    scores = ResponseScore.objects.filter(version=version)
    assert scores.count() == 120 and scores.filter(uncertainty__gt=0).count() == 120
