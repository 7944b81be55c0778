"""The review queue's candidates, found in aggregate (`curation.candidates`), are what the rule
says judgment by judgment: the oracle below is the former implementation, over `quality.load`
(every judgment as a Python value), and the review queue's rows over it (`_enrich` as it was).

A seeded random project exercises every path: annotators and imported labels on the same items
(annotators first), annotators whose judgments carry no choice (rubric only), rankings instead of
pairwise answers, ties, strengths, AI judges whose answers flip with the order (or say nothing, or
are no JSON), gold items (judged, flagged), several flags on one item, curation actions (some
undone), items without an out-of-fold margin and an older cross-fitting run.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from annotation.models import Assignment, Item, Judgment, Labeler, Project
from curation import candidates, quality, selectors
from curation.models import CurationAction
from curation.selectors import ReviewFilters
from models_srv.crossfit import sigmoid
from models_srv.models import CrossFitRun, DataSnapshot, OutOfFoldMargin, RunStatus


def oracle(project: Project) -> list[dict[str, Any]]:
    """`noisy_candidates(project, limit=sys.maxsize)` as it was written, judgment by judgment."""
    data = quality.load(project)
    consensus = quality.reference_consensus(data)
    curated = set(selectors.curation_states(project=project))
    found: dict[int, dict[str, Any]] = {}

    def add(item_id: int, kind: str, strength: float, evidence: dict[str, Any]) -> None:
        if item_id in curated or item_id not in data.items:
            return
        entry = found.setdefault(item_id, {"item_id": item_id, "reasons": [], "score": 0.0, "evidence": {}})
        entry["reasons"].append(kind)
        entry["score"] += strength
        entry["evidence"][kind] = evidence

    run = (
        CrossFitRun.objects.filter(project=project, status=RunStatus.SUCCEEDED).order_by("-finished_at", "-id").first()
    )
    margins = {
        m[0]: m[1:]
        for m in OutOfFoldMargin.objects.filter(run=run, item_id__in=list(consensus)).values_list(
            "item_id", "margin", "spread", "fold"
        )
    }
    for item_id, c in consensus.items():
        if c.label not in ("A", "B") or item_id not in margins:
            continue
        margin_b, spread, fold = margins[item_id]
        for_label = margin_b if c.label == "B" else -margin_b
        p = sigmoid(for_label)
        if p < 0.5:
            evidence = {
                "label": c.label,
                "probability_of_label": round(p, 4),
                "margin_b_minus_a": round(margin_b, 4),
                "ensemble_spread": round(spread, 4),
                "fold": fold,
            }
            add(item_id, "out_of_fold_disagrees", min(3.0, -for_label), evidence)
    for item_id, c in consensus.items():
        if c.n >= 2 and (c.tied or c.agreement < quality.LOW_AGREEMENT):
            votes = Counter(
                j.choice for j in data.by_item_human.get(item_id) or data.by_item_imported[item_id] if j.choice
            )
            add(
                item_id,
                "low_agreement",
                1.0 - c.agreement,
                {"votes": dict(votes), "agreement": quality._r(c.agreement)},
            )
    for item_id, js in data.by_item_ai.items():
        flips = [quality.labeler_name(data, j.labeler_id) for j in js if j.order_consistent is False]
        if flips:
            add(item_id, "ai_order_flip", 0.5, {"labelers": flips})
    flagged: dict[int, list[str]] = defaultdict(list)
    for item_id, reason in (
        Assignment.objects.filter(item__project=project, flagged=True)
        .order_by("id")
        .values_list("item_id", "flag_reason")
    ):
        flagged[item_id].append(reason)
    for item_id, reasons in flagged.items():
        add(item_id, "flagged", 1.0, {"reasons": reasons})
    rows = sorted(found.values(), key=lambda r: (-r["score"], r["item_id"]))
    for r in rows:
        it = data.items[r["item_id"]]
        r["external_id"] = it["external_id"]
        r["prompt"] = it["prompt"][:300]
        r["consensus"] = consensus.get(r["item_id"])
        r["score"] = round(r["score"], 3)
        r["evidence_json"] = json.dumps({"reasons": r["reasons"], **r["evidence"]})
    return rows


def oracle_queue(project: Project, f: ReviewFilters) -> tuple[list[dict[str, Any]], list[tuple[int, str]], list[str]]:
    """The review queue's matching rows, labelers and categories, enriched as `_enrich` did."""
    rows = oracle(project)
    items = {
        i: (category, created)
        for i, category, created in Item.objects.filter(id__in=[r["item_id"] for r in rows]).values_list(
            "id", "metadata__category", "created_at"
        )
    }
    judged: dict[int, list[tuple[int, Any]]] = defaultdict(list)
    names: dict[int, str] = {}
    for item_id, labeler_id, name, username, created in Judgment.objects.filter(
        item_id__in=[r["item_id"] for r in rows]
    ).values_list("item_id", "labeler_id", "labeler__name", "labeler__user__username", "created_at"):
        judged[item_id].append((labeler_id, created))
        names[labeler_id] = username or name
    for r in rows:
        category, item_created = items[r["item_id"]]
        js = judged.get(r["item_id"], [])
        r["category"] = "" if category is None else str(category)
        r["labeler_ids"] = sorted({lab for lab, _ in js})
        r["labelers"] = sorted(names[lab] for lab in r["labeler_ids"])
        r["date"] = max((c for _, c in js), default=item_created)
        oof = r["evidence"].get("out_of_fold_disagrees")
        margin_b = float(oof["margin_b_minus_a"]) if oof else None
        r["margin"] = None if not oof else margin_b if oof["label"] == "B" else -margin_b
        c = r["consensus"]
        r["disagreement"] = round(1.0 - c.agreement, 3) if c is not None and c.n else None

    def keep(r: dict[str, Any]) -> bool:
        if f.reasons and not set(f.reasons) & set(r["reasons"]):
            return False
        if f.labeler_id is not None and f.labeler_id not in r["labeler_ids"]:
            return False
        if f.category and r["category"] != f.category:
            return False
        if f.margin_min is not None and (r["margin"] is None or r["margin"] < f.margin_min):
            return False
        return not (f.margin_max is not None and (r["margin"] is None or r["margin"] > f.margin_max))

    matching = sorted(filter(keep, rows), key=sort_key(f.sort))
    labelers = sorted(names.items(), key=lambda kv: (kv[1].lower(), kv[0]))
    return matching, labelers, sorted({r["category"] for r in rows if r["category"]})


