"""Synthetic frontier units for the read-out tests of the matched-utility hooks (MIA, probes): no model, no files."""

from __future__ import annotations


def curve_unit(seed: int, curves: dict[str, list[tuple[float, float, float]]], pair: tuple[str, str] = ("a", "b")) -> dict:
    """A unit as `frontiers_readout.collect` gives it: the base at keep = forget = 100, and every arm's (λ, keep avg,
    forget avg) point under its grid label, without per-fact items."""
    points = {"base": {"keep": (100.0, None), "forget": (100.0, None)}}
    for arm, curve in curves.items():
        for lam, keep, forget in curve:
            points[f"{arm}-lam{lam:g}"] = {"keep": (keep, None), "forget": (forget, None)}
    return {"pair": list(pair), "seed": seed, "points": points}
