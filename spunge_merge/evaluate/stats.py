"""Rates and differences with honest error bars: a toxicity percentage of 20 generations, or one
training seed's advantage, means little without one.

The Wilson score interval is used because, unlike the normal approximation, it stays inside
[0, 1] and keeps sensible coverage at small n and at rates near 0 % or 100 %, which is where
unlearned models land.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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


def hierarchical_bootstrap(
    diffs_by_seed: Sequence[Sequence[float] | Mapping[str, Sequence[float]]],
    *,
    n: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Mean of per-seed paired differences with a percentile interval that counts both sources of noise.

    A run's figure moves with its training seed *and* with the prompts it happened to be scored on;
    resampling only the prompts hides the first, averaging only the seeds hides the second. Each
    replicate draws the seeds with replacement, then, independently for every drawn seed, that seed's
    items (paired differences, one per prompt or fact) with replacement, and averages.

    `diffs_by_seed[i]` is seed i's differences: a flat sequence (the seed's value is their mean), or
    a mapping stratum → differences (each stratum resampled within itself; the seed's value is the
    unweighted mean of the stratum means, a macro average such as "accuracy averaged over domains").
    A seed with one item contributes a fixed value (a figure without per-item data).

    Reproducible for a fixed `seed`. With a single seed no seed draw is made, so the interval is the
    plain paired bootstrap `rng.integers(0, m, size=(n, m))` of numpy's `default_rng(seed)`.
    Returns `{mean, low, high, n_seeds, items, resamples, confidence, seed}`.
    """
    import numpy as np

    if not diffs_by_seed:
        raise ValueError("no seeds to bootstrap")
    if n < 1:
        raise ValueError(f"n={n}: need at least one resample")
    seeds = [_strata(entry, index) for index, entry in enumerate(diffs_by_seed)]
    values = np.array([np.mean([stratum.mean() for stratum in strata]) for strata in seeds])
    rng = np.random.default_rng(seed)
    k = len(seeds)
    replicate = _two_level(seeds, n, rng, _resampled_values)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicate, [tail, 100.0 - tail])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "n_seeds": k,
            "items": [int(sum(s.size for s in strata)) for strata in seeds], "resamples": n, "confidence": confidence,
            "seed": seed}


def _two_level(units: list, n: int, rng: Any, resample: Callable[[Any, int, Any], Any]) -> Any:
    """`n` replicates of the mean over units: the units resampled with replacement (unless there is one), and within
    each drawn unit `resample(unit, count, rng)` its own `count` replicate values (items resampled below the unit)."""
    import numpy as np

    k = len(units)
    if k == 1:
        return resample(units[0], n, rng)
    picks = rng.integers(0, k, size=(n, k))
    draws = np.zeros((n, k))
    for position in range(k):
        for index, unit in enumerate(units):
            rows = np.flatnonzero(picks[:, position] == index)
            if rows.size:
                draws[rows, position] = resample(unit, rows.size, rng)
    return draws.mean(axis=1)


def _strata(entry: Sequence[float] | Mapping[str, Sequence[float]], index: int) -> list:
    import numpy as np

    groups = list(entry.values()) if isinstance(entry, Mapping) else [entry]
    arrays = [np.asarray(group, dtype=float) for group in groups]
    if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError(f"seed {index}: every stratum needs at least one difference")
    return arrays


def _resampled_values(strata: list, count: int, rng) -> Any:
    """`count` bootstrap values of one seed: each stratum's items resampled, stratum means averaged."""
    import numpy as np

    total = np.zeros(count)
    for stratum in strata:
        if stratum.size == 1:
            total += stratum[0]
        else:
            total += stratum[rng.integers(0, stratum.size, size=(count, stratum.size))].mean(axis=1)
    return total / len(strata)


