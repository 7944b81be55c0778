"""Consensus over several judgments of one item: pure functions, no database access.

Conventions (the same as the judgment payload, see `annotation.schema`):
- a pairwise vote is `(choice, strength)` with choice "A" | "B" | "tie" and strength 1..n
  (0 for a tie);
- a ranking is a list of ranks per response in stored order, 1 = best, equal ranks are ties;
- a rubric rating is one `{aspect: score}` mapping for one response by one rater.

`dawid_skene` estimates per-annotator confusion matrices and per-item label posteriors by EM
(Dawid & Skene 1979) from `(item_key, annotator_key, class)` triples; its `reliability` can be
fed back as vote weights through `weighted_consensus`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "PAIRWISE_LABELS",
    "Consensus",
    "CountedConsensus",
    "DawidSkeneResult",
    "consensus_of_counts",
    "dawid_skene",
    "midranks",
    "pairwise_consensus",
    "ranking_consensus",
    "rubric_consensus",
    "weighted_consensus",
]

PAIRWISE_LABELS: tuple[str, ...] = ("A", "B", "tie")
_EPS = 1e-12


@dataclass(frozen=True)
class Consensus:
    """The consensus of the pairwise votes on one item.

    `label` is "A" | "B" | "tie", or None when there are no votes or when A and B are tied at the
    top (then `tied` is True). When the top two labels have equal weight and one of them is
    "tie", the label is "tie". `agreement` is the weighted share of the top label (for a tied
    A/B split, the share of either side, e.g. 0.5), 0.0 when there are no votes. `strength` is
    the weighted mean strength of the votes for `label` (0.0 for "tie" or None).
    """

    label: str | None
    strength: float
    agreement: float
    n: int
    tied: bool


def pairwise_consensus(votes: Sequence[tuple[str, int]], weights: Sequence[float] | None = None) -> Consensus:
    """Weighted plurality of pairwise votes `(choice, strength)`; weights default to 1 each."""
    n = len(votes)
    if weights is None:
        w = [1.0] * n
    else:
        if len(weights) != n:
            raise ValueError(f"{len(weights)} weights for {n} votes")
        w = [float(x) for x in weights]
        if any(not math.isfinite(x) or x < 0 for x in w):
            raise ValueError("weights must be finite and non-negative")
    totals = dict.fromkeys(PAIRWISE_LABELS, 0.0)
    for (choice, _strength), weight in zip(votes, w, strict=True):
        if choice not in totals:
            raise ValueError(f"unknown pairwise choice {choice!r}")
        totals[choice] += weight

    def strength_of(label: str) -> float:
        num = sum(weight * s for (c, s), weight in zip(votes, w, strict=True) if c == label)
        den = sum(weight for (c, _s), weight in zip(votes, w, strict=True) if c == label)
        return num / den if den > 0 else 0.0

    return _decide(totals, n, strength_of)


@dataclass(frozen=True)
class CountedConsensus:
    """`pairwise_consensus` of many items' unweighted votes at once (`consensus_of_counts`), as
    arrays over the items: `label` an index into PAIRWISE_LABELS or -1 for None."""

    label: np.ndarray
    strength: np.ndarray
    agreement: np.ndarray
    n: np.ndarray
    tied: np.ndarray

    def at(self, i: int) -> Consensus:
        label = int(self.label[i])
        return Consensus(
            label=PAIRWISE_LABELS[label] if label >= 0 else None,
            strength=float(self.strength[i]),
            agreement=float(self.agreement[i]),
            n=int(self.n[i]),
            tied=bool(self.tied[i]),
        )


def consensus_of_counts(counts: np.ndarray, strength_sums: np.ndarray) -> CountedConsensus:
    """The consensus of each row of `counts` (votes for A, B and tie: what a grouped query
    returns), `strength_sums` the sums of those votes' strengths in the same columns: the
    `Consensus` that `pairwise_consensus` gives for those votes (`at(i)`), vectorized. With whole
    vote counts a tie at the top is an equality, so the rule is `_decide`'s without a tolerance."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, len(PAIRWISE_LABELS))
    sums = np.asarray(strength_sums, dtype=np.float64).reshape(counts.shape)
    n = counts.sum(axis=1)
    top = counts.max(axis=1, initial=0)
    at_top = counts == top[:, None]
    tied = (at_top.sum(axis=1) > 1) & (n > 0)
    tie = PAIRWISE_LABELS.index("tie")
    label = np.where(tied, np.where(at_top[:, tie], tie, -1), counts.argmax(axis=1))
    label[n == 0] = -1
    agreement = np.where(n > 0, top / np.maximum(n, 1), 0.0)
    rows = np.arange(len(counts))
    picked = np.clip(label, 0, None)
    voted = (label >= 0) & (label != tie)
    strength = np.where(voted, sums[rows, picked] / np.maximum(counts[rows, picked], 1), 0.0)
    return CountedConsensus(label=label, strength=strength, agreement=agreement, n=n, tied=tied)


