"""Forget against keep at matched utility: the knowledge frontier's read-out, one definition for
`spunge eval frontier` and `bench/frontiers.py`.

Why matched utility: an arm can forget more simply by damaging more. Each arm is a curve over λ
(the base model is λ = 0 of every arm); for each (forget set, seed) unit the read-out takes, on each
arm's curve, the forget avg at the keep avg where the model has lost `keep_drop` points against the
base (keep avg = base − 5), interpolating linearly between the two λ points that bracket it (the first
crossing along λ). An arm that never loses that much uses its point nearest the target and is flagged
("not reached"); so is one whose crossing lies between λ points too far apart to interpolate across (a
base-to-broken-model gap in keep, or a cliff from forgetting nothing to forgetting everything). The
interpolation is linear in each fact's verdict, so every fact gets an interpolated value with the same
weights, and Spunge − baseline is a per-fact paired difference.

Utility is not keep accuracy alone: a point whose retain perplexity exceeds the base's by more than
`retain_ppl_margin_pct` % is not a candidate (a model can keep short facts while its language is broken:
GradDiff on gemma3-270m kept 94 % of them at retain perplexity 1,015 against the base's 26). Such points
are dropped from the curve before it is read, as non-text output is on the toxicity frontier.

The interval: `hierarchical_bootstrap` with (forget set, seed) units as its upper level and the forgotten
domains' held-out facts as strata below (the weights are held fixed: the interval covers seeds, sets
and facts, not the uncertainty of where the keep curve crosses the target).

The verdict (forget avg: lower is better): with fewer than `min_seeds` seeds, "no verdict"; else
"helps" or "hurts" when the interval excludes 0, "level" when it lies within ± `level_margin`
points, otherwise "no verdict" (the interval is too wide to say either).

A unit is `{"pair": [domains], "seed": s, "points": {label: point}}`, a label `ARM-lamX` (`base` is λ 0),
a point `{"keep": (value, items), "forget": (value, items), "ppl": value or None}` with items
`{domain: {fact: 100 or 0}}` (`knowledge_figures` reads them from an evaluation directory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from spunge_merge.config import FrozenConfig
from spunge_merge.fsutil import iter_jsonl, read_json

TIE = 1e-9
# Linear interpolation is trusted across at most this many points of keep avg: a wider bracket (the base and a λ
# that already broke the model) says nothing about where the curve crosses, so the unit counts as not reached.
MAX_KEEP_GAP = 25.0
# Nor across a bracket whose ends differ by more than this many points of forget avg: an arm that goes from
# forgetting nothing to forgetting everything between two λ points could cross the target keep anywhere on
# that cliff, and the straight line through it invents the forget avg there.
MAX_FORGET_GAP = 50.0
Items = dict[str, dict[str, float]]  # domain → fact key → 100 or 0


class Bootstrap(FrozenConfig):
    n: int = Field(2000, ge=1, description="Resamples of the hierarchical bootstrap.")
    seed: int = Field(0, description="Its random seed (the interval is reproducible).")


class FrontierReadout(FrozenConfig):
    """How a knowledge frontier is read out (the plan's `readout:`, `spunge eval frontier`'s options)."""

    keep_drop: float = Field(5.0, gt=0, le=100, description="Matched utility: each arm's forget avg where keep avg = base − this.")
    forget_at_most: float = Field(5.0, ge=0, le=100, description="Matched forgetting: best keep avg among points forgetting ≤ this %.")
    level_margin: float = Field(2.0, ge=0, description="'level' only when the whole interval lies within ± this many points.")
    min_seeds: int = Field(3, ge=1, description="Fewer seeds than this: no verdict.")
    retain_ppl_margin_pct: float | None = Field(
        50.0, ge=0, description="A point whose retain perplexity exceeds the base's by more than this % is not a candidate "
        "(None: not checked).")
    bootstrap: Bootstrap = Field(default_factory=Bootstrap, description="The interval's bootstrap.")


# ------------------------------------------------------------------------------------------------
# Reading an evaluation directory


def knowledge_figures(eval_dir: Path, forget: Sequence[str]) -> dict[str, tuple[float, Items | None]]:
    """Per domain, forget avg and keep avg of one evaluation directory: (value in %, {domain: {fact key: 100 or 0}})."""
    from spunge_merge.evaluate.knowledge import COMPLETIONS_FILE, KNOWLEDGE_FILE

    if not (eval_dir / KNOWLEDGE_FILE).is_file():
        return {}
    result = read_json(eval_dir / KNOWLEDGE_FILE)
    items: dict[str, dict[str, float]] = {}
    completions = eval_dir / COMPLETIONS_FILE
    if completions.is_file():
        seen: dict[tuple[str, str, str], int] = {}
        for _, row in iter_jsonl(completions):
            fact = (row["domain"], row["prompt"], row["answer"])
            seen[fact] = seen.get(fact, 0) + 1
            items.setdefault(row["domain"], {})[f"{row['prompt']}\t{row['answer']}\t{seen[fact]}"] = 100.0 * bool(row["correct"])
    figures: dict[str, tuple[float, dict | None]] = {}
    for domain, entry in result["domains"].items():
        figures[f"knowledge: {domain}"] = (100.0 * entry["accuracy"], {domain: items[domain]} if domain in items else None)
    for name, domains in (("forget avg", [d for d in result["domains"] if d in forget]),
                          ("keep avg", [d for d in result["domains"] if d not in forget])):
        if domains:
            value = sum(100.0 * result["domains"][d]["accuracy"] for d in domains) / len(domains)
            strata = {d: items[d] for d in domains} if all(d in items for d in domains) else None
            figures[name] = (value, strata)
    return figures


def read_point(eval_dir: Path, forget: Sequence[str]) -> dict[str, Any]:
    """One evaluated model as the read-out takes it: keep, forget (value, items), retain perplexity (or None),
    facts per domain and the count of facts left out as echo-answerable."""
    from spunge_merge.evaluate.knowledge import KNOWLEDGE_FILE

    figures = knowledge_figures(eval_dir, forget)
    result = read_json(eval_dir / KNOWLEDGE_FILE)
    ppl_file = eval_dir / "perplexity.json"
    return {"keep": figures["keep avg"], "forget": figures["forget avg"],
            "ppl": float(read_json(ppl_file)["perplexity"]) if ppl_file.is_file() else None,
            "facts_per_domain": {d: int(e.get("n", 0)) for d, e in result["domains"].items()},
            "excluded": int((result.get("excluded") or {}).get("count", 0))}


def point_label(arm: str, lam: float) -> str:
    """A frontier point's name: `baseline-lam2`, `spunge-ties-lam0.5`."""
    return f"{arm}-lam{lam:g}"