def sort_key(sort: str) -> Any:
    """A row's key in each sort order, as the queue sorted its rows before."""
    field_name = sort.lstrip("-")
    if field_name == "evidence":
        return lambda r: (-r["score"], r["item_id"])
    if field_name == "item":
        return lambda r: (r["external_id"], r["item_id"])
    descending = {"margin": False, "disagreement": True, "date": True}[field_name] != sort.startswith("-")

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        value = r[field_name]
        if value is None:
            return (1, 0, r["item_id"])
        if field_name == "date":
            value = value.timestamp()
        return (0, -value if descending else value, r["item_id"])

    return key


def _payload(rng: random.Random) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.12:  # a ranking, ties included
        return {"ranking": [rng.randint(1, 2), rng.randint(1, 2)]}
    if roll < 0.17:  # no choice: a rubric rating only
        return {"rubric": [{"helpful": 3}, {"helpful": 4}]}
    choice = rng.choice(["A", "A", "B", "B", "tie"])
    return {"pairwise": {"choice": choice, "strength": 0 if choice == "tie" else rng.randint(1, 3)}, "spans": []}


def _flag(item: Item, annotator: Any, reason: str, at: Any) -> None:
    """A submitted assignment of `item` that `annotator` flagged with `reason` at `at`."""
    Assignment.objects.create(
        item=item,
        annotator=annotator,
        response_order=[0, 1],
        state="submitted",
        leased_at=at,
        expires_at=at + timedelta(minutes=15),
        finished_at=at,
        flagged=True,
        flag_reason=reason,
    )


