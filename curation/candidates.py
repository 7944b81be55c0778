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
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import numpy as np
from django.db.models import Count, IntegerField, Max, Min, Sum
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Left

from annotation.models import Assignment, Item, Judgment, LabelSource, Project, source_of_kind, source_q
from curation.consensus import PAIRWISE_LABELS, CountedConsensus, consensus_of_counts

# Below this share of votes for the consensus label an item counts as low agreement (a 2-1 split does).
LOW_AGREEMENT = 0.7

SOURCES = (LabelSource.HUMAN, LabelSource.IMPORTED, LabelSource.AI)  # the axes of `_Votes`
# Choice columns: A, B, tie (as PAIRWISE_LABELS), then none (no choice) and any other value.
_NONE, _OTHER = len(PAIRWISE_LABELS), len(PAIRWISE_LABELS) + 1
_LABELS = slice(0, len(PAIRWISE_LABELS))
_HUMAN, _IMPORTED = SOURCES.index(LabelSource.HUMAN), SOURCES.index(LabelSource.IMPORTED)


REASONS = ("out_of_fold_disagrees", "low_agreement", "ai_order_flip", "flagged")  # in the order they add up
_OOF, _LOW, _FLIP, _FLAG = (1 << k for k in range(len(REASONS)))


@dataclass
class Candidates:
    """Every candidate of a project as columns, in item id order: what the review queue filters
    and sorts on. A candidate's row as `noisy_candidates` gives it (its evidence dicts and its
    consensus) is made only when asked for, by `row(i)`."""

    item_id: np.ndarray  # int64, ascending
    reasons: np.ndarray  # bit k set: REASONS[k]
    score: np.ndarray  # float64, not rounded
    margin_b: np.ndarray  # the out-of-fold margin r(B) - r(A) where out_of_fold_disagrees, else NaN
    label_b: np.ndarray  # whether the consensus label is B (else A), where out_of_fold_disagrees
    agreement: np.ndarray  # the reference consensus' agreement, NaN for an item without one
    last_judged: dict[int, datetime]  # by anyone, AI labelers included; absent: never judged
    _at: np.ndarray  # each candidate's index in `_votes`, -1 for an item with no judgment
    _votes: _Votes
    _consensus: CountedConsensus
    _oof: dict[int, tuple[float, float, float, int]]  # by index into _votes: p, margin r(B) - r(A), spread, fold
    _flips: dict[int, list[str]]
    _flags: dict[int, list[str]]

    def __len__(self) -> int:
        return len(self.item_id)

    def row(self, i: int) -> dict[str, Any]:
        """item_id, reasons, score (not rounded), evidence (per reason) and consensus."""
        item_id, bits, at = int(self.item_id[i]), int(self.reasons[i]), int(self._at[i])
        evidence: dict[str, Any] = {}
        if bits & _OOF:
            p, margin_b, spread, fold = self._oof[at]
            evidence[REASONS[0]] = {
                "label": "B" if self.label_b[i] else "A",
                "probability_of_label": round(p, 4),
                "margin_b_minus_a": round(margin_b, 4),
                "ensemble_spread": round(spread, 4),
                "fold": fold,
            }
        if bits & _LOW:
            evidence[REASONS[1]] = self._votes.shown(at, float(self.agreement[i]))
        if bits & _FLIP:
            evidence[REASONS[2]] = {"labelers": self._flips[item_id]}
        if bits & _FLAG:
            evidence[REASONS[3]] = {"reasons": self._flags[item_id]}
        return {
            "item_id": item_id,
            "reasons": list(evidence),
            "score": float(self.score[i]),
            "evidence": evidence,
            "consensus": self._consensus.at(at) if at >= 0 and self._consensus.n[at] > 0 else None,
        }


def margin_for_label(label: str, margin_b: float) -> float:
    """The out-of-fold model's logit in favour of the consensus label, as the evidence gives it
    (below 0: it prefers the other response)."""
    margin_b = round(margin_b, 4)
    return margin_b if label == "B" else -margin_b


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

    def shown(self, at: int, agreement: float) -> dict[str, Any]:
        """The `low_agreement` evidence of item `at`: the annotators' votes where any annotator
        judged the item, else the imported labels', in the order each choice was first cast."""
        source = _HUMAN if self.counts[at, _HUMAN].sum() > 0 else _IMPORTED
        cast_at, n_of = self.first[at, source, _LABELS].tolist(), self.counts[at, source, _LABELS].tolist()
        shown = sorted((cast_at[k], PAIRWISE_LABELS[k], n_of[k]) for k in range(len(PAIRWISE_LABELS)) if n_of[k])
        return {"votes": {choice: n for _, choice, n in shown}, "agreement": round(agreement, 3)}


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
    if not rows:
        empty = np.zeros((0, len(SOURCES), _OTHER + 1), dtype=np.int64)
        return _Votes(np.zeros(0, dtype=np.int64), empty, empty.copy(), empty.copy(), {})
    item_col, kind_col, choice_col, n_col, first_col, strength_col, last_col = zip(*rows, strict=True)
    last: dict[int, datetime] = {}
    for item_id, created in zip(item_col, last_col, strict=True):
        before = last.get(item_id)
        if before is None or created > before:
            last[item_id] = created
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