def arm_and_lambda(name: str) -> tuple[str, float]:
    """The inverse of `point_label`; the base model is λ 0 of every arm (arm `base`)."""
    if name == "base":
        return "base", 0.0
    arm, lam = name.rsplit("-lam", 1)
    return arm, float(lam)


# ------------------------------------------------------------------------------------------------
# Pure rules (tests/test_frontiers_readout.py checks them by hand)


def interpolate_at_keep(points: Sequence[tuple[float, float, float]], target: float,
                        max_gap: float = MAX_KEEP_GAP, max_forget_gap: float = MAX_FORGET_GAP) -> dict[str, Any]:
    """Where an arm's curve reaches keep avg = `target`.

    `points` are (λ, keep avg, forget avg), base first (λ 0). Returns `forget` (interpolated forget avg),
    `lam` (interpolated λ), `weights` ({index into points: weight}, summing to 1) and `reached`
    (False: the curve never came down to the target; the point whose keep avg is nearest it is used,
    the larger λ on a tie. Also False when the bracketing points are more than `max_gap` points of keep
    avg apart: the crossing is then a guess, unless both forget the same, e.g. an arm that already forgets
    everything before its keep starts to fall: where it crosses then changes nothing. And False when they are
    more than `max_forget_gap` points of forget avg apart: the forget avg at the crossing is then a guess).
    `bracket` is the (λ, λ) pair around the crossing, or None where the curve never crosses.
    """
    ordered = sorted(range(len(points)), key=lambda i: points[i][0])
    for a, b in zip(ordered, ordered[1:], strict=False):
        (lam_a, keep_a, forget_a), (lam_b, keep_b, forget_b) = points[a], points[b]
        if abs(keep_a - target) <= TIE:
            return {"forget": forget_a, "lam": lam_a, "weights": {a: 1.0}, "reached": True, "bracket": (lam_a, lam_a)}
        if abs(keep_b - target) <= TIE:
            return {"forget": forget_b, "lam": lam_b, "weights": {b: 1.0}, "reached": True, "bracket": (lam_b, lam_b)}
        if keep_a > target > keep_b:
            w = (keep_a - target) / (keep_a - keep_b)
            forget_gap = abs(forget_a - forget_b)
            return {"forget": (1 - w) * forget_a + w * forget_b, "lam": (1 - w) * lam_a + w * lam_b,
                    "weights": {a: 1 - w, b: w}, "bracket": (lam_a, lam_b),
                    "reached": (keep_a - keep_b <= max_gap or forget_gap <= TIE) and forget_gap <= max_forget_gap}
    last = ordered[-1]
    if abs(points[last][1] - target) <= TIE:
        return {"forget": points[last][2], "lam": points[last][0], "weights": {last: 1.0}, "reached": True,
                "bracket": (points[last][0], points[last][0])}
    nearest = min(ordered, key=lambda i: (abs(points[i][1] - target), -points[i][0]))
    return {"forget": points[nearest][2], "lam": points[nearest][0], "weights": {nearest: 1.0}, "reached": False,
            "bracket": None}


