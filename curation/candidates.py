"""Noisy-label candidates: the items worth a curator's look, with the evidence against their label.

Four kinds of evidence, each adding to an item's score (strongest evidence first):
- `out_of_fold_disagrees`: a reward model that never trained on the item (the project's latest
  out-of-fold margins, `models_srv.crossfit`) finds its consensus label less likely than the
  other; scored by the logit against the label, at most 3. Out of fold, not in sample: the current
  reward model trained on these very labels, so a model able to fit them has learnt the wrong ones
  too (bench/noise/README.md compares it with the old in-sample rule and cleanlab);
- `low_agreement`: 2+ votes and a tie or under `LOW_AGREEMENT` for the consensus label;
- `ai_order_flip`: an AI labeler whose answer changed when the responses were swapped;
- `flagged`: an annotator flagged the item.
The label checked is the item's reference consensus: its annotators' votes, or, where no
annotator voted, its imported labels' (`curation.quality.reference_consensus`). Gold items and
items with an effective curation action are left out.

How it is read, so that a project of 25,000 items and 100,000 judgments takes a fraction of a
second (`bench/review`): the votes come from one grouped query, a row per item, labeler kind and
choice (count, first id, sum of strengths, last date), never a row per judgment, and no payload is
read whole; only rankings are read judgment by judgment, as their choice compares two ranks. The
rule per item is `curation.consensus.consensus_from_counts`, the same as `pairwise_consensus` on
the votes. Texts are read only for the rows returned (`noisy_candidates`) or shown on a page
(`curation.selectors.review_queue`, with `details`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from django.db.models import Count, IntegerField, Max, Min, Sum
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Left

from annotation.models import Assignment, Item, Judgment, LabelSource, Project, source_of_kind, source_q
from curation.consensus import Consensus, consensus_from_counts

# Below this share of votes for the consensus label an item counts as low agreement (a 2-1 split does).
LOW_AGREEMENT = 0.7

# A choice's tally on one item from one source: [judgments, id of the first, sum of strengths].
_Tally = list[int]


@dataclass
class Found:
    """Every candidate of a project (unordered, score not rounded), and when each judged item was
    last judged (by anyone, AI labelers included)."""

    rows: list[dict[str, Any]]
    last_judged: dict[int, datetime] = field(default_factory=dict)


def _choice(pairwise: Any, ranking: Any) -> tuple[str | None, int]:
    """A judgment's pairwise choice and strength, from its payload's `pairwise` or else its
    `ranking` (as `curation.quality` reads them)."""
    if pairwise:
        return pairwise["choice"], int(pairwise.get("strength") or 0)
    if ranking and len(ranking) >= 2:
        return ("A" if ranking[0] < ranking[1] else "B" if ranking[1] < ranking[0] else "tie"), 1
    return None, 0


def _votes(project: Project) -> tuple[dict[int, dict[str, dict[str | None, _Tally]]], dict[int, datetime]]:
    """{item id: {source: {choice or None: tally}}} over the judgments of the project's non-gold
    items, and each judged item's last judgment time."""
    judgments = Judgment.objects.filter(item__project=project, item__is_gold=False).order_by()
    pairwise = KeyTransform("pairwise", "payload")
    grouped = (
        judgments.exclude(payload__has_key="ranking")
        .annotate(choice=KeyTextTransform("choice", pairwise))
        .values("item_id", "labeler__kind", "choice")
        .annotate(
            n=Count("id"),
            first=Min("id"),
            strength=Sum(Cast(KeyTextTransform("strength", pairwise), IntegerField())),
            last=Max("created_at"),
        )
        .values_list("item_id", "labeler__kind", "choice", "n", "first", "strength", "last")
    )
    ranked = judgments.filter(payload__has_key="ranking").values_list(
        "item_id", "labeler__kind", "payload__pairwise", "payload__ranking", "id", "created_at"
    )
    rows = list(grouped)
    for item_id, kind, pw, ranks, jid, created in ranked:
        choice, strength = _choice(pw, ranks)
        rows.append((item_id, kind, choice, 1, jid, strength, created))
    votes: dict[int, dict[str, dict[str | None, _Tally]]] = defaultdict(dict)
    last: dict[int, datetime] = {}
    sources: dict[str, str] = {}
    for item_id, kind, choice, n, first, strength, created in rows:
        source = sources.get(kind) or sources.setdefault(kind, source_of_kind(kind).value)
        tally = votes[item_id].setdefault(source, {}).setdefault(choice or None, [0, first, 0])
        tally[0] += n
        tally[1] = min(tally[1], first)
        tally[2] += strength or 0
        if item_id not in last or created > last[item_id]:
            last[item_id] = created
    return votes, last


def _consensus(by_choice: dict[str | None, _Tally] | None) -> Consensus | None:
    if not by_choice or not any(by_choice):  # no judgment of this source with a choice
        return None
    counts = {c: t[0] for c, t in by_choice.items() if c}
    return consensus_from_counts(counts, {c: t[2] for c, t in by_choice.items() if c})


