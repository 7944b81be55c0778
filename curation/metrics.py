"""Agreement and quality metrics for curation: pure functions, no database access.

Conventions:
- A reliability matrix is given **per unit** (unit = an item, or one question on an item): each
  inner sequence holds the values the coders gave that unit, in any order, with None (or NaN)
  for a missing value. A coders x units matrix, as the `krippendorff` package takes it, is
  turned into this shape with `units_from_coders`.
- Pairwise choices are "A" | "B" | "tie" (see `annotation.schema`); outcomes for
  `bradley_terry` are 1.0 (A wins), 0.0 (B wins) and 0.5 (tie).
- Functions return None where a statistic is undefined (no pairable values, no variation)
  rather than NaN, so callers can show "n/a".
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

import numpy as np

from models_srv.stats import binomial_test, wilson_interval

__all__ = [
    "AgreementPoint",
    "BiasTest",
    "LeaderboardRow",
    "agreement_over_time",
    "annotator_vs_consensus",
    "binomial_test",
    "bradley_terry",
    "cohen_kappa",
    "fleiss_kappa",
    "krippendorff_alpha",
    "label_distribution",
    "length_bias",
    "pairwise_agreement",
    "position_bias",
    "unit_agreement",
    "units_from_coders",
    "wilson_interval",
]

Value = float | int | str | None
Level = Literal["nominal", "ordinal", "interval"]


def _present(value: object) -> bool:
    if value is None:
        return False
    return not (isinstance(value, float) and math.isnan(value))


def units_from_coders(matrix: Sequence[Sequence[Value]]) -> list[list[Value]]:
    """Transpose a coders x units matrix (rows = coders) into the per-unit shape used here."""
    if not matrix:
        return []
    width = len(matrix[0])
    if any(len(row) != width for row in matrix):
        raise ValueError("every coder row must have one value per unit")
    return [[row[u] for row in matrix] for u in range(width)]


# --------------------------------------------------------------------------------------------
# Krippendorff's alpha, kappas and percent agreement
# --------------------------------------------------------------------------------------------


def krippendorff_alpha(units: Sequence[Sequence[Value]], level: Level = "nominal") -> float | None:
    """Krippendorff's alpha for a per-unit reliability matrix (see the module docstring).

    Built from the coincidence matrix: every unit with m >= 2 values adds 1/(m-1) for each
    ordered pair of its values. Distances: nominal (0/1), ordinal (Krippendorff's rank-based
    metric from the marginal frequencies, so only the order of the values matters; values are
    ordered by `<`, so give ordinal scales as numbers) and interval (squared difference).
    Returns None when fewer than two pairable values exist or when every pairable value is the
    same (expected disagreement 0).
    """
    if level not in ("nominal", "ordinal", "interval"):
        raise ValueError(f"unknown level {level!r}")
    kept = [[v for v in unit if _present(v)] for unit in units]
    kept = [unit for unit in kept if len(unit) >= 2]
    if not kept:
        return None
    distinct = {v for unit in kept for v in unit}
    # Ordered by `<`: an ordinal or interval scale is all numbers (or all text), which the Value
    # union cannot say; mixed values fail here with a TypeError.
    values = sorted(distinct, key=repr) if level == "nominal" else sorted(distinct)  # type: ignore[type-var]
    if level == "interval" and any(isinstance(v, str) for v in values):
        raise ValueError("interval alpha needs numeric values")
    index = {v: i for i, v in enumerate(values)}
    k = len(values)
    coincidence = np.zeros((k, k))
    for unit in kept:
        counts = np.zeros(k)
        for v in unit:
            counts[index[v]] += 1
        m = len(unit)
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    marginals = coincidence.sum(axis=1)
    n = marginals.sum()
    if n < 2 or k < 2:
        return None
    delta = _distance(level, values, marginals)
    observed = float((coincidence * delta).sum())
    expected = float((np.outer(marginals, marginals) * delta).sum())
    if expected <= 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def _distance(level: Level, values: Sequence[Value], marginals: np.ndarray) -> np.ndarray:
    k = len(values)
    if level == "nominal":
        return 1.0 - np.eye(k)
    if level == "interval":
        x = np.asarray(values, dtype=float)
        return (x[:, None] - x[None, :]) ** 2
    # ordinal: delta(c, k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 over the sorted values
    cum = np.concatenate([[0.0], np.cumsum(marginals)])
    lo = np.minimum.outer(np.arange(k), np.arange(k))
    hi = np.maximum.outer(np.arange(k), np.arange(k))
    between = cum[hi + 1] - cum[lo]
    return (between - (marginals[:, None] + marginals[None, :]) / 2) ** 2


def fleiss_kappa(units: Sequence[Sequence[str]], categories: Sequence[str] | None = None) -> float | None:
    """Fleiss' kappa over units, each given as the labels its raters chose (None = missing).

    With the same number of raters per unit this is Fleiss (1971); units with different numbers
    of raters are averaged per unit (P_i uses that unit's n_i) and units with fewer than two
    labels are skipped. Category shares p_j are pooled over all kept labels. `categories` fixes
    the allowed labels (a label outside it raises ValueError). None when undefined.
    """
    kept = [[v for v in unit if _present(v)] for unit in units]
    kept = [unit for unit in kept if len(unit) >= 2]
    if not kept:
        return None
    cats = list(categories) if categories is not None else sorted({v for u in kept for v in u}, key=str)
    index = {c: i for i, c in enumerate(cats)}
    table = np.zeros((len(kept), len(cats)))
    for row, unit in enumerate(kept):
        for v in unit:
            if v not in index:
                raise ValueError(f"label {v!r} is not one of {cats}")
            table[row, index[v]] += 1
    n_i = table.sum(axis=1)
    p_i = ((table**2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_bar = float(p_i.mean())
    p_j = table.sum(axis=0) / table.sum()
    p_e = float((p_j**2).sum())
    if p_e >= 1.0 - 1e-15:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


def cohen_kappa(a: Sequence[Hashable | None], b: Sequence[Hashable | None]) -> float | None:
    """Cohen's kappa of two raters over aligned label lists; pairs with a None are skipped.

    None when no pair is left or when chance agreement is 1 (both raters used one label).
    """
    if len(a) != len(b):
        raise ValueError("cohen_kappa needs two aligned lists of the same length")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if _present(x) and _present(y)]
    if not pairs:
        return None
    n = len(pairs)
    p_o = sum(x == y for x, y in pairs) / n
    ca = Counter(x for x, _ in pairs)
    cb = Counter(y for _, y in pairs)
    p_e = sum(ca[c] * cb.get(c, 0) for c in ca) / (n * n)
    if p_e >= 1.0 - 1e-15:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def unit_agreement(values: Sequence[Hashable | None]) -> float | None:
    """Share of agreeing pairs of raters on one unit (None with fewer than two values)."""
    kept = [v for v in values if _present(v)]
    m = len(kept)
    if m < 2:
        return None
    same = sum(c * (c - 1) for c in Counter(kept).values())
    return same / (m * (m - 1))


def pairwise_agreement(units: Sequence[Sequence[Hashable | None]]) -> float | None:
    """Simple percent agreement: agreeing rater pairs / all rater pairs, pooled over units.

    A unit with m values has m(m-1)/2 pairs. None when no unit has two values.
    """
    agree = 0
    total = 0
    for unit in units:
        kept = [v for v in unit if _present(v)]
        m = len(kept)
        if m < 2:
            continue
        agree += sum(c * (c - 1) // 2 for c in Counter(kept).values())
        total += m * (m - 1) // 2
    return agree / total if total else None


def annotator_vs_consensus(labels: Iterable[tuple[Hashable, Hashable, Hashable]]) -> dict[Hashable, tuple[int, int]]:
    """Leave-one-out agreement of each annotator with the majority of the others.

    `labels` are `(item, annotator, label)` triples. For every label, the majority label of the
    *other* annotators on the same item is taken; items where the others are absent or tied at
    the top are skipped. Returns `{annotator: (agreed, compared)}` (annotators with nothing
    comparable are absent).
    """
    by_item: dict[Hashable, list[tuple[Hashable, Hashable]]] = defaultdict(list)
    for item, annotator, label in labels:
        if _present(label):
            by_item[item].append((annotator, label))
    out: dict[Hashable, list[int]] = {}
    for entries in by_item.values():
        for annotator, label in entries:
            others = Counter(lab for ann, lab in entries if ann != annotator)
            if not others:
                continue
            top = others.most_common(2)
            if len(top) > 1 and top[0][1] == top[1][1]:
                continue
            tally = out.setdefault(annotator, [0, 0])
            tally[0] += int(top[0][0] == label)
            tally[1] += 1
    return {annotator: (agree, total) for annotator, (agree, total) in out.items()}


def label_distribution(
    labels: Iterable[Hashable | None], categories: Sequence[Hashable] | None = None
) -> dict[Hashable, int]:
    """Counts per label (None skipped); with `categories`, in that order and with zeros."""
    counts = Counter(v for v in labels if _present(v))
    if categories is None:
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))
    out = {c: counts.get(c, 0) for c in categories}
    for c, n in counts.items():
        if c not in out:
            out[c] = n
    return out


# --------------------------------------------------------------------------------------------
# Bias tests
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiasTest:
    """`hits` of `n` decisive decisions went the tested way; `share` = hits / n (None when n = 0);
    `p_value` is the exact two-sided binomial test against 0.5."""

    hits: int
    n: int
    share: float | None
    p_value: float


def _bias(hits: int, n: int) -> BiasTest:
    return BiasTest(hits=hits, n=n, share=hits / n if n else None, p_value=binomial_test(hits, n))


def position_bias(choices: Iterable[str]) -> BiasTest:
    """How often the response shown first ("A" on screen) wins, ties left out.

    `choices` must be in **shown** order (map stored-order choices through the display order
    first). Values other than "A", "B", "tie" raise ValueError.
    """
    a = b = 0
    for choice in choices:
        if choice == "A":
            a += 1
        elif choice == "B":
            b += 1
        elif choice != "tie":
            raise ValueError(f"unknown pairwise choice {choice!r}")
    return _bias(a, a + b)


def length_bias(records: Iterable[tuple[int, int, str]]) -> BiasTest:
    """How often the longer response wins: records are `(len_a, len_b, choice)`.

    Ties and pairs of equal length are left out; lengths may be characters or tokens.
    """
    hits = n = 0
    for len_a, len_b, choice in records:
        if choice not in ("A", "B", "tie"):
            raise ValueError(f"unknown pairwise choice {choice!r}")
        if choice == "tie" or len_a == len_b:
            continue
        n += 1
        hits += int((choice == "A") == (len_a > len_b))
    return _bias(hits, n)


# --------------------------------------------------------------------------------------------
# Bradley-Terry leaderboard
# --------------------------------------------------------------------------------------------

ELO_SCALE = 400.0 / math.log(10.0)
ELO_ANCHOR = 1000.0


@dataclass(frozen=True)
class LeaderboardRow:
    """One model on the leaderboard. `rating` is Elo-like (400 * log10 odds, mean 1000);
    `ci_low`/`ci_high` the 95% percentile bootstrap interval (None without bootstrap);
    `rank` 1 = best, equal ratings share a rank."""

    model: str
    rating: float
    ci_low: float | None
    ci_high: float | None
    wins: int
    losses: int
    ties: int
    n: int
    rank: int


def _bt_fit(
    a: np.ndarray, b: np.ndarray, y: np.ndarray, w: np.ndarray, k: int, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """MAP log-strengths by Newton's method; returns (theta, games played per model)."""
    wins = np.zeros((k, k))
    games = np.zeros((k, k))
    np.add.at(wins, (a, b), w * y)
    np.add.at(wins, (b, a), w * (1.0 - y))
    np.add.at(games, (a, b), w)
    np.add.at(games, (b, a), w)
    theta = np.zeros(k)
    for _ in range(100):
        d = theta[:, None] - theta[None, :]
        p = 1.0 / (1.0 + np.exp(-d))
        grad = (wins - games * p).sum(axis=1) - l2 * theta
        c = games * p * (1.0 - p)
        hess = c - np.diag(c.sum(axis=1) + l2)  # negative definite thanks to l2 > 0
        step = np.linalg.solve(hess, -grad)
        theta += step
        if float(np.abs(step).max()) < 1e-10:
            break
    return theta, games.sum(axis=1)


def bradley_terry(
    comparisons: Sequence[tuple[str, str, float]],
    *,
    bootstrap: int = 200,
    seed: int = 0,
    l2: float = 0.01,
) -> list[LeaderboardRow]:
    """Bradley-Terry leaderboard from `(model_a, model_b, outcome)` comparisons.

    outcome is 1.0 when A wins, 0.0 when B wins and 0.5 for a tie (a tie counts as half a win
    each; any value in [0, 1] is accepted). The log-strengths are the MAP estimate under a
    Gaussian prior (`l2` = precision) so a model that never loses keeps a finite rating, fitted
    by Newton's method. Ratings are 1000 + 400 * log10-odds, centred on the mean of the models.
    The 95% CI comes from `bootstrap` refits on comparisons resampled with replacement (a
    model missing from a resample is left out of that replicate); the same seed gives the same
    result. Comparisons of a model with itself carry no information and are ignored.
    Rows are sorted best first.
    """
    if l2 <= 0:
        raise ValueError("l2 must be positive")
    rows = [(str(ma), str(mb), float(o)) for ma, mb, o in comparisons if ma != mb]
    for _ma, _mb, o in rows:
        if not 0.0 <= o <= 1.0 or math.isnan(o):
            raise ValueError(f"outcome {o!r} is not in [0, 1]")
    models = sorted({m for ma, mb, _ in rows for m in (ma, mb)})
    if not models:
        return []
    index = {m: i for i, m in enumerate(models)}
    k = len(models)
    a = np.array([index[ma] for ma, _, _ in rows], dtype=np.int64)
    b = np.array([index[mb] for _, mb, _ in rows], dtype=np.int64)
    y = np.array([o for _, _, o in rows], dtype=float)
    theta, _ = _bt_fit(a, b, y, np.ones(len(rows)), k, l2)
    rating = ELO_ANCHOR + ELO_SCALE * (theta - theta.mean())

    low = high = None
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        samples = np.full((bootstrap, k), np.nan)
        n = len(rows)
        for r in range(bootstrap):
            weights = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(float)
            th, played = _bt_fit(a, b, y, weights, k, l2)
            present = played > 0
            samples[r, present] = ELO_ANCHOR + ELO_SCALE * (th[present] - th[present].mean())
        low = np.nanpercentile(samples, 2.5, axis=0)
        high = np.nanpercentile(samples, 97.5, axis=0)

    wins = Counter[str]()
    losses = Counter[str]()
    ties = Counter[str]()
    for ma, mb, o in rows:
        if o > 0.5:
            wins[ma] += 1
            losses[mb] += 1
        elif o < 0.5:
            wins[mb] += 1
            losses[ma] += 1
        else:
            ties[ma] += 1
            ties[mb] += 1
    order = sorted(range(k), key=lambda i: (-rating[i], models[i]))
    out: list[LeaderboardRow] = []
    for pos, i in enumerate(order):
        rank = out[-1].rank if out and math.isclose(out[-1].rating, rating[i], abs_tol=1e-9) else pos + 1
        m = models[i]
        out.append(
            LeaderboardRow(
                model=m,
                rating=float(rating[i]),
                ci_low=None if low is None else float(low[i]),
                ci_high=None if high is None else float(high[i]),
                wins=wins[m],
                losses=losses[m],
                ties=ties[m],
                n=wins[m] + losses[m] + ties[m],
                rank=rank,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Drift over time
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgreementPoint:
    """Agreement in one time bucket: `bucket` is "2025-03-14" (day) or "2025-W11" (ISO week),
    `start` the bucket's first day (the Monday for weeks)."""

    bucket: str
    start: date
    agreed: int
    n: int
    share: float


def agreement_over_time(
    records: Iterable[tuple[datetime | date, Hashable, bool]],
    bucket: Literal["day", "week"] = "day",
) -> dict[Hashable, list[AgreementPoint]]:
    """Per key (annotator, labeler, project ...) and per day or ISO week, the share of `agreed`.

    `records` are `(timestamp, key, agreed)`; an aware datetime is bucketed by its own local
    date, so convert to the display time zone first. Buckets with no records are left out;
    each key's points are in time order.
    """
    if bucket not in ("day", "week"):
        raise ValueError(f"unknown bucket {bucket!r}")
    tallies: dict[Hashable, dict[date, list[int]]] = defaultdict(dict)
    for ts, key, agreed in records:
        day = ts.date() if isinstance(ts, datetime) else ts
        start = day - timedelta(days=day.weekday()) if bucket == "week" else day
        tally = tallies[key].setdefault(start, [0, 0])
        tally[0] += int(bool(agreed))
        tally[1] += 1
    out: dict[Hashable, list[AgreementPoint]] = {}
    for key, per in tallies.items():
        points = []
        for start in sorted(per):
            agreed_n, n = per[start]
            if bucket == "week":
                year, week, _ = start.isocalendar()
                label = f"{year}-W{week:02d}"
            else:
                label = start.isoformat()
            points.append(AgreementPoint(bucket=label, start=start, agreed=agreed_n, n=n, share=agreed_n / n))
        out[key] = points
    return out
