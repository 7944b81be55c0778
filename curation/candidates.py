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
counts become arrays and every item's consensus is computed at once
(`curation.consensus.consensus_of_counts`, the same as `pairwise_consensus` on the votes); Python
objects are made for the candidates only. Texts are read only for the rows returned
(`noisy_candidates`) or shown on a page (`curation.selectors.review_queue`, with `details`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import numpy as np
from django.db.models import Count, IntegerField, Max, Min, Sum
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Left

from annotation.models import Assignment, Item, Judgment, LabelSource, Project, source_of_kind, source_q
from curation.consensus import PAIRWISE_LABELS, consensus_of_counts

# Below this share of votes for the consensus label an item counts as low agreement (a 2-1 split does).
LOW_AGREEMENT = 0.7

SOURCES = (LabelSource.HUMAN, LabelSource.IMPORTED, LabelSource.AI)  # the axes of `_Votes`
# Choice columns: A, B, tie (as PAIRWISE_LABELS), then none (no choice) and any other value.
_NONE, _OTHER = len(PAIRWISE_LABELS), len(PAIRWISE_LABELS) + 1


@dataclass
class Found:
    """Every candidate of a project (unordered, score not rounded), and when each judged item was
    last judged (by anyone, AI labelers included)."""

    rows: list[dict[str, Any]]
    last_judged: dict[int, datetime] = field(default_factory=dict)


@dataclass
class _Votes:
    """The judgments of the project's non-gold items, counted: `items` ascending, and per item,
    source (SOURCES) and choice column: the number of judgments, the id of the first one and the
    sum of their strengths."""

    items: np.ndarray
    counts: np.ndarray
    first: np.ndarray
    strength: np.ndarray
    last: dict[int, datetime]


def _choice(pairwise: Any, ranking: Any) -> tuple[str | None, int]:
    """A judgment's pairwise choice and strength, from its payload's `pairwise` or else its
    `ranking` (as `curation.quality` reads them)."""
    if pairwise:
        return pairwise["choice"], int(pairwise.get("strength") or 0)
    if ranking and len(ranking) >= 2:
        return ("A" if ranking[0] < ranking[1] else "B" if ranking[1] < ranking[0] else "tie"), 1
    return None, 0


def _votes(project: Project) -> _Votes:
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
    last: dict[int, datetime] = {}
    for item_id, *_, created in rows:
        if item_id not in last or created > last[item_id]:
            last[item_id] = created
    if not rows:
        empty = np.zeros((0, len(SOURCES), _OTHER + 1), dtype=np.int64)
        return _Votes(np.zeros(0, dtype=np.int64), empty, empty.copy(), empty.copy(), last)
    item_col, kind_col, choice_col, n_col, first_col, strength_col, _ = zip(*rows, strict=True)
    items, item_at = np.unique(np.array(item_col, dtype=np.int64), return_inverse=True)
    source_of = {kind: SOURCES.index(source_of_kind(kind)) for kind in set(kind_col)}
    column = {label: k for k, label in enumerate(PAIRWISE_LABELS)}
    at = (
        item_at,
        np.array([source_of[k] for k in kind_col], dtype=np.int64),
        np.array([column.get(c, _OTHER) if c else _NONE for c in choice_col], dtype=np.int64),
    )
    shape = (len(items), len(SOURCES), _OTHER + 1)
    counts, strengths = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    first = np.full(shape, np.iinfo(np.int64).max, dtype=np.int64)
    np.add.at(counts, at, np.array(n_col, dtype=np.int64))
    np.add.at(strengths, at, np.array([s or 0 for s in strength_col], dtype=np.int64))
    np.minimum.at(first, at, np.array(first_col, dtype=np.int64))
    return _Votes(items, counts, first, strengths, last)


def find(project: Project) -> Found:
    """All the project's candidates: item_id, reasons, score (not rounded), evidence, consensus."""
    from curation.selectors import curated_item_ids
    from models_srv.crossfit import sigmoid
    from models_srv.models import CrossFitRun, OutOfFoldMargin
    from models_srv.selectors import crossfit_done

    votes = _votes(project)
    human, imported = SOURCES.index(LabelSource.HUMAN), SOURCES.index(LabelSource.IMPORTED)
    labels = slice(0, len(PAIRWISE_LABELS))
    if votes.counts[:, [human, imported], _OTHER].any():
        raise ValueError("unknown pairwise choice in a judgment")  # as pairwise_consensus says
    # The reference label: the annotators' votes where any voted, else the imported labels'.
    by_human = votes.counts[:, human, labels].sum(axis=1) > 0
    pick = np.where(by_human, human, imported)
    rows_at = np.arange(len(votes.items))
    cc = consensus_of_counts(votes.counts[rows_at, pick, labels], votes.strength[rows_at, pick, labels])
    item_ids: list[int] = votes.items.tolist()
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
    if run is not None and len(votes.items):
        margins = OutOfFoldMargin.objects.filter(run=cast(CrossFitRun, run)).values_list(
            "item_id", "margin", "spread", "fold"
        )
        m_item, m_margin, m_spread, m_fold = (list(col) for col in zip(*margins, strict=True)) if margins else ([],) * 4
        where = np.searchsorted(votes.items, np.array(m_item, dtype=np.int64))
        known = where < len(votes.items)
        known[known] = votes.items[where[known]] == np.array(m_item, dtype=np.int64)[known]
        label = np.where(known, cc.label[np.clip(where, 0, len(votes.items) - 1)], -1)
        margin = np.array(m_margin, dtype=np.float64)
        a, b = PAIRWISE_LABELS.index("A"), PAIRWISE_LABELS.index("B")
        for_label = np.where(label == b, margin, -margin)
        # The label is A or B, and the model that never saw the item prefers the other response.
        against_b = label == b
        for k in np.flatnonzero(((label == a) | against_b) & (for_label < 0)).tolist():
            margin_b = m_margin[k]
            for_b = bool(against_b[k])
            against = margin_b if for_b else -margin_b
            p = sigmoid(against)
            if p < 0.5:
                add(
                    m_item[k],
                    "out_of_fold_disagrees",
                    min(3.0, -against),  # the logit against the label: lowest probability first
                    {
                        "label": "B" if for_b else "A",
                        "probability_of_label": round(p, 4),
                        "margin_b_minus_a": round(margin_b, 4),
                        "ensemble_spread": round(m_spread[k], 4),
                        "fold": m_fold[k],
                    },
                )
    low = np.flatnonzero((cc.n >= 2) & (cc.tied | (cc.agreement < LOW_AGREEMENT)))
    # The votes shown: the annotators' where any annotator judged the item, else the imported
    # labels', in the order each choice was first cast.
    shown_source = np.where(votes.counts[low, human].sum(axis=1) > 0, human, imported)
    low_first = votes.first[low, shown_source, labels].tolist()
    low_counts = votes.counts[low, shown_source, labels].tolist()
    for idx, cast_at, n_of, agreement in zip(
        low.tolist(), low_first, low_counts, cc.agreement[low].tolist(), strict=True
    ):
        shown = sorted((cast_at[k], PAIRWISE_LABELS[k], n_of[k]) for k in range(len(PAIRWISE_LABELS)) if n_of[k])
        add(
            item_ids[idx],
            "low_agreement",
            1.0 - agreement,
            {"votes": {choice: n for _, choice, n in shown}, "agreement": round(agreement, 3)},
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
    rows = list(found.values())
    ids = np.array([r["item_id"] for r in rows], dtype=np.int64)
    where = np.searchsorted(votes.items, ids)
    has = np.zeros(len(ids), dtype=bool)
    inside = where < len(item_ids)
    has[inside] = (votes.items[where[inside]] == ids[inside]) & (cc.n[where[inside]] > 0)
    for r, idx, voted in zip(rows, where.tolist(), has.tolist(), strict=True):
        r["consensus"] = cc.at(idx) if voted else None
    return Found(rows, votes.last)


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
    texts = {
        i: (external_id, head)
        for i, external_id, head in Item.objects.filter(id__in=[r["item_id"] for r in rows])
        .annotate(head=Left("prompt", 300))
        .values_list("id", "external_id", "head")
    }
    for r in rows:
        r["external_id"], r["prompt"] = texts[r["item_id"]]
        r["evidence_json"] = json.dumps({"reasons": r["reasons"], **r["evidence"]})


def noisy_candidates(project: Project, limit: int = 200) -> list[dict[str, Any]]:
    """Items worth a curator's look, strongest evidence first, skipping items already curated:
    item_id, external_id, prompt, reasons, score, evidence (per reason), evidence_json and the
    reference consensus (None for an item only flagged)."""
    rows = sorted(find(project).rows, key=lambda r: (-r["score"], r["item_id"]))[:limit]
    for r in rows:
        r["score"] = round(r["score"], 3)
    details(rows)
    return rows