def verdict(low: float, high: float, n_seeds: int, *, better: str = "lower", level_margin: float = 2.0,
            min_seeds: int = 3) -> str:
    """helps / hurts (interval excludes 0), level (interval within ± level_margin), else no verdict;
    always "no verdict" with fewer than `min_seeds` seeds."""
    if n_seeds < min_seeds:
        return "no verdict"
    if low > TIE:
        return "hurts" if better == "lower" else "helps"
    if high < -TIE:
        return "helps" if better == "lower" else "hurts"
    if -level_margin <= low and high <= level_margin:
        return "level"
    return "no verdict"


def mix_items(items: Sequence[Items], weights: Sequence[float]) -> Items:
    """Per-fact weighted sum of several points' verdicts (the same facts in each)."""
    first = items[0]
    return {d: {k: sum(w * it[d][k] for it, w in zip(items, weights, strict=True)) for k in first[d]} for d in first}


def item_differences(a: Items, b: Items) -> dict[str, list[float]]:
    return {d: [a[d][k] - b[d][k] for k in a[d]] for d in a}


def pick_matched_forgetting(points: Sequence[tuple[float, float, float]], forget_at_most: float) -> int:
    """Index of the point with the best keep avg among those with forget avg ≤ `forget_at_most`
    (else the one forgetting most), as bench/knowledge_grid.py; the base (λ 0) is never picked."""
    candidates = [i for i, p in enumerate(points) if p[0] > 0]
    enough = [i for i in candidates if points[i][2] <= forget_at_most]
    if enough:
        return max(enough, key=lambda i: (points[i][1], -points[i][2]))
    return min(candidates, key=lambda i: (points[i][2], -points[i][1]))


def useful(point: Mapping[str, Any], base: Mapping[str, Any], margin_pct: float | None) -> bool:
    """False for a point whose retain perplexity exceeds the base's by more than `margin_pct` % (its utility is gone
    whatever its keep accuracy says); True where either perplexity is unknown or the check is off."""
    if margin_pct is None or point.get("ppl") is None or base.get("ppl") is None:
        return True
    return point["ppl"] <= base["ppl"] * (1 + margin_pct / 100.0) + TIE


# ------------------------------------------------------------------------------------------------
# One unit's arm, and a row over units


def arm_curve(unit: dict, arm: str, margin_pct: float | None = None) -> list[tuple[str, float]]:
    """[(label, λ)] of one arm in a unit, base first; with `margin_pct`, only the points that pass `useful`."""
    base = unit["points"]["base"]
    found = sorted(((name, arm_and_lambda(name)[1]) for name in unit["points"] if name != "base" and arm_and_lambda(name)[0] == arm
                    and useful(unit["points"][name], base, margin_pct)), key=lambda x: x[1])
    return [("base", 0.0)] + found


