"""Accuracies as exact fractions, and their confidence intervals."""
from __future__ import annotations

import math
from typing import Any, Tuple


def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (Wilson 1927).

    Matches ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method="wilson")``.
    """
    if n <= 0:
        return (0.0, 1.0)
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - confidence) / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def fraction(mask: Any) -> float:
    """``k / n`` of a boolean tensor as an exact Python float (0.0 when empty).

    ``mask.float().mean()`` rounds to float32 (40/48 becomes 0.83333331), so the same
    accuracy computed two ways would disagree in tables and checks.
    """
    n = mask.numel()
    return int(mask.sum()) / n if n else 0.0
