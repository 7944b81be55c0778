"""Yardsticks for model tests: a model's figure is judged against what guessing or a constant
would score on the same held-out data, so a test fails when the model has learned nothing."""

from __future__ import annotations

import math
import statistics


def above_chance(accuracy: float, n: int, chance: float = 0.5, z: float = 2.33) -> bool:
    """Whether `accuracy`, a mean over `n` independent units (pairs, or whole lists), is above
    `chance` by `z` standard errors of a guesser (one-sided, about 1% for z = 2.33). For a list's
    share of correctly ordered pairs the guesser's variance is at most chance * (1 - chance) too,
    so counting lists as the units is conservative."""
    return accuracy > chance + z * math.sqrt(chance * (1 - chance) / n)


def best_constant_mae(train: list[float], held_out: list[float]) -> float:
    """The mean absolute error on `held_out` of the better constant learned from `train`: its
    mean, or its median (the constant that minimizes absolute error)."""
    return min(
        sum(abs(y - c) for y in held_out) / len(held_out) for c in (statistics.mean(train), statistics.median(train))
    )