def triples(unit: dict, curve: list[tuple[str, float]]) -> list[tuple[float, float, float]]:
    return [(lam, unit["points"][name]["keep"][0], unit["points"][name]["forget"][0]) for name, lam in curve]


def matched_utility(unit: dict, arm: str, readout: FrontierReadout) -> dict[str, Any]:
    """The arm's forget avg (and per-fact items) at keep = base − keep_drop in one unit."""
    curve = arm_curve(unit, arm, readout.retain_ppl_margin_pct)
    target = unit["points"]["base"]["keep"][0] - readout.keep_drop
    found = interpolate_at_keep(triples(unit, curve), target)
    names = [curve[i][0] for i in found["weights"]]
    items = [unit["points"][n]["forget"][1] for n in names]
    mixed = mix_items(items, list(found["weights"].values())) if all(i is not None for i in items) else None
    return {**found, "items": mixed, "target": target, "labels": names}


def _bootstrap(diffs: list, readout: FrontierReadout) -> dict[str, Any]:
    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    return hierarchical_bootstrap(diffs, n=readout.bootstrap.n, seed=readout.bootstrap.seed)


def _paired(a: tuple[float, Items | None], b: tuple[float, Items | None]) -> Any:
    if a[1] is not None and b[1] is not None and a[1].keys() == b[1].keys():
        return item_differences(a[1], b[1])
    return [a[0] - b[0]]


def as_readout(readout: FrontierReadout | Mapping[str, Any]) -> FrontierReadout:
    return readout if isinstance(readout, FrontierReadout) else FrontierReadout(**dict(readout))


def read_row(units: list[dict], merges: list[str], readout: FrontierReadout | Mapping[str, Any], *,
             arm_of: Callable[[str], str] = "spunge-{}".format, baseline: str = "baseline") -> dict[str, Any]:
    """One row over `units`: every merge (arm `arm_of(merge)`) against the baseline; the best merge; its verdict."""
    readout = as_readout(readout)
    margin, min_seeds, drop_margin = readout.level_margin, readout.min_seeds, readout.retain_ppl_margin_pct
    n_seeds = len({u["seed"] for u in units})
    base_rows = [matched_utility(u, baseline, readout) for u in units]
    per_merge = {}
    for merge in merges:
        arm = arm_of(merge)
        spunge = [matched_utility(u, arm, readout) for u in units]
        diffs = [item_differences(s["items"], b["items"]) if s["items"] is not None and b["items"] is not None
                 else [s["forget"] - b["forget"]] for s, b in zip(spunge, base_rows, strict=True)]
        matched = _bootstrap(diffs, readout)
        at_one = {}
        for figure in ("forget", "keep"):
            name_s, name_b = point_label(arm, 1.0), point_label(baseline, 1.0)
            if all(name_s in u["points"] and name_b in u["points"] for u in units):
                at_one[figure] = _bootstrap([_paired(u["points"][name_s][figure], u["points"][name_b][figure]) for u in units],
                                            readout)
        forgetting, short = [], 0  # short: (unit, arm)s whose sweep never forgets enough (compared at unmatched forgetting)
        for u in units:
            pick = {}
            for which in (arm, baseline):
                curve = arm_curve(u, which, drop_margin)
                if len(curve) < 2:  # every point of the arm failed the perplexity check: its most-forgetting point stands in
                    curve = arm_curve(u, which)
                pick[which] = curve[pick_matched_forgetting(triples(u, curve), readout.forget_at_most)][0]
                short += u["points"][pick[which]]["forget"][0] > readout.forget_at_most
            forgetting.append(_paired(u["points"][pick[arm]]["keep"], u["points"][pick[baseline]]["keep"]))
        per_merge[merge] = {
            "matched_utility": {**_plain(matched), "verdict": "no verdict" if any(not x["reached"] for x in spunge + base_rows)
                                else verdict(matched["low"], matched["high"], n_seeds, level_margin=margin, min_seeds=min_seeds),
                                "spunge_forget": _mean([s["forget"] for s in spunge]),
                                "baseline_forget": _mean([b["forget"] for b in base_rows]),
                                "spunge_lambda": [round(s["lam"], 3) for s in spunge],
                                "baseline_lambda": [round(b["lam"], 3) for b in base_rows],
                                "spunge_not_reached": sum(not s["reached"] for s in spunge),
                                "baseline_not_reached": sum(not b["reached"] for b in base_rows)},
            "lambda_1": {k: {**_plain(v), "verdict": verdict(v["low"], v["high"], n_seeds, better="lower" if k == "forget" else "higher",
                                                             level_margin=margin, min_seeds=min_seeds)} for k, v in at_one.items()},
            "matched_forgetting_keep": {**_plain(b := _bootstrap(forgetting, readout)), "not_reached": short,
                                        "verdict": "no verdict" if short else verdict(
                                            b["low"], b["high"], n_seeds, better="higher", level_margin=margin,
                                            min_seeds=min_seeds)},
        }
    best = min(per_merge, key=lambda m: per_merge[m]["matched_utility"]["mean"])
    arms = [baseline] + [arm_of(m) for m in merges]
    no_utility = sum(1 for u in units for name in u["points"] if name != "base" and arm_and_lambda(name)[0] in arms
                     and not useful(u["points"][name], u["points"]["base"], drop_margin))
    return {"units": len(units), "seeds": n_seeds, "pairs": sorted({set_name(u) for u in units}),
            "best": best, "merges": per_merge, "no_utility_points": no_utility,
            "base_keep": _mean([u["points"]["base"]["keep"][0] for u in units]),
            "base_forget": _mean([u["points"]["base"]["forget"][0] for u in units]),
            "why": _why(best, per_merge[best]) if per_merge[best]["matched_utility"]["verdict"] != "helps" else ""}


