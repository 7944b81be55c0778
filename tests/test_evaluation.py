"""Held-out metrics count what they say: equal scores are a coin flip, and the length baselines are
measured on the same pairs as the model."""

from __future__ import annotations

from models_srv.data import Examples, PairExample
from models_srv.evaluation import evaluate


def test_equal_scores_count_half_and_baselines_use_the_same_pairs() -> None:
    pairs = [
        PairExample(1, "p", "short", "a longer answer", 1),  # model right, shorter right
        PairExample(2, "p", "same", "same", 1),  # identical responses: equal scores, equal lengths
        PairExample(3, "p", "a longer answer", "tiny", 1),  # model wrong, shorter wrong
        PairExample(4, "p", "tie a", "tie b", 0, tie=True),  # ties are left out, and counted
    ]
    score = {("p", "short"): 2.0, ("p", "a longer answer"): 1.0, ("p", "same"): 0.5, ("p", "tiny"): 3.0}
    score |= {("p", "tie a"): 0.0, ("p", "tie b"): 0.0}
    m = evaluate(Examples(pairs=pairs), score, {})["pairwise"]
    assert m["n"] == 3 and m["ties_excluded"] == 1
    assert m["accuracy"] == round(1.5 / 3, 4)  # 1 + 0.5 + 0, not 1 of 3
    assert m["baseline_prefer_shorter"] == round(1.5 / 3, 4)  # on all three pairs, equal lengths half
    assert m["baseline_prefer_longer"] == round(1.5 / 3, 4)