def find(project: Project) -> Found:
    """All the project's candidates: item_id, reasons, score (not rounded), evidence, consensus."""
    from curation.selectors import curated_item_ids
    from models_srv.crossfit import sigmoid
    from models_srv.models import CrossFitRun, OutOfFoldMargin
    from models_srv.selectors import crossfit_done

    votes, last = _votes(project)
    consensus: dict[int, Consensus] = {}
    for item_id, by_source in votes.items():
        c = _consensus(by_source.get(LabelSource.HUMAN)) or _consensus(by_source.get(LabelSource.IMPORTED))
        if c is not None:
            consensus[item_id] = c
    curated = curated_item_ids(project)
    found: dict[int, dict[str, Any]] = {}

    def add(item_id: int, kind: str, strength: float, evidence: dict[str, Any]) -> None:
        if item_id in curated:
            return
        entry = found.get(item_id)
        if entry is None:
            entry = found[item_id] = {"item_id": item_id, "reasons": [], "score": 0.0, "evidence": {}}
        entry["reasons"].append(kind)
        entry["score"] += strength
        entry["evidence"][kind] = evidence

    run = crossfit_done(project)
    if run is not None:
        margins = {
            m[0]: m[1:]
            for m in OutOfFoldMargin.objects.filter(run=cast(CrossFitRun, run)).values_list(
                "item_id", "margin", "spread", "fold"
            )
        }
        for item_id, c in consensus.items():
            if c.label not in ("A", "B") or item_id not in margins:
                continue
            margin_b, spread, fold = margins[item_id]
            for_label = margin_b if c.label == "B" else -margin_b
            p = sigmoid(for_label)
            if p < 0.5:  # the model that never saw the item prefers the other response
                add(
                    item_id,
                    "out_of_fold_disagrees",
                    min(3.0, -for_label),  # the logit against the label: lowest probability first
                    {
                        "label": c.label,
                        "probability_of_label": round(p, 4),
                        "margin_b_minus_a": round(margin_b, 4),
                        "ensemble_spread": round(spread, 4),
                        "fold": fold,
                    },
                )
    for item_id, c in consensus.items():
        if c.n >= 2 and (c.tied or c.agreement < LOW_AGREEMENT):
            # The annotators' votes where any annotator judged the item, else the imported labels'.
            by_source = votes[item_id]
            tallies = by_source.get(LabelSource.HUMAN) or by_source[LabelSource.IMPORTED]
            ordered = sorted(((t[1], choice, t[0]) for choice, t in tallies.items() if choice))  # as first cast
            add(
                item_id,
                "low_agreement",
                1.0 - c.agreement,
                {"votes": {choice: n for _, choice, n in ordered}, "agreement": round(c.agreement, 3)},
            )
    flips: dict[int, list[str]] = defaultdict(list)
    for item_id, username, name, raw in (
        Judgment.objects.filter(source_q(LabelSource.AI), item__project=project, item__is_gold=False)
        .filter(raw_output__startswith="{")
        .order_by("id")
        .values_list("item_id", "labeler__user__username", "labeler__name", "raw_output")
    ):
        if order_consistent(raw) is False:
            flips[item_id].append(username or name)
    for item_id, labelers in flips.items():
        add(item_id, "ai_order_flip", 0.5, {"labelers": labelers})
    flagged: dict[int, list[str]] = defaultdict(list)
    for item_id, reason in (
        Assignment.objects.filter(item__project=project, item__is_gold=False, flagged=True)
        .order_by("id")
        .values_list("item_id", "flag_reason")
    ):
        flagged[item_id].append(reason)
    for item_id, reasons in flagged.items():
        add(item_id, "flagged", 1.0, {"reasons": reasons})
    for entry in found.values():
        entry["consensus"] = consensus.get(entry["item_id"])
    return Found(list(found.values()), last)


def order_consistent(raw: str) -> bool | None:
    """An AI judgment's `order_consistent` as its raw output states it (None: not stated)."""
    if not raw or not raw.startswith("{"):
        return None
    try:
        value = json.loads(raw).get("order_consistent")
    except (ValueError, AttributeError):
        return None
    return None if value is None else bool(value)


def details(rows: list[dict[str, Any]]) -> None:
    """Add what a row shows besides its evidence: external id, the prompt's first 300 characters,
    and the evidence as JSON (the action form posts it back). One query."""
    texts = dict(
        Item.objects.filter(id__in=[r["item_id"] for r in rows])
        .annotate(head=Left("prompt", 300))
        .values_list("id", "head")
    )
    for r in rows:
        r["prompt"] = texts[r["item_id"]]
        r["evidence_json"] = json.dumps({"reasons": r["reasons"], **r["evidence"]})


def noisy_candidates(project: Project, limit: int = 200) -> list[dict[str, Any]]:
    """Items worth a curator's look, strongest evidence first, skipping items already curated:
    item_id, external_id, prompt, reasons, score, evidence (per reason), evidence_json and the
    reference consensus (None for an item only flagged)."""
    rows = sorted(find(project).rows, key=lambda r: (-r["score"], r["item_id"]))[:limit]
    external = dict(Item.objects.filter(id__in=[r["item_id"] for r in rows]).values_list("id", "external_id"))
    for r in rows:
        r["external_id"] = external[r["item_id"]]
        r["score"] = round(r["score"], 3)
    details(rows)
    return rows
