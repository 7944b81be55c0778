"""Routing: features, router training on the calibration slice, budget allocation, re-routing,
and the human queue serving only what is routed to humans."""

from __future__ import annotations

import pytest

from annotation import queue
from annotation.importing import import_items
from annotation.models import Item, Judgment, Labeler, Membership
from annotation.services import membership_set
from models_srv.routing import allocate, calibration_targets, item_features, route_project, train_router
from tests.conftest import jsonl


@pytest.fixture
def routed(make_project, curator):
    project = make_project("route", curator=curator, human_budget=0.5, overlap=1)
    rows = []
    for i in range(60):
        short, long_ = "ok", "a much longer answer " * (1 + i % 7)
        rows.append(
            {
                "id": f"r{i}",
                "prompt": f"q{i}",
                "response_a": short if i % 2 else long_,
                "response_b": long_ if i % 2 else short,
                "metadata": {"category": "math" if i % 3 == 0 else "chat"},
            }
        )
    import_items(project=project, fileobj=jsonl(rows))
    ai = Labeler.objects.create(project=project, kind="llm", name="ai", config={})
    human = Labeler.objects.create(project=project, kind="imported", name="people", config={})
    for it in Item.objects.filter(project=project):
        i = int(it.external_id[1:])
        hard = i % 3 == 0  # the AI gets "math" items wrong, with low confidence
        ai_choice = "A" if hard else "B"
        Judgment.objects.create(
            item=it,
            labeler=ai,
            payload={"pairwise": {"choice": ai_choice, "strength": 1}},
            schema_version=1,
            confidence=0.55 if hard else 0.9,
        )
        if i < 15:  # the calibration slice: humans labeled these too
            Judgment.objects.create(
                item=it, labeler=human, payload={"pairwise": {"choice": "B", "strength": 1}}, schema_version=1
            )
    return project


def test_features_describe_lengths_overlap_category_and_ai_signals(routed) -> None:
    feats = {f.item_id: f.values for f in item_features(routed)}
    item = Item.objects.get(external_id="r3")
    v = feats[item.id]
    assert v["ai_count"] == 1 and v["ai_confidence"] == pytest.approx(0.55)
    assert v["category=math"] == 1.0 and v["category=chat"] == 0.0
    assert 0 <= v["overlap"] <= 1 and v["len_ratio"] > 0


def test_the_router_learns_which_items_ai_gets_wrong(routed) -> None:
    targets = calibration_targets(routed)
    assert len(targets) == 15 and sum(targets.values()) == 5  # r0, r3, ... r12: the math items
    router = train_router(item_features(routed), targets)
    feats = item_features(routed)
    scores = dict(zip([f.item_id for f in feats], router.predict(feats), strict=True))
    hard = [i.id for i in Item.objects.filter(project=routed) if int(i.external_id[1:]) % 3 == 0]
    easy = [i.id for i in Item.objects.filter(project=routed) if int(i.external_id[1:]) % 3 != 0]
    assert min(scores[i] for i in hard) > max(scores[i] for i in easy)
    assert router.top_features(feats[0])[0][0] in {"ai_confidence", "category=math", "category=chat"}


@pytest.mark.parametrize("budget", [0, 1, 7, 20, 60])
def test_allocation_is_exact_and_never_over_budget(budget: int) -> None:
    scores = {i: (i * 37 % 60) / 60 for i in range(60)}
    calibration = {1, 2, 3} if budget >= 3 else set()
    routes = allocate(scores, budget, calibration)
    humans = [i for i, r in routes.items() if r in ("human", "both")]
    assert len(humans) == budget
    assert {i for i, r in routes.items() if r == "both"} == calibration
    picked = [i for i, r in routes.items() if r == "human"]
    rest = [i for i, r in routes.items() if r == "ai"]
    if picked and rest:
        assert min(scores[i] for i in picked) >= max(scores[i] for i in rest)


def test_allocation_refuses_a_calibration_slice_over_budget() -> None:
    with pytest.raises(ValueError, match="larger than the human budget"):
        allocate({1: 0.5, 2: 0.4}, 1, {1, 2})


def test_routing_a_project_and_the_queue_serving_only_human_items(routed, annotator) -> None:
    counts = route_project(project=routed, calibration_fraction=0.0)
    assert counts == {"both": 15, "human": 15, "ai": 30}  # 50 % of 60 items; 15 spent on calibration
    new = Item.objects.filter(project=routed, route="human")
    assert all(int(i.external_id[1:]) % 3 == 0 for i in new)  # the rest of the budget: what AI gets wrong
    humans = Item.objects.filter(project=routed, route__in=["human", "both"])
    assert all(i.route_info["top_features"] for i in humans)
    membership_set(project=routed, user=annotator, role=Membership.Role.ANNOTATOR)
    served = []
    while (a := queue.next_assignment(project=routed, user=annotator)) is not None:
        served.append(a.item)
        queue.skip(assignment_id=a.id, user=annotator)
    assert {i.id for i in served} <= {i.id for i in humans.exclude(human_count__gte=1)}
    priorities = [i.priority for i in served]
    assert priorities == sorted(priorities, reverse=True)  # the most informative items first
    # Re-routing with a bigger budget moves more items to humans; the counts stay exact.
    routed.human_budget = 0.7
    routed.save()
    counts = route_project(project=routed, calibration_fraction=0.3)
    assert counts.get("human", 0) + counts.get("both", 0) == 42
    assert counts["both"] == 15 + 3  # calibration grows to 30 % of items (18)


def test_router_versions_and_the_dashboard(routed, curator, annotator) -> None:
    from django.test import Client
    from django.urls import reverse

    from models_srv.models import RouterVersion

    route_project(project=routed, calibration_fraction=0.0)
    router = RouterVersion.objects.get()
    assert router.learned and router.version == 1 and router.budget == 30
    assert router.metrics["calibration_items"] == 15
    assert router.metrics["observed_disagreement"] == pytest.approx(5 / 15)
    assert 0 <= router.metrics["predicted_disagreement"] <= 1 and router.metrics["cv_auc"] > 0.9
    assert router.feature_weights[0][0] in {"ai_confidence", "category=math", "category=chat"}
    item = Item.objects.filter(project=routed, route="human").first()
    assert item.route_info["router_version"] == 1
    c = Client()
    c.force_login(curator)
    page = c.get(reverse("models_srv:routing", args=[routed.slug])).content.decode()
    assert "Router v1" in page and "cv_auc" not in page and "Cross-validated AUC" in page
    other = Client()
    other.force_login(annotator)
    assert other.get(reverse("models_srv:routing", args=[routed.slug])).status_code == 404
