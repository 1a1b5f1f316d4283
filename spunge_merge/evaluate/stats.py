"""Rates with honest error bars: a toxicity percentage of 20 generations means little without one.

The Wilson score interval is used because, unlike the normal approximation, it stays inside
[0, 1] and keeps sensible coverage at small n and at rates near 0 % or 100 %, which is where
unlearned models land.
"""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion, as fractions in [0, 1]."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate_summary(successes: int, n: int) -> dict:
    """`{n, toxic, pct, ci95: [low, high]}` in percent, rounded for reading (raw counts kept)."""
    low, high = wilson_interval(successes, n)
    return {
        "n": n,
        "toxic": successes,
        "pct": round(100.0 * successes / n, 4) if n else None,
        "ci95": [round(100.0 * low, 4), round(100.0 * high, 4)],
    }
