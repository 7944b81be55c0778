"""The router's claim on stored labels: where a real AI labeler's errors follow something the router
can see, the learned policy spends the budget better than random routing."""

from __future__ import annotations

import json
import random

import pytest

from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler
from models_srv.simulation_stored import StoredLabelsError, load_stored_labels, simulate_stored
from tests.conftest import jsonl

N = 240


@pytest.fixture
def judged(make_project, make_user, curator):
    """An AI judge that is often wrong on `code` items (30 %) and seldom elsewhere, with the same
    confidence either way and lengths unrelated to its errors: the category is the only clue, as
    for an LLM judge that is weak at one kind of task."""
    project = make_project("stored-route", curator=curator)
    rng = random.Random(7)
    rows = []
    for i in range(N):
        rows.append(
            {
                "id": f"s{i}",
                "prompt": f"task {i}: " + " ".join(rng.choices(["explain", "write", "fix", "list", "plan"], k=4)),
                "response_a": " ".join(rng.choices(["alpha", "beta", "gamma", "delta"], k=rng.randint(3, 30))),
                "response_b": " ".join(rng.choices(["alpha", "beta", "gamma", "delta"], k=rng.randint(3, 30))),
                "metadata": {"category": "code" if i % 10 < 3 else "chat"},
            }
        )
    import_items(project=project, fileobj=jsonl(rows))
    people = Labeler.objects.create(kind="human", user=make_user("rater"), name="rater")
    judge = Labeler.objects.create(project=project, kind="llm", name="judge", config={})
    for it in Item.objects.filter(project=project).order_by("id"):
        truth = rng.choice("AB")
        wrong = rng.random() < (0.55 if it.metadata["category"] == "code" else 0.08)
        said = ("B" if truth == "A" else "A") if wrong else truth
        Judgment.objects.create(
            item=it, labeler=people, payload={"pairwise": {"choice": truth, "strength": 1}}, schema_version=1
        )
        Judgment.objects.create(
            item=it,
            labeler=judge,
            payload={"pairwise": {"choice": said, "strength": 1}},
            schema_version=1,
            confidence=round(rng.uniform(0.6, 0.95), 3),
            raw_output=json.dumps({"order_consistent": True}),
        )
    return project


def test_learned_routing_beats_random_at_a_quarter_budget_on_stored_labels(judged) -> None:
    data = load_stored_labels(project=judged, ai_labelers=["judge"], embed=False)
    assert len(data) == N and data.x is None
    assert {round(v, 1) for v in data.ai} <= {0.0, 1.0}
    result = simulate_stored(data, budgets=(0.0, 0.25, 1.0), seeds=range(5))
    assert set(result.label_accuracy) == {"all_ai", "random", "learned", "all_human"}  # no embeddings: no performance
    acc = {p: sum(v[0.25]) / len(v[0.25]) for p, v in result.label_accuracy.items()}
    assert acc["learned"] >= acc["random"]
    gain, se = result.paired_gain("learned", metric="label_accuracy")[0.25]
    assert gain > 2 * se and gain > 0.03  # well clear of chance, not just a tie
    assert result.label_accuracy["all_human"][1.0] == [1.0] * 5  # the pool's labels are the humans' own
    assert result.label_accuracy["random"][0.0] == result.label_accuracy["all_ai"][0.0]


def test_stored_labels_choose_the_labeler_the_truth_and_the_rows(judged, make_user) -> None:
    other = Labeler.objects.create(project=judged, kind="reward_model", name="rm", config={})
    first = Item.objects.filter(project=judged).order_by("id").first()
    Judgment.objects.create(
        item=first, labeler=other, payload={"pairwise": {"choice": "tie", "strength": 0}}, schema_version=1
    )
    with pytest.raises(StoredLabelsError, match="needs at least 40"):
        load_stored_labels(project=judged, ai_labelers=["rm"], embed=False)  # one item: too few
    with pytest.raises(StoredLabelsError, match=r"no AI labeler 'nope'.*'judge', 'rm'"):
        load_stored_labels(project=judged, ai_labelers=["nope"], embed=False)
    with pytest.raises(StoredLabelsError, match="needs at least 40"):
        load_stored_labels(project=judged, ai_labelers=["judge"], truth="imported", embed=False)  # none imported
    both = load_stored_labels(project=judged, ai_labelers=["judge", "rm"], embed=False)
    assert both.ai[0] == 0.5  # one says A or B, the other tie: a split, half right
    # A human tie is no truth to score against: that item leaves the rows.
    Judgment.objects.filter(item=first, labeler__kind="human").update(payload={"pairwise": {"choice": "tie"}})
    assert len(load_stored_labels(project=judged, ai_labelers=["judge"], embed=False)) == N - 1


def test_the_command_on_a_project_and_the_reward_model_figure(judged, tmp_path) -> None:
    from django.core.management import call_command

    from models_srv.engine import TrainConfig
    from tests.test_reward_training import TINY

    out = tmp_path / "stored"
    call_command(
        "simulate_routing",
        project=judged.slug,
        ai_labelers=["judge"],
        seeds=2,
        budgets=[0, 0.25, 1.0],
        no_reward_model=True,
        out=out,
    )
    report = json.loads((out / "results.json").read_text())
    (res,) = report["results"]
    assert report["items"] == {"judge": N} and res["sizes"]["pool"] == 108
    assert res["minus_random"]["label_accuracy"]["learned"]["0.25"][0] > 0
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    # The reward-model figure and the performance policy, on tiny-model embeddings.
    data = load_stored_labels(
        project=judged, ai_labelers=["judge"], config=TrainConfig(from_config=TINY, max_length=32, device="cpu")
    )
    assert data.x.shape[0] == N
    result = simulate_stored(data, budgets=(0.25,), seeds=(0,))
    assert set(result.accuracy) == {"all_ai", "random", "learned", "performance", "all_human"}
    assert all(0 <= v[0.25][0] <= 1 for v in result.accuracy.values())
