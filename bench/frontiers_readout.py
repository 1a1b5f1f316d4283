"""The frontier benchmark's read-out: Spunge against the baseline at matched utility, with honest intervals.

Why matched utility: an arm can forget more simply by damaging more. Each arm is a curve over λ
(the base model is λ = 0 of every arm); for each (forget pair, seed) unit the read-out takes, on each
arm's curve, the forget avg at the keep avg where the model has lost `keep_drop` points against the base
(keep avg = base − 5), interpolating linearly between the two λ points that bracket it (the first
crossing along λ). An arm that never loses that much uses its point nearest the target and is flagged
("not reached"); so is one whose crossing lies between λ points too far apart to interpolate across (a
base-to-broken-model gap in keep, or a cliff from forgetting nothing to forgetting everything). The
interpolation is linear in each fact's verdict, so every fact gets an interpolated value with the same
weights, and Spunge − baseline is a per-fact paired difference.

The interval: `hierarchical_bootstrap` with (pair, seed) units as its upper level and the forgotten
domains' held-out facts as strata below (the weights are held fixed: the interval covers seeds, pairs
and facts, not the uncertainty of where the keep curve crosses the target).

The verdict (forget avg: lower is better): with fewer than `min_seeds` seeds, "no verdict"; else
"helps" or "hurts" when the interval excludes 0, "level" when it lies within ± `level_margin`
points, otherwise "no verdict" (the interval is too wide to say either).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TIE = 1e-9
# Linear interpolation is trusted across at most this many points of keep avg: a wider bracket (the base and a λ
# that already broke the model) says nothing about where the curve crosses, so the unit counts as not reached.
MAX_KEEP_GAP = 25.0
# Nor across a bracket whose ends differ by more than this many points of forget avg: an arm that goes from
# forgetting nothing to forgetting everything between two λ points could cross the target keep anywhere on
# that cliff, and the straight line through it invents the forget avg there.
MAX_FORGET_GAP = 50.0
Items = dict[str, dict[str, float]]  # domain → fact key → 100 or 0


# ------------------------------------------------------------------------------------------------
# Pure rules (tests/test_frontiers_readout.py checks them by hand)


def _repo_relative(path) -> str:
    """A path as the repository names it (no machine's absolute path in a published summary)."""
    repo = Path(__file__).resolve().parents[1]
    path = Path(path)
    return str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)


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
    """
    ordered = sorted(range(len(points)), key=lambda i: points[i][0])
    for a, b in zip(ordered, ordered[1:], strict=False):
        (lam_a, keep_a, forget_a), (lam_b, keep_b, forget_b) = points[a], points[b]
        if abs(keep_a - target) <= TIE:
            return {"forget": forget_a, "lam": lam_a, "weights": {a: 1.0}, "reached": True}
        if abs(keep_b - target) <= TIE:
            return {"forget": forget_b, "lam": lam_b, "weights": {b: 1.0}, "reached": True}
        if keep_a > target > keep_b:
            w = (keep_a - target) / (keep_a - keep_b)
            forget_gap = abs(forget_a - forget_b)
            return {"forget": (1 - w) * forget_a + w * forget_b, "lam": (1 - w) * lam_a + w * lam_b,
                    "weights": {a: 1 - w, b: w},
                    "reached": (keep_a - keep_b <= max_gap or forget_gap <= TIE) and forget_gap <= max_forget_gap}
    last = ordered[-1]
    if abs(points[last][1] - target) <= TIE:
        return {"forget": points[last][2], "lam": points[last][0], "weights": {last: 1.0}, "reached": True}
    nearest = min(ordered, key=lambda i: (abs(points[i][1] - target), -points[i][0]))
    return {"forget": points[nearest][2], "lam": points[nearest][0], "weights": {nearest: 1.0}, "reached": False}


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


# ------------------------------------------------------------------------------------------------
# Reading finished evaluations


def collect(plan: dict, cells: list, settings, cell_dir) -> dict[tuple[str, str, str], list[dict]]:
    """{(task, method, model): [unit]} with one unit per (pair, seed) whose every model is evaluated:
    {pair, seed, facts, fallback, points: {label: {"keep": (v, items), "forget": (v, items), "ppl": v}}}."""
    from grid_points import label

    from spunge_merge.evaluate.knowledge import KNOWLEDGE_FILE
    from spunge_merge.fsutil import read_json
    from spunge_merge.pipeline.seeds import _knowledge

    rows: dict[tuple[str, str, str], list[dict]] = {}
    for cell in cells:
        forget = list(cell.pair)
        sweep = settings.for_method(cell.method)
        labels = ["base"] + [label("baseline", x) for x in sweep.baseline_lambdas] + [
            label(f"spunge-{m}", x) for m in sweep.merges for x in sweep.lambdas]
        for seed in settings.seeds:
            root = cell_dir(plan, cell)
            dirs = {name: (root / "grid" / "base" if name == "base" else root / "grid" / str(seed) / "eval" / name)
                    for name in labels}
            if not all((d / KNOWLEDGE_FILE).is_file() and (d / "perplexity.json").is_file() for d in dirs.values()):
                continue
            points = {}
            for name, d in dirs.items():
                figures = _knowledge(d, forget)
                points[name] = {"keep": figures["keep avg"], "forget": figures["forget avg"],
                                "ppl": float(read_json(d / "perplexity.json")["perplexity"])}
            rows.setdefault((cell.task, cell.method, cell.model), []).append(
                {"pair": list(cell.pair), "seed": seed, "facts": str(cell.facts), "fallback": cell.fallback, "points": points})
    return rows


def arm_curve(unit: dict, arm: str) -> list[tuple[str, float]]:
    """[(label, λ)] of one arm in a unit, base first."""
    from grid_points import arm_and_lambda

    found = [("base", 0.0)] + sorted(((name, arm_and_lambda(name)[1]) for name in unit["points"]
                                      if name != "base" and arm_and_lambda(name)[0] == arm), key=lambda x: x[1])
    return found


def _triples(unit: dict, curve: list[tuple[str, float]]) -> list[tuple[float, float, float]]:
    return [(lam, unit["points"][name]["keep"][0], unit["points"][name]["forget"][0]) for name, lam in curve]


def _matched_utility(unit: dict, arm: str, keep_drop: float) -> dict[str, Any]:
    curve = arm_curve(unit, arm)
    target = unit["points"]["base"]["keep"][0] - keep_drop
    found = interpolate_at_keep(_triples(unit, curve), target)
    names = [curve[i][0] for i in found["weights"]]
    items = [unit["points"][n]["forget"][1] for n in names]
    mixed = mix_items(items, list(found["weights"].values())) if all(i is not None for i in items) else None
    return {**found, "items": mixed, "target": target, "labels": names}


def _bootstrap(diffs: list, config: dict) -> dict[str, Any]:
    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    return hierarchical_bootstrap(diffs, n=int(config.get("n", 2000)), seed=int(config.get("seed", 0)))


def _paired(a: tuple[float, Items | None], b: tuple[float, Items | None]) -> Any:
    if a[1] is not None and b[1] is not None and a[1].keys() == b[1].keys():
        return item_differences(a[1], b[1])
    return [a[0] - b[0]]


def read_row(units: list[dict], merges: list[str], readout: dict) -> dict[str, Any]:
    """One (task, method, model) row: every merge against the baseline; the best merge; its verdict."""
    keep_drop, margin = float(readout["keep_drop"]), float(readout["level_margin"])
    min_seeds, boot = int(readout["min_seeds"]), dict(readout.get("bootstrap", {}))
    n_seeds = len({u["seed"] for u in units})
    baseline = [_matched_utility(u, "baseline", keep_drop) for u in units]
    per_merge = {}
    for merge in merges:
        arm = f"spunge-{merge}"
        spunge = [_matched_utility(u, arm, keep_drop) for u in units]
        diffs = [item_differences(s["items"], b["items"]) if s["items"] is not None and b["items"] is not None
                 else [s["forget"] - b["forget"]] for s, b in zip(spunge, baseline, strict=True)]
        matched = _bootstrap(diffs, boot)
        at_one = {}
        for figure in ("forget", "keep"):
            name_s, name_b = f"{arm}-lam1", "baseline-lam1"
            if all(name_s in u["points"] and name_b in u["points"] for u in units):
                at_one[figure] = _bootstrap([_paired(u["points"][name_s][figure], u["points"][name_b][figure]) for u in units], boot)
        forgetting, short = [], 0  # short: (unit, arm)s whose sweep never forgets enough (compared at unmatched forgetting)
        for u in units:
            pick = {}
            for which in (arm, "baseline"):
                curve = arm_curve(u, which)
                pick[which] = curve[pick_matched_forgetting(_triples(u, curve), float(readout["forget_at_most"]))][0]
                short += u["points"][pick[which]]["forget"][0] > float(readout["forget_at_most"])
            forgetting.append(_paired(u["points"][pick[arm]]["keep"], u["points"][pick["baseline"]]["keep"]))
        per_merge[merge] = {
            "matched_utility": {**_plain(matched), "verdict": "no verdict" if any(not x["reached"] for x in spunge + baseline)
                                else verdict(matched["low"], matched["high"], n_seeds, level_margin=margin, min_seeds=min_seeds),
                                "spunge_forget": _mean([s["forget"] for s in spunge]),
                                "baseline_forget": _mean([b["forget"] for b in baseline]),
                                "spunge_lambda": [round(s["lam"], 3) for s in spunge],
                                "baseline_lambda": [round(b["lam"], 3) for b in baseline],
                                "spunge_not_reached": sum(not s["reached"] for s in spunge),
                                "baseline_not_reached": sum(not b["reached"] for b in baseline)},
            "lambda_1": {k: {**_plain(v), "verdict": verdict(v["low"], v["high"], n_seeds, better="lower" if k == "forget" else "higher",
                                                             level_margin=margin, min_seeds=min_seeds)} for k, v in at_one.items()},
            "matched_forgetting_keep": {**_plain(b := _bootstrap(forgetting, boot)), "not_reached": short,
                                        "verdict": "no verdict" if short else verdict(
                                            b["low"], b["high"], n_seeds, better="higher", level_margin=margin,
                                            min_seeds=min_seeds)},
        }
    best = min(per_merge, key=lambda m: per_merge[m]["matched_utility"]["mean"])
    return {"units": len(units), "seeds": n_seeds, "pairs": sorted({"+".join(u["pair"]) for u in units}),
            "fallback_facts": any(u["fallback"] for u in units), "best": best, "merges": per_merge,
            "base_keep": _mean([u["points"]["base"]["keep"][0] for u in units]),
            "base_forget": _mean([u["points"]["base"]["forget"][0] for u in units]),
            "why": _why(best, per_merge[best]) if per_merge[best]["matched_utility"]["verdict"] != "helps" else ""}


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


# ------------------------------------------------------------------------------------------------
# Output


def _ci(entry: dict) -> str:
    return f"{entry['mean']:+.1f} [{entry['low']:+.1f}, {entry['high']:+.1f}]"


def _forgetting(entry: dict) -> str:
    """Δ keep at matched forgetting, marked where some arm never forgot enough (its most-forgetting point stood in)."""
    missing = entry["not_reached"]
    return _ci(entry) + (f" (forget ≤ target not reached by {missing} unit-arm{'s' if missing > 1 else ''})" if missing else "")


def render(summary: dict) -> str:
    readout = summary["readout"]
    lines = ["# Where does splitting pay? Spunge vs. the un-split baseline on knowledge frontiers", "",
             "| task | method | model | best Spunge merge | Δ forget at matched utility | verdict | units | not reached "
             "(Spunge/baseline) | Δ forget at λ = 1 | Δ keep at λ = 1 | Δ keep at matched forgetting |",
             "|---|---|---|---|---|---|---:|---|---|---|---|"]
    for row in summary["rows"]:
        best = row["merges"][row["best"]]
        m, one = best["matched_utility"], best["lambda_1"]
        lines.append(f"| {row['task']} | {row['method']} | {row['model']}{' †' if row['fallback_facts'] else ''} | {row['best']} | "
                     f"{_ci(m)} | **{m['verdict']}** | {row['units']} ({len(row['pairs'])} pair{'s' if len(row['pairs']) > 1 else ''}"
                     f" × {row['seeds']} seeds) | {m['spunge_not_reached']}/{m['baseline_not_reached']} | "
                     f"{_ci(one['forget']) if 'forget' in one else '–'} | {_ci(one['keep']) if 'keep' in one else '–'} | "
                     f"{_forgetting(best['matched_forgetting_keep'])} |")
    if any(row["fallback_facts"] for row in summary["rows"]):
        lines += ["", f"† scored on the fallback facts file ({Path(summary['fallback_facts']).name}), not the model's own."]
    lines += ["", f"Matched utility: each arm's forget avg at keep avg = base − {readout['keep_drop']:g} points (interpolated "
              "along λ; base = λ 0). A unit counts as not reached where its arm never gets down to that keep avg, or "
              f"where the two λ points around it are more than {MAX_KEEP_GAP:g} points of keep avg (unless both forget the "
              f"same) or {MAX_FORGET_GAP:g} points of forget avg apart; a merge with such a unit has no verdict. "
              "Spunge − baseline in points (negative: Spunge forgets more at the same utility), 95 % "
              "hierarchical bootstrap over (pair, seed) units and held-out facts. Verdict only with ≥ "
              f"{readout['min_seeds']} seeds: helps / hurts when the interval excludes 0, level when it lies within ± "
              f"{readout['level_margin']:g} points, else no verdict. The best merge is the one with the lowest mean "
              "(chosen after looking: its interval is optimistic when several merges are close). Secondary: at λ = 1 "
              f"for both arms, and at matched forgetting (each arm's best keep avg among forget avg ≤ "
              f"{readout['forget_at_most']:g} %; Δ keep, higher is better; where an arm's sweep never forgets that much, "
              "its most-forgetting point stands in, the row says so and gives no verdict)."]
    for row in summary["rows"]:
        lines += ["", f"## {row['task']} · {row['method']} · {row['model']}", "",
                  f"Pairs: {', '.join(row['pairs'])}; seeds: {row['seeds']}. Base: keep avg {row['base_keep']:.1f} %, "
                  f"forget avg {row['base_forget']:.1f} %. Frontier: `{row['plot']}`.", ""]
        if row["why"]:
            lines += [f"Nothing helps; {row['why']}.", ""]
        lines += ["| Spunge merge | Δ forget at matched utility | verdict | Spunge λ there (per unit) | baseline λ there | "
                  "Δ forget at λ = 1 | Δ keep at λ = 1 | Δ keep at matched forgetting |", "|---|---|---|---|---|---|---|---|"]
        for merge, entry in row["merges"].items():
            m, one = entry["matched_utility"], entry["lambda_1"]
            lines.append(f"| {merge} | {_ci(m)} | {m['verdict']} | {', '.join(f'{x:g}' for x in m['spunge_lambda'])} | "
                         f"{', '.join(f'{x:g}' for x in m['baseline_lambda'])} | "
                         f"{_ci(one['forget']) + ' ' + one['forget']['verdict'] if 'forget' in one else '–'} | "
                         f"{_ci(one['keep']) + ' ' + one['keep']['verdict'] if 'keep' in one else '–'} | "
                         f"{_forgetting(entry['matched_forgetting_keep'])} {entry['matched_forgetting_keep']['verdict']} |")
        lines += ["", "Points (mean over units; forget avg / keep avg / retain PPL):", "",
                  "| model | forget avg % | keep avg % | retain PPL |", "|---|---:|---:|---:|"]
        for name, p in row["points"].items():
            lines.append(f"| {name} | {p['forget']:.1f} | {p['keep']:.1f} | {p['ppl']:.2f} |")
    lines += ["", f"Wall time of this invocation: {summary['seconds']:.0f} s ({summary['date']}, OMP_NUM_THREADS=1, "
              "2-core shared machine).", "", summary["plan_markdown"].replace("# Frontier", "## Frontier")]
    return "\n".join(lines) + "\n"


def plot_row(units: list[dict], merges: list[str], title: str, target: float, path: Path) -> None:
    """Keep avg (x) against forget avg (y): one colour per arm, a thin line per (pair, seed), the mean bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for index, arm in enumerate(["baseline"] + [f"spunge-{m}" for m in merges]):
        colour = f"C{index}"
        curves = [_triples(u, arm_curve(u, arm)) for u in units]
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