def _decide(totals: dict[str, float], n: int, strength_of: Callable[[str], float]) -> Consensus:
    """The one rule: the label of the heaviest choice, a tie between A and B (or with "tie") as
    `Consensus` says; `strength_of(label)` is asked only for an A or B label."""
    total = sum(totals.values())
    if n == 0 or total <= 0:
        return Consensus(label=None, strength=0.0, agreement=0.0, n=n, tied=False)

    ordered = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)
    top_weight = ordered[0][1]
    tol = 1e-9 * max(1.0, total)
    top = [label for label, weight in ordered if abs(weight - top_weight) <= tol]
    tied = len(top) > 1
    if tied:
        label = "tie" if "tie" in top else None
    else:
        label = top[0]
    agreement = top_weight / total
    strength = strength_of(label) if label in ("A", "B") else 0.0
    return Consensus(label=label, strength=float(strength), agreement=float(agreement), n=n, tied=tied)


def weighted_consensus(
    votes: Sequence[tuple[Hashable, str, int]],
    reliability: Mapping[Hashable, float],
    *,
    default: float | None = None,
) -> Consensus:
    """`pairwise_consensus` of `(annotator, choice, strength)` votes weighted by annotator reliability.

    An annotator missing from `reliability` gets `default`, or when that is None the mean of the
    known reliabilities (1.0 when there are none). Negative reliabilities count as 0.
    """
    if default is None:
        known = [float(r) for r in reliability.values()]
        default = sum(known) / len(known) if known else 1.0
    weights = [max(0.0, float(reliability.get(annotator, default))) for annotator, _c, _s in votes]
    return pairwise_consensus([(c, s) for _a, c, s in votes], weights)


