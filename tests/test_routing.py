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
def routed(make_project, make_user, curator):
    project = make_project("route", curator=curator, human_budget=0.5, overlap=1, routing_policy="learned")
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
    human = Labeler.objects.create(kind="human", user=make_user("people"), name="people")
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


# ---------------------------------------------------------------------------------------------
# The second strategy (performance prediction), the policy switch, retraining, the simulation


def _synthetic_calibration(n: int = 120, seed: int = 0):
    """Pairs whose AI label is wrong exactly on 'long' items: the bins of that feature must come
    out as the ones worth a human."""
    import numpy as np

    from models_srv.routing import ItemFeatures

    rng = np.random.default_rng(seed)
    truth_w = rng.normal(size=16)
    x = rng.normal(size=(n, 16))
    human = (x @ truth_w > 0).astype(int)
    hard = rng.random(n) < 0.4
    ai = np.where(hard, 1 - human, human)
    feats = [
        ItemFeatures(i, {"log_len_a": float(5 + 3 * hard[i] + rng.random()), "overlap": float(rng.random())})
        for i in range(n)
    ]
    return feats, x, human, ai, hard


def test_performance_router_finds_the_bins_where_humans_pay_off() -> None:
    from sklearn.metrics import roc_auc_score

    from models_srv.routing import train_performance_router

    feats, x, human, ai, hard = _synthetic_calibration()
    router = train_performance_router(feats, x, human, ai, mixes=60, seed=0)
    assert router.metrics["mixes"] == 60 and router.metrics["score_max"] > router.metrics["score_min"]
    gains = router.gains(feats)
    assert roc_auc_score(hard.astype(int), gains) > 0.9  # the long (AI-wrong) items are worth most
    top = router.top_features(feats[int(hard.argmax())])
    assert any(name.startswith(("log_len_a>", "5.")) or "<log_len_a" in name for name, _ in top)
    with pytest.raises(ValueError, match="at least 40"):
        train_performance_router(feats[:20], x[:20], human[:20], ai[:20])


@pytest.mark.parametrize(("policy", "expected"), [("all_human", {"both": 15, "human": 45}), ("all_ai", {"ai": 60})])
def test_fixed_policies_route_everything_one_way(routed, policy, expected) -> None:
    from models_srv.models import RouterVersion

    routed.routing_policy = policy
    routed.save()
    if policy == "all_ai":
        Judgment.objects.filter(labeler__kind="human").delete()
    assert route_project(project=routed) == expected
    assert RouterVersion.objects.get().strategy == policy


def test_the_performance_policy_routes_through_the_app(routed) -> None:
    """Enough calibration items for the simulation of mixes: humans judged 45 of the 60 items."""
    from models_srv.models import RouterVersion

    people = Labeler.objects.get(kind="human", name="people")
    for it in Item.objects.filter(project=routed, external_id__in=[f"r{i}" for i in range(15, 45)]):
        Judgment.objects.create(
            item=it, labeler=people, payload={"pairwise": {"choice": "B", "strength": 1}}, schema_version=1
        )
    routed.routing_policy = "performance"
    routed.human_budget = 0.9
    routed.save()
    counts = route_project(project=routed, calibration_fraction=0.0)
    assert counts.get("human", 0) + counts.get("both", 0) == 54  # exact: 90 % of 60
    version = RouterVersion.objects.get()
    assert version.strategy == "performance" and version.learned
    assert version.metrics["calibration_items"] == 45 and version.metrics["mixes"] > 0
    assert version.feature_weights and all(len(w) == 2 for w in version.feature_weights)


def test_the_router_retrains_as_human_labels_accumulate(routed, settings) -> None:
    from models_srv.models import RouterVersion
    from models_srv.routing import reroute_due

    assert reroute_due(min_new_calibration=10) == [routed.id]  # never routed: route now
    assert reroute_due(min_new_calibration=10) == []  # nothing new
    people = Labeler.objects.get(kind="human", name="people")
    for it in Item.objects.filter(project=routed, external_id__in=[f"r{i}" for i in range(15, 25)]):
        Judgment.objects.create(
            item=it, labeler=people, payload={"pairwise": {"choice": "B", "strength": 1}}, schema_version=1
        )
    assert reroute_due(min_new_calibration=10) == [routed.id]
    assert list(RouterVersion.objects.values_list("version", "metrics__calibration_items")) == [(2, 25), (1, 15)]


