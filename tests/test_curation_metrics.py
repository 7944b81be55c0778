"""Agreement, bias, consensus and leaderboard metrics (pure functions: no database)."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from datetime import UTC, date, datetime

import numpy as np
import pytest

from curation.consensus import (
    PAIRWISE_LABELS,
    Consensus,
    consensus_of_counts,
    dawid_skene,
    midranks,
    pairwise_consensus,
    ranking_consensus,
    rubric_consensus,
    weighted_consensus,
)
from curation.metrics import (
    agreement_over_time,
    annotator_vs_consensus,
    binomial_test,
    bradley_terry,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    label_distribution,
    length_bias,
    pairwise_agreement,
    position_bias,
    unit_agreement,
    units_from_coders,
    wilson_interval,
)

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 coders x 12 units.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


# --- Krippendorff's alpha ---------------------------------------------------------------------


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_alpha_matches_the_published_example(level: str, expected: float) -> None:
    units = units_from_coders(KRIPPENDORFF_2011)
    assert len(units) == 12 and units[0] == [1, 1, N, 1]
    assert krippendorff_alpha(units, level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_nominal_by_hand() -> None:
    # Coincidences: unit 1 gives o[a,a] = 2, unit 2 gives o[a,b] = o[b,a] = 1; n = 4, n_a = 3, n_b = 1.
    # alpha = 1 - (n - 1) * 2 / (2 * n_a * n_b) = 1 - 3 * 2 / 6 = 0.
    assert krippendorff_alpha([["a", "a"], ["a", "b"]], "nominal") == pytest.approx(0.0)
    assert krippendorff_alpha([["a", "a"], ["b", "b", None]], "nominal") == pytest.approx(1.0)


def test_krippendorff_alpha_is_none_when_undefined() -> None:
    assert krippendorff_alpha([], "nominal") is None
    assert krippendorff_alpha([[1, None], [2], [None, None]], "interval") is None  # nothing pairable
    assert krippendorff_alpha([[3, 3], [3, 3, 3], [1]], "ordinal") is None  # no variation among pairable values
    assert krippendorff_alpha([[1.0, math.nan], [2.0, math.nan]], "interval") is None  # NaN is missing too


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_krippendorff_alpha_agrees_with_the_reference_package(level: str) -> None:
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(60):
        coders, n_units = int(rng.integers(2, 7)), int(rng.integers(3, 40))
        matrix = rng.integers(1, 7, size=(coders, n_units)).astype(float)
        matrix[rng.random(matrix.shape) < 0.3] = np.nan
        if rng.random() < 0.3:  # non-integer, unevenly spaced values
            matrix = np.where(np.isnan(matrix), np.nan, matrix**1.5 / 3)
        units = units_from_coders([[None if np.isnan(v) else float(v) for v in row] for row in matrix])
        mine = krippendorff_alpha(units, level)
        try:
            reference = krippendorff.alpha(reliability_data=matrix, level_of_measurement=level)
        except ValueError:  # the package refuses what we call undefined
            assert mine is None
            continue
        assert mine is not None
        assert mine == pytest.approx(reference, abs=1e-9)
        checked += 1
    assert checked > 50


def test_units_from_coders_refuses_ragged_rows() -> None:
    with pytest.raises(ValueError, match="one value per unit"):
        units_from_coders([[1, 2], [1]])


# --- kappas and percent agreement -------------------------------------------------------------

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories (counts per category).
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_matches_the_textbook_example() -> None:
    cats = ["c1", "c2", "c3", "c4", "c5"]
    units = [[c for c, k in zip(cats, row, strict=True) for _ in range(k)] for row in FLEISS_TABLE]
    assert fleiss_kappa(units, cats) == pytest.approx(0.20993, abs=1e-5)
    assert round(fleiss_kappa(units), 3) == 0.210  # categories inferred


def test_fleiss_kappa_edge_cases() -> None:
    assert fleiss_kappa([["A", "A"], ["A", "A", "A"]]) is None  # one category only: chance agreement is 1
    assert fleiss_kappa([["A"], []]) is None
    assert fleiss_kappa([["A", "A"], ["B", "B"], ["A", None, "A"]]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not one of"):
        fleiss_kappa([["A", "C"]], ["A", "B"])


def test_cohen_kappa_by_hand() -> None:
    # 50 items: both yes 20, a yes/b no 5, a no/b yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4.
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa([*a, None, "y"], [*b, "y", None]) == pytest.approx(0.4)  # pairs with a None skipped
    assert cohen_kappa(["y", "y"], ["y", "y"]) is None
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="same length"):
        cohen_kappa(["y"], [])


def test_percent_agreement_counts_rater_pairs() -> None:
    units = [["A", "A", "B"], ["A", "A"], ["B"], ["tie", None, "tie"]]
    # pairs: 1 of 3, 1 of 1, none, 1 of 1 -> 3 / 5
    assert pairwise_agreement(units) == pytest.approx(0.6)
    assert unit_agreement(["A", "A", "B"]) == pytest.approx(1 / 3)
    assert unit_agreement(["A", None]) is None
    assert pairwise_agreement([["A"], []]) is None


def test_annotator_vs_consensus_leaves_the_annotator_out() -> None:
    labels = [
        ("i1", "ann", "A"), ("i1", "bob", "A"), ("i1", "cat", "A"),  # all agree
        ("i2", "ann", "B"), ("i2", "bob", "A"), ("i2", "cat", "A"),  # ann disagrees with the others
        ("i3", "ann", "A"), ("i3", "bob", "B"),  # others of each: one label each, no tie
        ("i4", "ann", "A"), ("i4", "bob", "A"), ("i4", "cat", "B"),  # ann: others tied A/B -> skipped
        ("i5", "ann", "A"),  # nobody else
    ]  # fmt: skip
    out = annotator_vs_consensus(labels)
    assert out["ann"] == (1, 3)  # i1 agrees; i2 and i3 disagree; i4 others tied A/B; i5 nobody else
    assert out["bob"] == (1, 2)  # i1 agrees; i3 disagrees; on i2 and i4 the others are tied
    assert out["cat"] == (1, 2)  # i1 agrees; i4 disagrees (ann and bob say A); on i2 the others are tied
    assert annotator_vs_consensus([]) == {}


def test_label_distribution() -> None:
    labels = ["A", "B", "A", None, "tie", "A"]
    assert label_distribution(labels) == {"A": 3, "B": 1, "tie": 1}
    assert list(label_distribution(labels, ["tie", "B", "A", "X"]).items()) == [
        ("tie", 1),
        ("B", 1),
        ("A", 3),
        ("X", 0),
    ]


# --- bias tests --------------------------------------------------------------------------------


def test_binomial_test_is_exact() -> None:
    assert binomial_test(3, 10) == pytest.approx(0.34375)  # 2 * (1 + 10 + 45 + 120) / 1024
    assert binomial_test(0, 5) == pytest.approx(0.0625)
    assert binomial_test(5, 10) == pytest.approx(1.0)
    assert binomial_test(0, 0) == 1.0
    stats = pytest.importorskip("scipy.stats")  # not a dependency; a cross-check where it happens to be installed
    for k, n, p in [(60, 100, 0.5), (7, 20, 0.3), (5000, 9800, 0.5), (1, 40, 0.1)]:
        assert binomial_test(k, n, p) == pytest.approx(stats.binomtest(k, n, p).pvalue, rel=1e-9)


def test_position_bias_counts_wins_of_the_first_shown_response() -> None:
    result = position_bias(["A"] * 60 + ["B"] * 40 + ["tie"] * 7)
    assert (result.hits, result.n, result.share) == (60, 100, 0.6)
    assert result.p_value == pytest.approx(0.0568879, abs=1e-6)
    empty = position_bias(["tie"])
    assert (empty.n, empty.share, empty.p_value) == (0, None, 1.0)
    with pytest.raises(ValueError, match="unknown pairwise choice"):
        position_bias(["left"])


def test_length_bias_counts_wins_of_the_longer_response() -> None:
    records = [(10, 5, "A"), (3, 9, "B"), (8, 2, "B"), (4, 4, "A"), (1, 2, "tie")]
    result = length_bias(records)
    assert (result.hits, result.n) == (2, 3)  # equal lengths and ties left out
    assert result.p_value == pytest.approx(1.0)
    assert length_bias([(100, 10, "A")] * 12).p_value == pytest.approx(2 / 4096)


def test_wilson_interval() -> None:
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) is None


# --- pairwise / ranking / rubric consensus -------------------------------------------------------


def test_pairwise_consensus() -> None:
    assert pairwise_consensus([("A", 2), ("A", 1), ("B", 1)]) == Consensus("A", 1.5, pytest.approx(2 / 3), 3, False)
    split = pairwise_consensus([("A", 2), ("B", 1)])
    assert (split.label, split.tied, split.agreement, split.strength) == (None, True, 0.5, 0.0)
    with_tie = pairwise_consensus([("tie", 0), ("B", 2)])
    assert (with_tie.label, with_tie.tied, with_tie.strength) == ("tie", True, 0.0)
    assert pairwise_consensus([]) == Consensus(None, 0.0, 0.0, 0, False)
    weighted = pairwise_consensus([("A", 1), ("B", 2), ("B", 1)], weights=[3.0, 1.0, 1.0])
    assert (weighted.label, weighted.agreement, weighted.strength) == ("A", 0.6, 1.0)
    strong = pairwise_consensus([("B", 2), ("B", 1), ("A", 1)], weights=[3.0, 1.0, 1.0])
    assert strong.strength == pytest.approx((3 * 2 + 1) / 4)  # weighted mean strength of the B votes
    with pytest.raises(ValueError, match="unknown pairwise choice"):
        pairwise_consensus([("C", 1)])
    with pytest.raises(ValueError, match="weights"):
        pairwise_consensus([("A", 1)], weights=[-1.0])


def test_counts_give_the_consensus_of_the_votes() -> None:
    rng = random.Random(3)
    vote_sets = [
        [(rng.choice(PAIRWISE_LABELS), rng.randint(0, 3)) for _ in range(rng.randint(0, 9))] for _ in range(3000)
    ]
    counts = np.zeros((len(vote_sets), 3), dtype=np.int64)
    sums = np.zeros((len(vote_sets), 3), dtype=np.int64)
    for i, votes in enumerate(vote_sets):
        for choice, strength in votes:
            counts[i, PAIRWISE_LABELS.index(choice)] += 1
            sums[i, PAIRWISE_LABELS.index(choice)] += strength
    found = consensus_of_counts(counts, sums)
    assert [found.at(i) for i in range(len(vote_sets))] == [pairwise_consensus(v) for v in vote_sets]
    assert {found.at(i).label for i in range(len(vote_sets))} == {"A", "B", "tie", None}


def test_weighted_consensus_uses_reliability() -> None:
    votes = [("good", "A", 2), ("bad1", "B", 1), ("bad2", "B", 1)]
    assert weighted_consensus(votes, {"good": 0.9, "bad1": 0.2, "bad2": 0.3}).label == "A"
    assert weighted_consensus(votes, {}).label == "B"  # unknown annotators weigh the same
    assert weighted_consensus(votes, {"good": 0.9}).label == "B"  # the others get the mean (0.9) as well


def test_ranking_consensus_and_kendalls_w() -> None:
    mean, w = ranking_consensus([[1, 2, 3], [1, 3, 2], [2, 1, 3]])
    assert mean == pytest.approx([4 / 3, 2, 8 / 3])
    assert w == pytest.approx(12 * 8 / (9 * 24))  # rank sums 4, 6, 8: S = 8
    assert ranking_consensus([[2, 1, 3], [2, 1, 3]])[1] == pytest.approx(1.0)
    assert ranking_consensus([[1, 2], [2, 1]])[1] == pytest.approx(0.0)
    assert ranking_consensus([[3, 1, 2]]) == ([3.0, 1.0, 2.0], 1.0)
    assert ranking_consensus([]) == ([], 0.0)
    # ties: [1, 1, 3] -> midranks [1.5, 1.5, 3]; rank sums 2.5, 3.5, 6; S = 6.5; T = 2^3 - 2 = 6
    assert ranking_consensus([[1, 1, 3], [1, 2, 3]])[1] == pytest.approx(12 * 6.5 / (4 * 24 - 2 * 6))
    assert midranks([1, 1, 2]) == [1.5, 1.5, 3.0]
    with pytest.raises(ValueError, match="same number"):
        ranking_consensus([[1, 2], [1, 2, 3]])


def test_rubric_consensus_averages_over_the_raters_of_each_aspect() -> None:
    ratings = [{"helpfulness": 4, "correctness": 5}, {"helpfulness": 2}, {"correctness": 3, "style": 1}]
    assert rubric_consensus(ratings) == {"helpfulness": 3.0, "correctness": 4.0, "style": 1.0}
    assert rubric_consensus([]) == {}


# --- Dawid-Skene ---------------------------------------------------------------------------------


def _synthetic_labels(seed: int) -> tuple[list[tuple[int, str, str]], dict[int, str]]:
    """300 items, 5 annotators: four honest ones (80..65% accurate), one who swaps A and B."""
    rng = np.random.default_rng(seed)
    classes = ["A", "B", "tie"]
    truth = {i: classes[int(c)] for i, c in enumerate(rng.choice(3, size=300, p=[0.45, 0.45, 0.1]))}
    labels: list[tuple[int, str, str]] = []
    for item, true in truth.items():
        for annotator, accuracy in [("h1", 0.8), ("h2", 0.75), ("h3", 0.7), ("h4", 0.65)]:
            given = true if rng.random() < accuracy else str(rng.choice([c for c in classes if c != true]))
            labels.append((item, annotator, given))
        adversarial = {"A": "B", "B": "A", "tie": "A"}[true] if rng.random() < 0.9 else str(rng.choice(classes))
        labels.append((item, "adv", adversarial))
    return labels, truth


def test_dawid_skene_beats_majority_vote_with_an_adversarial_annotator() -> None:
    labels, truth = _synthetic_labels(seed=3)
    result = dawid_skene(labels, ["A", "B", "tie"], iterations=200)
    votes: dict[int, list[str]] = defaultdict(list)
    for item, _annotator, label in labels:
        votes[item].append(label)
    majority = {item: Counter(v).most_common(1)[0][0] for item, v in votes.items()}
    ds_accuracy = np.mean([result.labels[i] == t for i, t in truth.items()])
    mv_accuracy = np.mean([majority[i] == t for i, t in truth.items()])
    assert ds_accuracy > mv_accuracy + 0.05
    assert ds_accuracy > 0.9
    assert result.converged and result.iterations < 200
    assert min(result.reliability, key=result.reliability.get) == "adv"
    assert result.reliability["adv"] < 0.1
    assert result.reliability["h1"] == pytest.approx(0.8, abs=0.06)
    assert result.reliability["h1"] > result.reliability["h4"]
    # the adversary's confusion matrix puts true A on given B
    assert result.confusion["adv"][0][1] > 0.8
    for posterior in result.posteriors.values():
        assert sum(posterior.values()) == pytest.approx(1.0)
    assert sum(result.priors.values()) == pytest.approx(1.0)


def test_dawid_skene_is_finite_on_sparse_data_and_deterministic() -> None:
    labels = [(f"i{k}", ann, "AB"[k % 2]) for k in range(6) for ann in ("a", "b")]
    labels += [("solo-a", "a", "B"), ("solo-l", "lonely", "A"), ("solo-t", "lonely2", "tie")]
    first = dawid_skene(labels, ["A", "B", "tie"])
    assert first == dawid_skene(labels, ["A", "B", "tie"])
    values = [p for post in first.posteriors.values() for p in post.values()]
    values += [x for m in first.confusion.values() for row in m for x in row] + list(first.reliability.values())
    assert all(math.isfinite(x) for x in values)
    for matrix in first.confusion.values():
        assert all(sum(row) == pytest.approx(1.0) for row in matrix)
    # a single-annotator item keeps the label of a reliable annotator, and of an unknown one
    # (the diagonal pseudo-counts); the textbook estimator lets the class prior overrule the latter
    assert (first.labels["solo-a"], first.labels["solo-l"]) == ("B", "A")
    assert dawid_skene(labels, ["A", "B", "tie"], diagonal=0).labels["solo-l"] == "B"
    assert first.reliability["a"] > 0.95
    empty = dawid_skene([], ["A", "B"])
    assert (empty.labels, empty.iterations) == ({}, 0)
    with pytest.raises(ValueError, match="not one of"):
        dawid_skene([("i", "a", "C")], ["A", "B"])


# --- Bradley-Terry -------------------------------------------------------------------------------

STRENGTHS = {"alpha": 1.5, "bravo": 1.0, "charlie": 0.5, "delta": 0.0, "echo": -0.7}
MEAN_STRENGTH = sum(STRENGTHS.values()) / len(STRENGTHS)
TRUE_RATING = {m: 1000 + 400 / math.log(10) * (s - MEAN_STRENGTH) for m, s in STRENGTHS.items()}


def _comparisons(seed: int, n: int = 2000, tie_rate: float = 0.0) -> list[tuple[str, str, float]]:
    """Bradley-Terry games between the models of STRENGTHS; with `tie_rate`, some become ties."""
    rng = np.random.default_rng(seed)
    names = list(STRENGTHS)
    out = []
    for _ in range(n):
        i, j = rng.choice(len(names), size=2, replace=False)
        a, b = names[int(i)], names[int(j)]
        p_a = 1 / (1 + math.exp(STRENGTHS[b] - STRENGTHS[a]))
        outcome = 1.0 if rng.random() < p_a else 0.0
        out.append((a, b, 0.5 if rng.random() < tie_rate else outcome))
    return out


def test_bradley_terry_recovers_known_strengths() -> None:
    rows = bradley_terry(_comparisons(seed=11, tie_rate=0.05), bootstrap=200, seed=1)
    assert [r.model for r in rows] == ["alpha", "bravo", "charlie", "delta", "echo"]
    assert [r.rank for r in rows] == [1, 2, 3, 4, 5]
    assert sum(r.rating for r in rows) / len(rows) == pytest.approx(1000.0)
    for row in rows:
        assert row.ci_low < row.rating < row.ci_high
        assert row.rating == pytest.approx(TRUE_RATING[row.model], abs=40)
        assert row.wins + row.losses + row.ties == row.n
    assert sum(r.ties for r in rows) > 0


def test_bradley_terry_confidence_intervals_cover_the_true_ratings() -> None:
    covered = total = 0
    for seed in range(8):
        for row in bradley_terry(_comparisons(seed=100 + seed, n=1500), bootstrap=200, seed=seed):
            covered += row.ci_low <= TRUE_RATING[row.model] <= row.ci_high
            total += 1
    assert covered / total >= 0.85  # nominal 95%; 40 intervals


def test_bradley_terry_is_deterministic_and_finite_for_an_unbeaten_model() -> None:
    games = _comparisons(seed=2, n=300)
    first = bradley_terry(games, bootstrap=50, seed=4)
    assert first == bradley_terry(games, bootstrap=50, seed=4)
    other = bradley_terry(games, bootstrap=50, seed=5)
    assert [r.rating for r in other] == [r.rating for r in first]  # the point estimate needs no randomness
    assert [r.ci_low for r in other] != [r.ci_low for r in first]

    unbeaten = bradley_terry([("x", "y", 1.0)] * 5 + [("y", "z", 1.0)] * 3 + [("z", "z", 1.0)], bootstrap=50)
    assert [r.model for r in unbeaten] == ["x", "y", "z"]
    assert all(math.isfinite(v) for r in unbeaten for v in (r.rating, r.ci_low, r.ci_high))
    assert (unbeaten[0].wins, unbeaten[0].losses, unbeaten[2].n) == (5, 0, 3)  # the self-comparison is ignored
    no_ci = bradley_terry([("p", "q", 0.5)], bootstrap=0)
    assert [(r.rating, r.rank, r.ci_low, r.ties) for r in no_ci] == [(1000.0, 1, None, 1), (1000.0, 1, None, 1)]
    assert bradley_terry([]) == []
    with pytest.raises(ValueError, match="not in"):
        bradley_terry([("p", "q", 2.0)])


# --- drift -----------------------------------------------------------------------------------


def test_agreement_over_time_by_day_and_iso_week() -> None:
    records = [
        (datetime(2025, 3, 10, 9, tzinfo=UTC), "ann", True),  # Monday, ISO week 11
        (datetime(2025, 3, 10, 17, tzinfo=UTC), "ann", False),
        (date(2025, 3, 16), "ann", True),  # Sunday, still week 11
        (datetime(2025, 3, 17, 8, tzinfo=UTC), "ann", True),  # week 12
        (datetime(2025, 3, 12, 8, tzinfo=UTC), "bob", False),
    ]
    daily = agreement_over_time(records, "day")
    assert [(p.bucket, p.agreed, p.n, p.share) for p in daily["ann"]] == [
        ("2025-03-10", 1, 2, 0.5),
        ("2025-03-16", 1, 1, 1.0),
        ("2025-03-17", 1, 1, 1.0),
    ]
    weekly = agreement_over_time(records, "week")
    assert [(p.bucket, p.start, p.agreed, p.n) for p in weekly["ann"]] == [
        ("2025-W11", date(2025, 3, 10), 2, 3),
        ("2025-W12", date(2025, 3, 17), 1, 1),
    ]
    assert [(p.bucket, p.share) for p in weekly["bob"]] == [("2025-W11", 0.0)]
    with pytest.raises(ValueError, match="unknown bucket"):
        agreement_over_time(records, "month")  # type: ignore[arg-type]