def midranks(ranks: Sequence[float]) -> list[float]:
    """Turn ranks with ties (e.g. dense `[1, 1, 2]`) into average ranks (`[1.5, 1.5, 3.0]`)."""
    order = sorted(range(len(ranks)), key=lambda i: ranks[i])
    out = [0.0] * len(ranks)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and ranks[order[j + 1]] == ranks[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            out[order[k]] = avg
        i = j + 1
    return out


def ranking_consensus(rankings: Sequence[Sequence[int]]) -> tuple[list[float], float]:
    """Mean rank per response (as given, 1 = best) and Kendall's W over the rankings.

    W is computed on average ranks with the usual tie correction; it is 1.0 for a single
    ranking (or when every ranking ties everything), and ([], 0.0) is returned for no rankings.
    """
    if not rankings:
        return [], 0.0
    k = len(rankings[0])
    if any(len(r) != k for r in rankings):
        raise ValueError("all rankings must rank the same number of responses")
    m = len(rankings)
    raw = np.asarray(rankings, dtype=float)
    mean = [float(x) for x in raw.mean(axis=0)]
    if m == 1 or k < 2:
        return mean, 1.0
    mid = np.asarray([midranks(r) for r in rankings], dtype=float)
    sums = mid.sum(axis=0)
    s = float(((sums - sums.mean()) ** 2).sum())
    ties = 0.0
    for r in mid:
        _vals, counts = np.unique(r, return_counts=True)
        ties += float((counts**3 - counts).sum())
    denom = m * m * (k**3 - k) - m * ties
    if denom <= 0:
        return mean, 1.0
    w = 12.0 * s / denom
    return mean, float(min(1.0, max(0.0, w)))


def rubric_consensus(ratings: Sequence[Mapping[str, int]]) -> dict[str, float]:
    """Mean score per aspect over the raters that rated it (aspects in first-seen order)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for rating in ratings:
        for aspect, score in rating.items():
            if score is None:
                continue
            sums[aspect] = sums.get(aspect, 0.0) + float(score)
            counts[aspect] = counts.get(aspect, 0) + 1
    return {aspect: sums[aspect] / counts[aspect] for aspect in sums}


@dataclass(frozen=True)
class DawidSkeneResult:
    """What `dawid_skene` estimated.

    `posteriors[item][class]` sums to 1 per item; `labels[item]` is its argmax (first class in
    `classes` order on a tie); `confusion[annotator][true][given]` is a row-stochastic matrix in
    `classes` order; `reliability[annotator]` = sum_k prior_k * confusion[k][k], the expected
    accuracy; `priors[class]` the estimated class prevalence; `iterations` the EM steps run.
    """

    posteriors: dict[Hashable, dict[str, float]]
    labels: dict[Hashable, str]
    reliability: dict[Hashable, float]
    confusion: dict[Hashable, list[list[float]]]
    iterations: int
    priors: dict[str, float] = field(default_factory=dict)
    converged: bool = True


def dawid_skene(
    labels: Sequence[tuple[Hashable, Hashable, str]],
    classes: Sequence[str],
    *,
    iterations: int = 50,
    tol: float = 1e-6,
    smoothing: float = 0.01,
    diagonal: float = 1.0,
) -> DawidSkeneResult:
    """Dawid-Skene EM over `(item_key, annotator_key, class)` triples.

    Starts from the (soft) majority vote per item, then alternates the M-step (class priors and
    per-annotator confusion matrices, each with additive `smoothing` so that annotators with a
    single label and classes nobody used stay finite) and the E-step (item posteriors, in log
    space) until the largest posterior change is below `tol` or `iterations` steps have run.

    `diagonal` pseudo-counts are added to the diagonal of every confusion matrix: an annotator
    with only a few labels is assumed better than chance, so the only label on a
    single-annotator item is kept rather than overruled by the class prior. With tens of labels
    per annotator its effect vanishes; pass 0 for the textbook estimator.
    """
    classes = list(classes)
    if len(set(classes)) != len(classes) or not classes:
        raise ValueError("classes must be a non-empty list of distinct labels")
    if smoothing <= 0 or diagonal < 0:
        raise ValueError("smoothing must be positive and diagonal non-negative")
    cls_index = {c: i for i, c in enumerate(classes)}
    items: dict[Hashable, int] = {}
    annotators: dict[Hashable, int] = {}
    rows: list[tuple[int, int, int]] = []
    for item, annotator, label in labels:
        if label not in cls_index:
            raise ValueError(f"label {label!r} is not one of {classes}")
        i = items.setdefault(item, len(items))
        j = annotators.setdefault(annotator, len(annotators))
        rows.append((i, j, cls_index[label]))
    n_items, n_ann, n_cls = len(items), len(annotators), len(classes)
    if not rows:
        return DawidSkeneResult({}, {}, {}, {}, 0, dict.fromkeys(classes, 1.0 / n_cls))

    # Sparse: one row per distinct (item, annotator, class) with its count, so memory grows with
    # the number of labels, not with items x annotators.
    uniq, weight = np.unique(np.asarray(rows, dtype=np.int64), axis=0, return_counts=True)
    ii, jj, ll = uniq[:, 0], uniq[:, 1], uniq[:, 2]
    w = weight.astype(float)

    # Majority-vote initialisation (soft: vote shares per item).
    post = np.zeros((n_items, n_cls))
    np.add.at(post, (ii, ll), w)
    post /= post.sum(axis=1, keepdims=True)

    pseudo = np.full((n_cls, n_cls), smoothing) + diagonal * np.eye(n_cls)

    def m_step(post: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        priors = (post.sum(axis=0) + smoothing) / (n_items + n_cls * smoothing)
        conf = np.zeros((n_ann, n_cls, n_cls))
        # conf[j, true k, given l]; numpy's stub for ufunc.at takes no slice in an index tuple.
        np.add.at(conf, (jj, slice(None), ll), w[:, None] * post[ii])  # type: ignore[arg-type]
        conf += pseudo[None, :, :]
        conf /= conf.sum(axis=2, keepdims=True)
        return priors, conf

    steps = 0
    converged = False
    for _ in range(max(1, iterations)):
        steps += 1
        priors, conf = m_step(post)
        # E-step
        log_post = np.tile(np.log(priors), (n_items, 1))
        np.add.at(log_post, ii, w[:, None] * np.log(conf)[jj, :, ll])
        log_post -= log_post.max(axis=1, keepdims=True)
        new = np.exp(log_post)
        new /= new.sum(axis=1, keepdims=True)
        delta = float(np.abs(new - post).max())
        post = new
        if delta < tol:
            converged = True
            break

    # Final M-step so that confusion, priors and reliability match the returned posteriors.
    priors, conf = m_step(post)
    reliability = np.einsum("k,jkk->j", priors, conf)

    item_keys = list(items)
    ann_keys = list(annotators)
    return DawidSkeneResult(
        posteriors={key: {c: float(post[i, k]) for k, c in enumerate(classes)} for i, key in enumerate(item_keys)},
        labels={key: classes[int(np.argmax(post[i]))] for i, key in enumerate(item_keys)},
        reliability={key: float(reliability[j]) for j, key in enumerate(ann_keys)},
        confusion={key: conf[j].tolist() for j, key in enumerate(ann_keys)},
        iterations=steps,
        priors={c: float(priors[k]) for k, c in enumerate(classes)},
        converged=converged,
    )
