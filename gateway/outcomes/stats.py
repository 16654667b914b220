"""Intervals and tests for comparing versions, from counts and sums the database aggregated.

Everything takes sufficient statistics (counts, sums, sums of squares), never rows, so the
comparison costs the same for a thousand outcomes or a hundred million.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion: sane at 0, 1 and small n, unlike the Wald one."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z_test(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float] | None:
    """Difference p1 - p2 and the two-sided p-value of the pooled two-proportion z-test."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = s1 / n1, s2 / n2
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return p1 - p2, 1.0
    z = (p1 - p2) / se
    return p1 - p2, float(2 * stats.norm.sf(abs(z)))


@dataclass(frozen=True)
class MeanSummary:
    n: int
    mean: float
    variance: float  # sample variance (n - 1)


def summarise(n: int, total: float, total_sq: float) -> MeanSummary | None:
    if n <= 0:
        return None
    mean = total / n
    variance = max(0.0, (total_sq - n * mean * mean) / (n - 1)) if n > 1 else 0.0
    return MeanSummary(n, mean, variance)


def mean_interval(summary: MeanSummary) -> tuple[float, float] | None:
    """Student-t 95% interval for a mean."""
    if summary.n < 2:
        return None
    half = stats.t.ppf(0.975, summary.n - 1) * math.sqrt(summary.variance / summary.n)
    return summary.mean - half, summary.mean + half


def welch_t_test(a: MeanSummary, b: MeanSummary) -> tuple[float, float] | None:
    """Difference of means a - b and the two-sided Welch t-test p-value."""
    if a.n < 2 or b.n < 2:
        return None
    va, vb = a.variance / a.n, b.variance / b.n
    if va + vb == 0:
        return a.mean - b.mean, 1.0 if a.mean == b.mean else 0.0
    t = (a.mean - b.mean) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (a.n - 1) + vb * vb / (b.n - 1))
    return a.mean - b.mean, float(2 * stats.t.sf(abs(t), df))
