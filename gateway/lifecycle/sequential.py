"""Always-valid confidence sequences: intervals a controller may look at after every outcome.

A rollout controller looks at the outcome log every few seconds and may act on any look. A
fixed-sample test (z-test, Welch) checked that often is wrong far more often than its alpha
says: with enough looks, some look crosses by chance. What stays valid is a *confidence
sequence*, an interval that covers the true value at every look at once with probability at
least 1 - alpha.

We use Robbins' normal-mixture boundary. For an estimate whose variance is 1/I (I is the
"information", growing as samples arrive), the score S = estimate * I behaves like Brownian
motion with drift delta in information time, and mixing the likelihood ratio over
delta ~ N(delta0, tau2) gives a nonnegative martingale under delta = delta0. By Ville's
inequality it ever exceeds 1/alpha with probability at most alpha; inverting that gives

    |estimate - delta| < sqrt((1 + tau2*I) * (2*log(1/alpha) + log(1 + tau2*I)) / (tau2*I**2))

at every I simultaneously. The guarantee is exact for Gaussian data and asymptotic (via the
central limit theorem) for the proportions and rewards here, as in Waudby-Smith et al., "Time-
uniform central limit theory and asymptotic confidence sequences" (2021); Johari et al.,
"Always valid inference" (2017) call the test form mSPRT. The tests of this module measure the
error rate by simulation rather than take it on faith.

tau2 only trades width early against width late; any value fixed before the data is valid.
`tau2_for` picks the one that makes the boundary tightest at the planned sample size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Arm:
    """Sufficient statistics of one arm: n observations, their mean and sample variance."""

    n: int
    mean: float
    variance: float

    @classmethod
    def proportion(cls, successes: int, n: int) -> Arm:
        """A Bernoulli arm. The variance uses (s + 0.5) / (n + 1), so an arm at 0% or 100% so
        far still has some uncertainty instead of a zero-width interval."""
        smoothed = (successes + 0.5) / (n + 1)
        return cls(n, successes / n if n else 0.0, smoothed * (1 - smoothed))

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> Arm:
        if n <= 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        variance = max(0.0, (total_sq - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, variance)


@dataclass(frozen=True)
class Interval:
    estimate: float
    lower: float
    upper: float

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "lower": self.lower, "upper": self.upper}


VARIANCE_FLOOR = 1e-12
# Below this many observations per arm a plug-in variance can be far too small (two rewards
# that happen to be close), and the asymptotic interval with it; the simulation in
# tests/test_rollout_decisions.py measured 6.7% false rollbacks for rewards at alpha 0.05
# without this minimum, under 5% with it.
MIN_ARM_SAMPLES = 30


def half_width(information: float, tau2: float, alpha: float) -> float:
    """The normal-mixture boundary's half-width at this information (see the module doc)."""
    if information <= 0 or not math.isfinite(information):
        return math.inf if information <= 0 else 0.0
    ti = tau2 * information
    return math.sqrt((1 + ti) * (2 * math.log(1 / alpha) + math.log1p(ti))
                     / (tau2 * information * information))


def tau2_for(planned_information: float, alpha: float) -> float:
    """The mixing variance whose boundary is narrowest at `planned_information`: the minimum of
    (1 + x)(2 log(1/alpha) + log(1 + x)) / x lies near x = 2 log(1/alpha) + log(1 + 2 log(1/alpha))
    with x = tau2 * I."""
    two_l = 2 * math.log(1 / alpha)
    return (two_l + math.log1p(two_l)) / planned_information


def difference(candidate: Arm, baseline: Arm, tau2: float, alpha: float) -> Interval | None:
    """Confidence sequence for candidate mean minus baseline mean (two independent arms); None
    until both have MIN_ARM_SAMPLES observations."""
    if candidate.n < MIN_ARM_SAMPLES or baseline.n < MIN_ARM_SAMPLES:
        return None
    variance = max(candidate.variance / candidate.n + baseline.variance / baseline.n,
                   VARIANCE_FLOOR)
    estimate = candidate.mean - baseline.mean
    half = half_width(1 / variance, tau2, alpha)
    return Interval(estimate, estimate - half, estimate + half)


def one_arm(arm: Arm, tau2: float, alpha: float) -> Interval | None:
    """Confidence sequence for one arm's mean (the candidate's error rate)."""
    if arm.n < 1:
        return None
    half = half_width(arm.n / max(arm.variance, VARIANCE_FLOOR), tau2, alpha)
    return Interval(arm.mean, arm.mean - half, arm.mean + half)