def test_the_routing_form_switches_policy_and_budget(routed, curator, django_capture_on_commit_callbacks) -> None:
    from django.test import Client
    from django.urls import reverse

    c = Client()
    c.force_login(curator)
    url = reverse("models_srv:routing_run", args=[routed.slug])
    bad = c.post(url, {"routing_policy": "performance", "budget_percent": "10", "calibration_percent": "20"})
    assert bad.status_code == 400 and "cannot exceed the human budget" in bad.content.decode()
    with django_capture_on_commit_callbacks() as callbacks:
        ok = c.post(url, {"routing_policy": "performance", "budget_percent": "25", "calibration_percent": "5"})
    assert ok.status_code == 302 and len(callbacks) == 1
    routed.refresh_from_db()
    assert (routed.routing_policy, routed.human_budget, routed.calibration_share) == ("performance", 0.25, 0.05)


def test_the_simulation_compares_policies_at_exact_budgets(tmp_path) -> None:
    """On synthetic pairs and embeddings where the AI labeler's errors depend on the item: every
    policy runs at every budget, each picks exactly its budget, and the results are reported."""
    import numpy as np

    from models_srv import simulation

    rng = np.random.default_rng(0)
    n = 300
    long_ = ["a long and detailed answer " * 8] * n
    pairs = simulation.Pairs(
        prompts=[f"question {i}" for i in range(n)],
        n_turns=[1 + i % 5 for i in range(n)],
        chosen=[long_[i] if i % 4 == 0 else f"short {i}" for i in range(n)],
        rejected=[f"other {i}" if i % 4 == 0 else long_[i] for i in range(n)],
    )
    w = rng.normal(size=24)
    base = rng.normal(size=(n, 24))
    chosen = base + 0.5 * w
    rejected = base - 0.5 * w
    split = simulation.make_split(pairs, chosen, rejected, seed=1, judge="biased_judge")
    assert len(split.pool) + len(split.test) + len(split.calibration) == n
    for budget in (0, 7, 30):
        for policy in ("random", "learned", "performance"):
            scores = simulation.policy_scores(
                policy, split, lambda ids: simulation.split_features(pairs, split, ids), 1
            )
            assert len(simulation.choose_humans(policy, split, budget, 1, scores)) == budget
    result = simulation.simulate(pairs, chosen, rejected, judge="biased_judge", budgets=(0, 0.25, 1.0), seeds=(0, 1))
    assert set(result.accuracy) == set(simulation.POLICIES)
    assert set(result.label_accuracy) == set(simulation.POLICIES)
    assert all(len(v) == 2 for by in result.accuracy.values() for v in by.values())
    assert result.label_accuracy["all_human"][0.25] == [1.0, 1.0]  # the pool's labels are the humans' own
    # The ends agree whatever the policy: no humans, or all of them.
    assert result.accuracy["random"][0] == result.accuracy["all_ai"][0]
    assert result.accuracy["random"][1.0] == result.accuracy["all_human"][1.0]
    from models_srv.simulation_report import plot

    plot([result], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.shared_data
def test_simulate_routing_command_on_the_shared_hh_pairs(tmp_path) -> None:
    import json

    from django.core.management import call_command

    from tests.conftest import HH_FILE

    data = HH_FILE
    if not data.exists():
        pytest.skip(f"{data} is absent (it is shared beside the repository, not part of it)")
    out = tmp_path / "route"
    call_command(
        "simulate_routing", data=data, limit=300, seeds=2, budgets=[0, 0.25, 1.0], judges="biased_judge", out=out
    )
    report = json.loads((out / "results.json").read_text())
    (res,) = report["results"]
    assert report["pairs"] == 300 and set(res["rm_accuracy"]) == set(res["label_accuracy"]) == {
        "all_ai",
        "random",
        "learned",
        "performance",
        "all_human",
    }
    assert all(0.3 < a < 0.8 for a in res["ai_accuracy_on_test"])
    assert set(res["minus_random"]["label_accuracy"]["learned"]) == {"0", "0.25", "1.0"}
    assert (out / "plot.png").exists() and (out / "results.csv").read_text().startswith("judge,metric,policy,budget")


def test_the_performance_policy_is_offered_as_experimental_and_is_no_default(routed, curator) -> None:
    from django.test import Client
    from django.urls import reverse

    from annotation.services import ProjectSpec

    c = Client()
    c.force_login(curator)
    page = c.get(reverse("models_srv:routing", args=[routed.slug])).content.decode()
    assert "Experimental: Learned router: predicted reward-model gain" in page
    assert "Experimental: Learned router: predicted AI-vs-human" not in page
    spec = ProjectSpec.parse({"slug": "fresh", "name": "Fresh", "schema": {"pairwise": {}}})
    assert spec.routing_policy == "all_human"