def rows_by_set(units: list[dict], merges: list[str], readout: FrontierReadout | Mapping[str, Any],
                **arms: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the pooled row over every unit, {forget set `a+b`: its own row}): a verdict per forget set beside the pooled one."""
    pooled = read_row(units, merges, readout, **arms)
    sets: dict[str, list[dict]] = {}
    for unit in units:
        sets.setdefault(set_name(unit), []).append(unit)
    return pooled, {name: read_row(members, merges, readout, **arms) for name, members in sorted(sets.items())}


def set_name(unit: Mapping[str, Any]) -> str:
    """A unit's forget set: its `set` where given (`a+b+c+d-k2`: the same domains grouped into 2 subsets is another
    set), else its domains joined, `a+b`."""
    return unit.get("set") or "+".join(unit["pair"])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _plain(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: entry[k] for k in ("mean", "low", "high", "n_seeds")}


def _why(merge: str, entry: dict) -> str:
    """Why the closest merge still does not help, in the figures' own words."""
    m = entry["matched_utility"]
    parts = [f"closest: {merge} (at keep = base − the drop it forgets {m['spunge_forget']:.1f} % against the baseline's "
             f"{m['baseline_forget']:.1f} %)"]
    if m["spunge_not_reached"] or m["baseline_not_reached"]:
        parts.append(f"the target keep avg was not reached, or fell between λ points too far apart, in "
                     f"{m['spunge_not_reached']} Spunge and {m['baseline_not_reached']} baseline units, so the comparison "
                     "there is a guess: extend the λ sweep or add points to it")
    one = entry["lambda_1"]
    if "forget" in one and "keep" in one:
        parts.append(f"at λ = 1 it forgets {one['forget']['mean']:+.1f} points against the baseline and keeps "
                     f"{one['keep']['mean']:+.1f}")
    return "; ".join(parts)


def unit_means(units: list[dict]) -> dict[str, dict[str, float]]:
    """Each label present in every unit: its forget avg, keep avg and retain perplexity, averaged over units."""
    names = [n for n in units[0]["points"] if all(n in u["points"] for u in units)]
    return {n: {"forget": _mean([u["points"][n]["forget"][0] for u in units]),
                "keep": _mean([u["points"][n]["keep"][0] for u in units]),
                "ppl": None if any(u["points"][n].get("ppl") is None for u in units) else _mean([u["points"][n]["ppl"] for u in units])}
            for n in names}


