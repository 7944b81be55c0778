"""Statistics the reward-model side needs and curation shares (it sits below curation)."""

from __future__ import annotations

import math

import numpy as np


def binomial_test(successes: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test p-value (outcomes no more likely than the observed one).

    Same definition as `scipy.stats.binomtest(...).pvalue`; computed in log space so it stays
    exact for large n. Returns 1.0 for n == 0.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError("need 0 <= successes <= n")
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    if n == 0:
        return 1.0
    k = np.arange(n + 1)
    logpmf = (
        math.lgamma(n + 1)
        - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in range(n + 1)])
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    observed = logpmf[successes]
    mask = logpmf <= observed + 1e-7 * max(1.0, abs(observed))  # relative tolerance, as scipy
    top = float(logpmf[mask].max())
    total = top + math.log(float(np.exp(logpmf[mask] - top).sum()))
    return float(min(1.0, math.exp(total)))


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (95% by default); None when n == 0."""
    if n <= 0:
        return None
    phat = successes / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
