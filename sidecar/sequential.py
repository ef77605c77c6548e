"""Confidence sequences: intervals that stay valid however often they are looked at.

A rollout gate is checked again after every batch of records. A fixed-sample test checked that
often would, sooner or later, "find" a difference that is not there; a confidence sequence
covers the true value at every check at once, with probability 1 - alpha. We use the
asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas (2021,
"Time-uniform central limit theory and asymptotic confidence sequences"): an estimate plus or
minus its standard error times a boundary that grows like sqrt(log n), tuned by `rho` to be
tightest near `n_opt` observations.

>>> iv = proportion_difference(success_a=450, n_a=500, success_b=800, n_b=1000)
>>> round(iv.estimate, 3), iv.lower < iv.estimate < iv.upper
(0.1, True)
>>> proportion_difference(0, 0, 5, 10).lower
-inf
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Interval",
    "boundary",
    "mean_difference",
    "proportion_difference",
    "proportion_interval",
]

DEFAULT_ALPHA = 0.05
DEFAULT_N_OPT = 500


@dataclass(frozen=True, slots=True)
class Interval:
    estimate: float
    lower: float
    upper: float
    n: float

    def as_dict(self) -> dict[str, float | None]:
        def clean(x: float) -> float | None:
            return round(x, 6) if math.isfinite(x) else None

        return {
            "estimate": clean(self.estimate),
            "lower": clean(self.lower),
            "upper": clean(self.upper),
            "n": self.n,
        }


def _rho2(alpha: float, n_opt: float) -> float:
    """The mixture precision that makes the boundary tightest at n_opt observations."""
    a = -2.0 * math.log(alpha)
    return (a + math.log(a + 1.0)) / n_opt


def boundary(n: float, alpha: float = DEFAULT_ALPHA, n_opt: float = DEFAULT_N_OPT) -> float:
    """Half-width, in standard deviations of one observation, of the two-sided sequence at n."""
    if n <= 0:
        return math.inf
    r2 = _rho2(alpha, n_opt)
    t = n * r2 + 1.0
    return math.sqrt(2.0 * t / (n * n * r2) * math.log(math.sqrt(t) / alpha))


def _shrunk(success: float, n: float) -> float:
    """A proportion pulled off 0 and 1, so that zero observed errors still has a variance."""
    return (success + 1.0) / (n + 2.0)


def proportion_interval(
    success: float, n: float, alpha: float = DEFAULT_ALPHA, n_opt: float = DEFAULT_N_OPT
) -> Interval:
    if n <= 0:
        return Interval(math.nan, -math.inf, math.inf, 0)
    p = success / n
    q = _shrunk(success, n)
    half = math.sqrt(q * (1 - q)) * boundary(n, alpha, n_opt)
    return Interval(p, p - half, p + half, n)


def proportion_difference(
    success_a: float,
    n_a: float,
    success_b: float,
    n_b: float,
    alpha: float = DEFAULT_ALPHA,
    n_opt: float = DEFAULT_N_OPT,
) -> Interval:
    """A - B for two independent streams of 0/1 outcomes (canary minus primary)."""
    if n_a <= 0 or n_b <= 0:
        return Interval(math.nan, -math.inf, math.inf, 0)
    qa, qb = _shrunk(success_a, n_a), _shrunk(success_b, n_b)
    variance = qa * (1 - qa) / n_a + qb * (1 - qb) / n_b
    pooled = (qa * (1 - qa) + qb * (1 - qb)) / 2
    # The number of observations of one pooled stream with the same standard error.
    n_eff = pooled / variance if variance > 0 else min(n_a, n_b)
    estimate = success_a / n_a - success_b / n_b
    half = math.sqrt(variance) * math.sqrt(n_eff) * boundary(n_eff, alpha, n_opt)
    return Interval(estimate, estimate - half, estimate + half, n_eff)


def mean_difference(
    mean_a: float,
    var_a: float,
    n_a: float,
    mean_b: float,
    var_b: float,
    n_b: float,
    alpha: float = DEFAULT_ALPHA,
    n_opt: float = DEFAULT_N_OPT,
) -> Interval:
    """A - B for two independent streams of real values (e.g. absolute errors), by the CLT."""
    if n_a <= 1 or n_b <= 1:
        return Interval(math.nan, -math.inf, math.inf, 0)
    variance = max(var_a, 0.0) / n_a + max(var_b, 0.0) / n_b
    pooled = (max(var_a, 0.0) + max(var_b, 0.0)) / 2
    n_eff = pooled / variance if variance > 0 else min(n_a, n_b)
    estimate = mean_a - mean_b
    half = math.sqrt(variance) * math.sqrt(n_eff) * boundary(n_eff, alpha, n_opt)
    return Interval(estimate, estimate - half, estimate + half, n_eff)