def worst_stratum_bootstrap(
    units: Sequence[Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    *,
    n: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Mean over units of (the highest stratum mean of arm A − the highest of arm B), with a percentile interval.

    The worst forgotten domain: per unit, each arm's least-forgotten domain (the highest held-out accuracy), which
    may be a different domain for each arm and in each resample. `units[i]` is {stratum: (A's items, B's items)},
    the same items in the same order for both arms (paired). Each replicate draws the units with replacement, then,
    for every drawn unit and stratum, one set of item indices with replacement, used for both arms; the maxima are
    recomputed on every resample, so the interval covers which domain is worst, not only how bad it is.
    Reproducible for a fixed `seed`; one unit: no unit draw. Returns `{mean, low, high, n_seeds, resamples,
    confidence, seed}` (`n_seeds`: units, as `hierarchical_bootstrap` counts them)."""
    import numpy as np

    if not units:
        raise ValueError("no units to bootstrap")
    if n < 1:
        raise ValueError(f"n={n}: need at least one resample")
    paired = []
    for index, unit in enumerate(units):
        strata = [(np.asarray(a, dtype=float), np.asarray(b, dtype=float)) for a, b in unit.values()]
        if not strata or any(a.ndim != 1 or a.size == 0 or a.shape != b.shape for a, b in strata):
            raise ValueError(f"unit {index}: every stratum needs the same non-empty items for both arms")
        paired.append(strata)
    values = np.array([max(a.mean() for a, _ in s) - max(b.mean() for _, b in s) for s in paired])
    rng = np.random.default_rng(seed)
    k = len(paired)
    replicate = _two_level(paired, n, rng, _worst_values)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicate, [tail, 100.0 - tail])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "n_seeds": k, "resamples": n,
            "confidence": confidence, "seed": seed}


def _worst_values(strata: list, count: int, rng) -> Any:
    """`count` bootstrap values of one unit's worst-stratum difference: per stratum one index draw for both arms."""
    import numpy as np

    best_a, best_b = np.full(count, -np.inf), np.full(count, -np.inf)
    for a, b in strata:
        picks = rng.integers(0, a.size, size=(count, a.size))
        best_a = np.maximum(best_a, a[picks].mean(axis=1))
        best_b = np.maximum(best_b, b[picks].mean(axis=1))
    return best_a - best_b


def relative_change_bootstrap(
    pairs: Sequence[tuple[Sequence[float], Sequence[float]]],
    *,
    n: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """100 × (A's mean / B's mean − 1), means over units of each unit's item mean, with a paired hierarchical interval.

    A relative figure ("30 % less toxic") is a ratio of means, not a mean of differences. `pairs[i]` is unit i's
    (A's items, B's items), the same items in the same order. The replicates of both arms come from two passes of
    the two-level draw from one seed, so every replicate draws the same units and the same items for A and B.
    Returns `{mean, low, high, n_seeds, resamples, confidence, seed}`; None bounds where B's replicate mean is 0."""
    import numpy as np

    if not pairs:
        raise ValueError("no units to bootstrap")
    if n < 1:
        raise ValueError(f"n={n}: need at least one resample")
    arms = []
    for side in (0, 1):
        units = [_strata(pair[side], index) for index, pair in enumerate(pairs)]
        arms.append((units, np.mean([unit[0].mean() for unit in units]),
                     _two_level(units, n, np.random.default_rng(seed), _resampled_values)))
    if any(a[0].shape != b[0].shape for a, b in zip(arms[0][0], arms[1][0], strict=True)):
        raise ValueError("both arms need the same items in every unit")
    (_, mean_a, rep_a), (_, mean_b, rep_b) = arms
    tail = 100.0 * (1.0 - confidence) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        replicate = 100.0 * (rep_a / rep_b - 1.0)
    finite = replicate[np.isfinite(replicate)]
    low, high = (np.percentile(finite, [tail, 100.0 - tail]) if finite.size == replicate.size else (None, None))
    return {"mean": float(100.0 * (mean_a / mean_b - 1.0)) if mean_b else None,
            "low": None if low is None else float(low), "high": None if high is None else float(high),
            "n_seeds": len(pairs), "resamples": n, "confidence": confidence, "seed": seed}


def auc(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """Area under the ROC curve of telling members from non-members by a score (higher = member):
    P(member's score > non-member's) + ½·P(equal) over all pairs (the Mann-Whitney statistic), by binary search."""
    import numpy as np

    pos, neg = np.asarray(members, dtype=float), np.sort(np.asarray(nonmembers, dtype=float))
    if pos.size == 0 or neg.size == 0:
        raise ValueError("an AUC needs at least one member and one non-member")
    below = np.searchsorted(neg, pos, side="left")
    equal = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (pos.size * neg.size))


def auc_bootstrap(members: Sequence[float], nonmembers: Sequence[float], *, n: int = 1000, seed: int = 0,
                  confidence: float = 0.95) -> dict[str, Any]:
    """The AUC with a percentile interval: members and non-members resampled with replacement, each within
    its own group (the two sets are drawn apart, so their sizes stay fixed). Reproducible for a fixed `seed`.
    Returns `{auc, low, high, members, nonmembers, resamples, confidence, seed}`."""
    import numpy as np

    pos, neg = np.asarray(members, dtype=float), np.asarray(nonmembers, dtype=float)
    value = auc(pos, neg)
    rng = np.random.default_rng(seed)
    replicate = [auc(pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]) for _ in range(n)]
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicate, [tail, 100.0 - tail])
    return {"auc": value, "low": float(low), "high": float(high), "members": int(pos.size), "nonmembers": int(neg.size),
            "resamples": n, "confidence": confidence, "seed": seed}


def signed_interval(entry: Mapping[str, Any]) -> str:
    """A difference and its 95 % interval as every read-out prints one, `+2.5 [+0.0, +6.1]` (signed, one decimal)."""
    return f"{entry['mean']:+.1f} [{entry['low']:+.1f}, {entry['high']:+.1f}]"


def interval_table(first: str, rows: Sequence[tuple[str, Mapping[str, Any]]], *, value: str = "mean",
                   value_title: str = "mean") -> list[str]:
    """Markdown lines of a table of estimates, one row per (label, entry) with the entry's `value` and its 95 %
    interval (`low`, `high`): the summaries of the measurements that report one interval per figure."""
    lines = [f"| {first} | {value_title} | 95 % interval |", "|---|---:|---|"]
    return lines + [f"| {label} | {entry[value]:.3f} | [{entry['low']:.3f}, {entry['high']:.3f}] |" for label, entry in rows]