def find(project: Project) -> Candidates:
    """All the project's candidates, as columns."""
    from curation.selectors import curated_item_ids
    from models_srv.crossfit import sigmoid
    from models_srv.models import CrossFitRun, OutOfFoldMargin
    from models_srv.selectors import crossfit_done

    votes = _votes(project)
    if votes.counts[:, [_HUMAN, _IMPORTED], _OTHER].any():
        raise ValueError("unknown pairwise choice in a judgment")  # as pairwise_consensus says
    # The reference label: the annotators' votes where any voted, else the imported labels'.
    pick = np.where(votes.counts[:, _HUMAN, _LABELS].sum(axis=1) > 0, _HUMAN, _IMPORTED)
    judged = np.arange(len(votes.items))
    cc = consensus_of_counts(votes.counts[judged, pick, _LABELS], votes.strength[judged, pick, _LABELS])
    a, b = PAIRWISE_LABELS.index("A"), PAIRWISE_LABELS.index("B")

    # Out of fold: per judged item, the part of the score and the evidence.
    is_oof = np.zeros(len(votes.items), dtype=bool)
    oof_score = np.zeros(len(votes.items))
    margin_b = np.full(len(votes.items), np.nan)
    oof: dict[int, tuple[float, float, float, int]] = {}
    run = crossfit_done(project)
    if run is not None and len(votes.items):
        margins = OutOfFoldMargin.objects.filter(run=cast(CrossFitRun, run)).values_list(
            "item_id", "margin", "spread", "fold"
        )
        m_item, m_margin, m_spread, m_fold = (list(col) for col in zip(*margins, strict=True)) if margins else ([],) * 4
        at = np.searchsorted(votes.items, np.array(m_item, dtype=np.int64))
        known = at < len(votes.items)
        known[known] = votes.items[at[known]] == np.array(m_item, dtype=np.int64)[known]
        label = np.where(known, cc.label[np.clip(at, 0, len(votes.items) - 1)], -1)
        margin = np.array(m_margin, dtype=np.float64)
        for_b = label == b
        # The label is A or B, and the model that never saw the item prefers the other response.
        maybe = np.flatnonzero(((label == a) | for_b) & (np.where(for_b, margin, -margin) < 0))
        for k, idx, is_b in zip(maybe.tolist(), at[maybe].tolist(), for_b[maybe].tolist(), strict=True):
            against = m_margin[k] if is_b else -m_margin[k]
            p = sigmoid(against)
            if p < 0.5:
                is_oof[idx] = True
                oof_score[idx] = min(3.0, -against)  # the logit against the label: lowest probability first
                margin_b[idx] = m_margin[k]
                oof[idx] = (p, m_margin[k], m_spread[k], m_fold[k])  # the evidence, made by `row`
    low = (cc.n >= 2) & (cc.tied | (cc.agreement < LOW_AGREEMENT))

    flips: dict[int, list[str]] = defaultdict(list)
    for item_id, username, name, raw in (
        Judgment.objects.filter(source_q(LabelSource.AI), item__project=project, item__is_gold=False)
        .filter(raw_output__startswith="{")
        .order_by("id")
        .values_list("item_id", "labeler__user__username", "labeler__name", "raw_output")
    ):
        if order_consistent(raw) is False:
            flips[item_id].append(username or name)
    flags: dict[int, list[str]] = defaultdict(list)
    for item_id, reason in (
        Assignment.objects.filter(item__project=project, item__is_gold=False, flagged=True)
        .order_by("id")
        .values_list("item_id", "flag_reason")
    ):
        flags[item_id].append(reason)

    # Every judged or flagged item, then the candidates among them.
    items = np.union1d(votes.items, np.array(list(flags), dtype=np.int64))
    at = np.searchsorted(votes.items, items)
    has_votes = np.zeros(len(items), dtype=bool)
    inside = at < len(votes.items)
    has_votes[inside] = votes.items[at[inside]] == items[inside]
    at = np.where(has_votes, at, -1)

    def of_judged(column: np.ndarray, fill: Any) -> np.ndarray:
        out = np.full(len(items), fill, dtype=column.dtype)
        out[has_votes] = column[at[has_votes]]
        return out

    reasons = np.zeros(len(items), dtype=np.int64)
    reasons |= np.where(of_judged(is_oof, False), _OOF, 0)
    reasons |= np.where(of_judged(low, False), _LOW, 0)
    reasons |= np.where(np.isin(items, np.array(list(flips), dtype=np.int64)), _FLIP, 0)
    reasons |= np.where(np.isin(items, np.array(list(flags), dtype=np.int64)), _FLAG, 0)
    # The score adds up in the reasons' order, as floats do (adding 0.0 for a reason absent).
    score = of_judged(oof_score, 0.0) + np.where(reasons & _LOW, 1.0 - of_judged(cc.agreement, 0.0), 0.0)
    score = score + np.where(reasons & _FLIP, 0.5, 0.0) + np.where(reasons & _FLAG, 1.0, 0.0)
    curated = np.array(sorted(curated_item_ids(project)), dtype=np.int64)
    keep = (reasons != 0) & ~np.isin(items, curated)
    agreement = np.where(of_judged(cc.n, 0) > 0, of_judged(cc.agreement, np.nan), np.nan)
    return Candidates(
        item_id=items[keep],
        reasons=reasons[keep],
        score=score[keep],
        margin_b=of_judged(margin_b, np.nan)[keep],
        label_b=(of_judged(cc.label, -1) == b)[keep],
        agreement=agreement[keep],
        last_judged=votes.last,
        _at=at[keep],
        _votes=votes,
        _consensus=cc,
        _oof=oof,
        _flips=flips,
        _flags=flags,
    )


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
    found = find(project)
    order = np.lexsort((found.item_id, -found.score))[:limit]  # strongest evidence first
    rows = [found.row(i) for i in order.tolist()]
    for r in rows:
        r["score"] = round(r["score"], 3)
    details(rows)
    return rows