def write_outputs(rows: dict, plan: dict, settings, out: Path, *, plan_markdown: str, seconds: float, quick: bool) -> dict:
    """summary.json, summary.md and one frontier PNG per row under `out`; returns the summary."""
    import datetime

    from spunge_merge.fsutil import atomic_write_text, write_json

    summary_rows = []
    for (task, method, model), units in rows.items():
        row = read_row(units, settings.merges, plan["readout"])
        names = list(units[0]["points"])
        row["points"] = {n: {k: _mean([u["points"][n][k][0] if k != "ppl" else u["points"][n]["ppl"] for u in units])
                             for k in ("forget", "keep", "ppl")} for n in names}
        plot = f"frontier-{task}-{method}-{model}.png"
        plot_row(units, settings.merges, f"{task} · {method} · {model}: {len(units)} units", row["base_keep"]
                 - float(plan["readout"]["keep_drop"]), out / plot)
        summary_rows.append({"task": task, "method": method, "model": model, "plot": plot, **row})
    summary = {"quick": quick, "rows": summary_rows, "readout": plan["readout"], "fallback_facts": _repo_relative(plan["fallback_facts"]),
               "settings": {"seeds": settings.seeds, "merges": {m: plan["merges"][m] for m in settings.merges},
                            "lambdas": settings.lambdas, "baseline_lambdas": settings.baseline_lambdas,
                            "method_lambdas": settings.method_lambdas},
               "seconds": round(seconds, 1), "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "plan_markdown": plan_markdown}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", json.loads(json.dumps(summary, default=str)))
    atomic_write_text(out / "summary.md", render(summary))
    return summary