def plot_units(units: list[dict], arms: list[str], title: str, target: float, path: Path) -> None:
    """Keep avg (x) against forget avg (y): one colour per arm, a thin line per (set, seed), the mean bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for index, arm in enumerate(arms):
        colour = f"C{index}"
        curves = [triples(u, arm_curve(u, arm)) for u in units]
        for curve in curves:
            ax.plot([p[1] for p in curve], [p[2] for p in curve], color=colour, lw=0.6, alpha=0.35)
        length = min(len(c) for c in curves)
        mean = [(sum(c[i][1] for c in curves) / len(curves), sum(c[i][2] for c in curves) / len(curves)) for i in range(length)]
        ax.plot([m[0] for m in mean], [m[1] for m in mean], color=colour, lw=2, marker="o", ms=3, label=arm)
    ax.axvline(target, color="grey", ls="--", lw=0.8, label="base − drop (matched utility)")
    ax.set_xlabel("keep avg (held-out kept facts, %)")
    ax.set_ylabel("forget avg (held-out forgotten facts, %)")
    ax.set_title(title, fontsize=9)
    ax.invert_xaxis()
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Adaptive λ: refine an arm's sweep until its crossing is read within the limits


def next_lambdas(points: Sequence[tuple[float, float, float]], target: float, *, grow: float = 2.0,
                 max_gap: float = MAX_KEEP_GAP, max_forget_gap: float = MAX_FORGET_GAP) -> list[float]:
    """The λ to evaluate next so that the arm's crossing of keep avg = `target` is bracketed within the read-out's
    limits; [] when it already is. Never reached: the largest λ × `grow`. A bracket too wide (in keep or forget):
    its midpoint (bisection). `points` are (λ, keep avg, forget avg), base (λ 0) included."""
    found = interpolate_at_keep(points, target, max_gap, max_forget_gap)
    if found["reached"]:
        return []
    if found["bracket"] is None:
        return [round(max(p[0] for p in points) * grow, 6)]
    low, high = found["bracket"]
    return [round((low + high) / 2, 6)]


def refine_lambdas(evaluate: Callable[[float], tuple[float, float, float | None]], points: Sequence[tuple[float, float, float]],
                   target: float, *, budget: int, base_ppl: float | None = None, margin_pct: float | None = None,
                   grow: float = 2.0, broken: Sequence[tuple[float, float, float]] = ()) -> dict[str, Any]:
    """Add λ points to one arm until `next_lambdas` has none left or `budget` extra points are spent.

    `evaluate(λ)` builds and scores the arm's model at λ: (keep avg, forget avg, retain perplexity or None).
    `points` are what is measured already and usable, base (λ 0) first; `broken` the measured points whose
    perplexity failed `useful` (the read-out keeps them out of the curve, and so does the next λ's choice). The
    smallest broken λ is a ceiling: where its keep is still above `target` the crossing lies past the point where
    the language breaks and nothing is added; otherwise a λ at or above it is replaced by the midpoint between the
    largest usable λ and the ceiling. Returns `added` (λ in order), `points` (the curve with them, by λ) and
    `reached` (whether the last curve reads within the limits)."""
    curve = sorted(points)
    ceiling = min(broken, default=None)
    added: list[float] = []
    while len(added) < budget:
        if ceiling is not None and ceiling[1] > target + TIE:
            break  # even the broken point keeps too much: the crossing is beyond where the language breaks
        tried = [p[0] for p in curve] + added
        wanted = next_lambdas(curve, target, grow=grow)
        if wanted and ceiling is not None and wanted[0] >= ceiling[0] - TIE:
            below = max(p[0] for p in curve if p[0] < ceiling[0])
            wanted = [round((below + ceiling[0]) / 2, 6)]
        wanted = [lam for lam in wanted if all(abs(lam - seen) > TIE for seen in tried)]
        if not wanted:
            break
        lam = wanted[0]
        keep, forget, ppl = evaluate(lam)
        added.append(lam)
        if useful({"ppl": ppl}, {"ppl": base_ppl}, margin_pct):
            curve = sorted([*curve, (lam, keep, forget)])
        elif ceiling is None or lam < ceiling[0]:
            ceiling = (lam, keep, forget)
    return {"added": added, "points": curve, "reached": interpolate_at_keep(curve, target)["reached"]}
