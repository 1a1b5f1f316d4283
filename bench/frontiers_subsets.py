"""More subsets: one forget set split two ways (k = 4 subsets against k = 2), Spunge against Spunge at matched utility.

Each grouping of a forget set is its own cell (`bench/frontiers.py` `Cell.set_name`: `a+b+c+d` and `a+b+c+d-k2`) and
row, read against its own un-split run as every cell is. What those rows cannot say is whether the finer split
forgets more than the coarser one: each is against a different baseline run (their step budgets differ). So, per
forget set that the plan splits two ways and per Spunge merge: each cell's forget avg at its matched-utility point
(keep avg = base − keep_drop; `matched.matched_utility`, per held-out fact with the interpolation weights), the
difference finer − coarser per fact, paired over the seeds both cells finished (the same base and held-out facts),
`hierarchical_bootstrap` over seeds and facts, and `matched.verdict` with lower is better: "helps" says the finer
split forgets more at the same utility. No verdict where either cell's matched point was not reached.
"""

from __future__ import annotations

from typing import Any


def subset_comparisons(units: list[dict], merges: list[str], readout) -> list[dict[str, Any]]:
    """Per forget set present in two or more groupings (units with the same domains, another `set`), per pair of
    groupings finer against coarser: {set, finer, coarser, k: [finer's, coarser's], merges: {merge: figure or None}}."""
    from spunge_merge.evaluate.matched import set_name

    by_domains: dict[tuple[str, ...], dict[str, list[dict]]] = {}
    for unit in units:
        by_domains.setdefault(tuple(unit["pair"]), {}).setdefault(set_name(unit), []).append(unit)
    found = []
    for domains, groupings in sorted(by_domains.items()):
        k = {name: len(members[0].get("subsets") or []) or len(domains) for name, members in groupings.items()}
        ordered = sorted(groupings, key=lambda name: (-k[name], name))
        for i, finer in enumerate(ordered):
            for coarser in (c for c in ordered[i + 1:] if k[c] < k[finer]):
                found.append({"set": "+".join(domains), "finer": finer, "coarser": coarser, "k": [k[finer], k[coarser]],
                              "merges": {m: compare_arms(groupings[finer], groupings[coarser], f"spunge-{m}", readout)
                                         for m in merges}})
    return found


def compare_arms(finer: list[dict], coarser: list[dict], arm: str, readout) -> dict[str, Any] | None:
    """`arm` of the finer cell's units against the same arm of the coarser cell's, at matched utility, paired by seed;
    None where no seed is finished in both."""
    from spunge_merge.evaluate.matched import as_readout, item_differences, matched_utility, verdict
    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    readout = as_readout(readout)
    other = {u["seed"]: u for u in coarser}
    paired = [(u, other[u["seed"]]) for u in sorted(finer, key=lambda u: u["seed"]) if u["seed"] in other]
    if not paired:
        return None
    a = [matched_utility(u, arm, readout) for u, _ in paired]
    b = [matched_utility(u, arm, readout) for _, u in paired]
    diffs = [item_differences(x["items"], y["items"]) if same_facts(x["items"], y["items"]) else [x["forget"] - y["forget"]]
             for x, y in zip(a, b, strict=True)]
    found = hierarchical_bootstrap(diffs, n=readout.bootstrap.n, seed=readout.bootstrap.seed)
    reached = all(x["reached"] for x in a + b)
    return {"mean": found["mean"], "low": found["low"], "high": found["high"], "n_seeds": found["n_seeds"],
            "units": len(paired), "seeds": [u["seed"] for u, _ in paired],
            "finer_forget": _avg([x["forget"] for x in a]), "coarser_forget": _avg([y["forget"] for y in b]),
            "finer_lambda": [round(x["lam"], 3) for x in a], "coarser_lambda": [round(y["lam"], 3) for y in b],
            "not_reached": sum(not x["reached"] for x in a + b),
            "verdict": verdict(found["low"], found["high"], len(paired), level_margin=readout.level_margin,
                               min_seeds=readout.min_seeds) if reached else "no verdict"}


def same_facts(a: dict | None, b: dict | None) -> bool:
    """Both points have per-fact results over the same domains and facts (else their values' difference stands in)."""
    return a is not None and b is not None and a.keys() == b.keys() and all(a[d].keys() == b[d].keys() for d in a)


def _avg(values: list[float]) -> float:
    return sum(values) / len(values)


def subset_lines(summary: dict) -> list[str]:
    """summary.md's section "More subsets", where some row holds a forget set split two ways; else nothing."""
    rows = [row for row in summary["rows"] if row.get("more_subsets")]
    if not rows:
        return []
    lines = ["", "## More subsets", "",
             "One forget set split two ways from the same base (e.g. k = 4, one subset per domain, against k = 2, pairs of "
             "domains), each cell's Spunge merge at its own matched utility (keep avg = base − "
             f"{summary['readout']['keep_drop']:g} points): forget avg of the finer split − the coarser one, per held-out "
             "fact, paired over the seeds both cells finished; 95 % hierarchical bootstrap over seeds and facts (negative: "
             "the finer split forgets more at the same utility; verdict helps / hurts / level for the finer split, none "
             "where a matched point was not reached). Each cell against its own un-split run is its row above.", "",
             "| method | model | forget set | finer (k) | coarser (k) | merge | finer forget % | coarser forget % | "
             "Δ (finer − coarser) | verdict | seeds | λ there (finer; coarser) |", "|---|---|---|---|---|---|---:|---:|---|---|---:|---|"]
    for row in rows:
        for entry in row["more_subsets"]:
            for merge, m in entry["merges"].items():
                if m is None:
                    continue
                lines.append(f"| {row['method']} | {row['model']} | {entry['set']} | {entry['finer']} ({entry['k'][0]}) | "
                             f"{entry['coarser']} ({entry['k'][1]}) | {merge} | {m['finer_forget']:.1f} | {m['coarser_forget']:.1f} | "
                             f"{m['mean']:+.1f} [{m['low']:+.1f}, {m['high']:+.1f}] | **{m['verdict']}** | {m['units']} | "
                             f"{', '.join(f'{x:g}' for x in m['finer_lambda'])}; {', '.join(f'{x:g}' for x in m['coarser_lambda'])} |")
    return lines