@pytest.fixture
def messy(make_project, make_user, curator) -> Project:
    rng = random.Random(7)
    project = make_project("messy", curator=curator)
    start = timezone.now() - timedelta(days=10)
    items = [
        Item.objects.create(
            project=project,
            external_id=f"m{i:03d}",
            prompt=("long prompt " * 40 if i % 9 == 0 else f"prompt {i}"),
            responses=[{"text": f"a{i}"}, {"text": f"b{i}"}],
            num_responses=2,
            metadata={"category": rng.choice(["chat", "code", 3, None])} if i % 6 else {},
            is_gold=i % 17 == 0,
            gold_answer={"pairwise": {"choice": "A", "strength": 1}} if i % 17 == 0 else None,
        )
        for i in range(160)
    ]
    humans = [Labeler.objects.create(kind="human", user=make_user(f"h{k}"), name=f"h{k}") for k in range(5)]
    imported = [Labeler.objects.create(project=project, kind="imported", name=f"imp{k}") for k in range(4)]
    judges = [Labeler.objects.create(project=project, kind="llm", name=f"judge{k}", config={}) for k in range(2)]
    raws = ['{"order_consistent": false}', '{"order_consistent": true}', "{}", "{not json", "plain text", ""]
    judgments = []
    for n, item in enumerate(items):
        mix = n % 4  # 0: annotators, 1: imported, 2: both, 3: annotators without a choice over imported
        voters = []
        if mix in (0, 2):
            voters += rng.sample(humans, rng.randint(1, 4))
        if mix in (1, 2, 3):
            voters += rng.sample(imported, rng.randint(1, 4))
        for who in voters:
            judgments.append(Judgment(item=item, labeler=who, payload=_payload(rng), schema_version=1))
        if mix == 3:
            judgments.append(
                Judgment(item=item, labeler=humans[0], payload={"rubric": [{"x": 1}, {"x": 2}]}, schema_version=1)
            )
        for judge in judges:
            if rng.random() < 0.3:
                payload = {"pairwise": {"choice": rng.choice("AB"), "strength": 1}}
                judgments.append(
                    Judgment(item=item, labeler=judge, payload=payload, schema_version=1, raw_output=rng.choice(raws))
                )
    Judgment.objects.bulk_create(rng.sample(judgments, len(judgments)))  # ids in no item order
    for j in Judgment.objects.filter(item__project=project):
        Judgment.objects.filter(id=j.id).update(created_at=start + timedelta(minutes=rng.randint(0, 5000)))
    user = make_user("flagger")
    for n, item in enumerate(items):
        if n % 11 == 0 or n % 13 == 0:
            for k in range(1 + n % 2):
                _flag(item, make_user(f"flagger{n}-{k}") if k else user, f"reason {n}.{k}", start)
    snapshot = DataSnapshot.objects.create(project=project)
    for age, share in ((2, 1.0), (1, 0.85)):  # the older run has every item; the newer most
        run = CrossFitRun.objects.create(
            project=project,
            config={},
            snapshot=snapshot,
            status=RunStatus.SUCCEEDED,
            finished_at=timezone.now() - timedelta(hours=age),
        )
        OutOfFoldMargin.objects.bulk_create(
            OutOfFoldMargin(run=run, item=item, fold=k % 5, margin=rng.gauss(0, 2), spread=rng.random())
            for k, item in enumerate(items)
            if rng.random() < share
        )
    for n, item in enumerate(rng.sample(items, 30)):
        action = CurationAction.objects.create(project=project, item=item, action="accept")
        if n % 3 == 0:
            CurationAction.objects.filter(id=action.id).update(undone_at=timezone.now())
    return project


def _comparable(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in keys} for r in rows]


def test_the_candidates_are_those_of_the_rule_judgment_by_judgment(messy) -> None:
    expected = oracle(messy)
    got = candidates.noisy_candidates(messy, limit=sys.maxsize)
    reasons = Counter(reason for r in expected for reason in r["reasons"])
    assert set(reasons) == {"out_of_fold_disagrees", "low_agreement", "ai_order_flip", "flagged"}  # all exercised
    assert got == expected
    assert [json.loads(r["evidence_json"]) for r in got] == [json.loads(r["evidence_json"]) for r in expected]
    assert candidates.noisy_candidates(messy, limit=7) == expected[:7]


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"sort": "margin"},
        {"sort": "-date", "reasons": ("low_agreement", "flagged")},
        {"sort": "disagreement", "category": "chat"},
        {"sort": "-disagreement", "category": "3"},
        {"sort": "item", "margin_min": -2.5, "margin_max": -0.1},
        {"sort": "date", "labeler": "imp2"},
    ],
)
def test_the_review_queue_matches_the_rule(messy, given) -> None:
    named = {k: v for k, v in given.items() if k != "labeler"}
    if "labeler" in given:
        named["labeler_id"] = Labeler.objects.get(name=given["labeler"]).id
    filters = ReviewFilters(**named)
    matching, labelers, categories = oracle_queue(messy, filters)
    assert matching, "a filter that keeps nothing compares nothing"
    q = selectors.review_queue(messy, filters, page=2, per_page=10)
    keys = ("item_id", "external_id", "reasons", "score", "evidence", "consensus", "category", "date", "margin")
    assert _comparable(q.matching, (*keys, "disagreement")) == _comparable(matching, (*keys, "disagreement"))
    assert q.total == len(matching) and q.labelers == labelers and q.categories == categories
    shown = matching[10:20]
    page_keys = (*keys, "prompt", "evidence_json", "labeler_ids", "labelers")
    assert _comparable(q.rows, page_keys) == _comparable(shown, page_keys)


def test_a_project_with_flags_and_no_judgment(make_project, make_user, curator) -> None:
    project = make_project("flags-only", curator=curator)
    assert candidates.noisy_candidates(project) == [] and selectors.review_queue(project, ReviewFilters()).total == 0
    responses = [{"text": "a"}, {"text": "b"}]
    item = Item.objects.create(project=project, external_id="f1", prompt="p", responses=responses, num_responses=2)
    _flag(item, make_user("flagging"), "broken", timezone.now())
    (row,) = candidates.noisy_candidates(project)
    assert row == oracle(project)[0]
    assert (row["reasons"], row["consensus"], row["score"]) == (["flagged"], None, 1.0)
    (shown,) = selectors.review_queue(project, ReviewFilters()).rows
    assert (shown["date"], shown["labelers"], shown["disagreement"]) == (item.created_at, [], None)
