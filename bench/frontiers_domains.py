"""Each forgotten domain at matched utility, and the worst one: what the pooled forget avg can hide.

A forget avg is the mean over the forgotten domains, so an arm can reach a good one by forgetting one domain
completely and leaving another: with unequal subsets (one domain's training facts capped, the plan's
`models.<model>.train_rows`) the small subset is the one that may be starved, by its own split run's few steps or
by the un-split run that sees it in a few rows of the union. So beside the forget avg, per row and Spunge merge:

- each forgotten domain's held-out accuracy at each arm's matched-utility point, with the same interpolation
  weights as the forget avg (`spunge_merge.evaluate.matched.matched_utility`'s per-fact items), Spunge − baseline
  per fact, over the units whose pair holds that domain (`hierarchical_bootstrap`, as the forget avg);
- the worst forgotten domain: per unit and arm the highest of those accuracies (the least forgotten; it may be
  another domain for each arm), Spunge − baseline averaged over units, its interval from
  `spunge_merge.evaluate.stats.worst_stratum_bootstrap` ((pair, seed) units, then each domain's facts with the same
  indices for both arms, the maxima recomputed per resample).

Verdicts by `matched.verdict` (lower is better), none where some unit's matched point was not reached.
Reported for every cell, capped or not.
"""

from __future__ import annotations

from typing import Any

from spunge_merge.evaluate.stats import signed_interval as _ci


def domain_readout(units: list[dict], merges: list[str], readout, *, arm_of=lambda m: f"spunge-{m}",
                   baseline: str = "baseline") -> dict[str, Any] | None:
    """{merge: {"worst": figure, "domains": {domain: figure}}} over `units`, each figure {mean, low, high, n_seeds,
    verdict, spunge, baseline (the arms' own mean %), ...}; None where some matched point has no per-fact results."""
    from spunge_merge.evaluate.matched import as_readout, matched_utility

    readout = as_readout(readout)
    base_rows = [matched_utility(u, baseline, readout) for u in units]
    found = {}
    for merge in merges:
        spunge = [matched_utility(u, arm_of(merge), readout) for u in units]
        if any(x["items"] is None for x in spunge + base_rows):
            return None
        pairs = [(u, s, b) for u, s, b in zip(units, spunge, base_rows, strict=True)]
        domains = sorted({d for _, s, _ in pairs for d in s["items"]})
        found[merge] = {"worst": _worst(pairs, readout),
                        "domains": {d: _domain(d, [p for p in pairs if d in p[1]["items"]], readout) for d in domains}}
    return found


def _means(items: dict[str, dict[str, float]]) -> dict[str, float]:
    return {d: sum(facts.values()) / len(facts) for d, facts in items.items()}


def _worst_name(means: dict[str, float]) -> str:
    top = max(means.values())
    names = [d for d, v in means.items() if v == top]
    return names[0] if len(names) == 1 else "tie"


def _worst(pairs: list[tuple], readout) -> dict[str, Any]:
    from spunge_merge.evaluate.stats import worst_stratum_bootstrap

    data = [{d: ([s["items"][d][k] for k in s["items"][d]], [b["items"][d][k] for k in s["items"][d]]) for d in s["items"]}
            for _, s, b in pairs]
    found = worst_stratum_bootstrap(data, n=readout.bootstrap.n, seed=readout.bootstrap.seed)
    spunge, base = [_means(s["items"]) for _, s, _ in pairs], [_means(b["items"]) for _, _, b in pairs]
    named: dict[str, dict[str, int]] = {"spunge": {}, "baseline": {}}
    for arm, rows in (("spunge", spunge), ("baseline", base)):
        for means in rows:
            named[arm][_worst_name(means)] = named[arm].get(_worst_name(means), 0) + 1
    return {**_figure(found, pairs, readout), "spunge": _avg([max(m.values()) for m in spunge]),
            "baseline": _avg([max(m.values()) for m in base]), "worst_domain": named}


def _domain(domain: str, pairs: list[tuple], readout) -> dict[str, Any]:
    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    diffs = [[s["items"][domain][k] - b["items"][domain][k] for k in s["items"][domain]] for _, s, b in pairs]
    found = hierarchical_bootstrap(diffs, n=readout.bootstrap.n, seed=readout.bootstrap.seed)
    return {**_figure(found, pairs, readout), "spunge": _avg([_means(s["items"])[domain] for _, s, _ in pairs]),
            "baseline": _avg([_means(b["items"])[domain] for _, _, b in pairs])}


def _figure(found: dict, pairs: list[tuple], readout) -> dict[str, Any]:
    from spunge_merge.evaluate.matched import verdict

    seeds = len({u["seed"] for u, _, _ in pairs})
    reached = all(s["reached"] and b["reached"] for _, s, b in pairs)
    return {"mean": found["mean"], "low": found["low"], "high": found["high"], "n_seeds": found["n_seeds"],
            "units": len(pairs), "verdict": verdict(found["low"], found["high"], seeds, level_margin=readout.level_margin,
                                                    min_seeds=readout.min_seeds) if reached else "no verdict"}


def _avg(values: list[float]) -> float:
    return sum(values) / len(values)


def domain_lines(row: dict) -> list[str]:
    """The row's table: per Spunge merge, forget avg, the worst forgotten domain and each domain at matched utility."""
    if not row.get("domains"):
        return []
    lines = ["Each forgotten domain at matched utility (the forget avg's interpolation weights; held-out accuracy %, "
             "lower is better): the **worst** is, per unit and arm, the least-forgotten domain (its name per arm: units "
             "where it was that domain). Spunge − baseline with 95 % interval.", "",
             "| Spunge merge | figure | Spunge % | baseline % | Δ (Spunge − baseline) | verdict | units |",
             "|---|---|---:|---:|---|---|---:|"]
    for merge, entry in row["domains"].items():
        avg = row["merges"][merge]["matched_utility"]
        lines.append(f"| {merge} | forget avg | {avg['spunge_forget']:.1f} | {avg['baseline_forget']:.1f} | {_ci(avg)} | "
                     f"{avg['verdict']} | {row['units']} |")
        worst = entry["worst"]
        names = "; ".join(f"{arm}: " + ", ".join(f"{d} {n}" for d, n in sorted(counts.items()))
                          for arm, counts in worst["worst_domain"].items())
        lines.append(f"| {merge} | **worst domain** ({names}) | {worst['spunge']:.1f} | {worst['baseline']:.1f} | "
                     f"{_ci(worst)} | **{worst['verdict']}** | {worst['units']} |")
        for domain, figure in entry["domains"].items():
            lines.append(f"| {merge} | {domain} | {figure['spunge']:.1f} | {figure['baseline']:.1f} | {_ci(figure)} | "
                         f"{figure['verdict']} | {figure['units']} |")
    return lines + [""]


