"""Is split unlearning harder to undo? The robustness read-out: Spunge − baseline recovery under the relearning
attacks of `bench/frontiers_relearn.py`, at the matched-utility operating point, with the frontier's interval and
verdict rules (`spunge_merge.evaluate.matched`).

Input: the frontier units (`frontiers_readout.collect`: one per (forget pair, seed)) and the relearn results the hook
wrote for each attacked grid label. For each unit and arm the operating point is the read-out's `matched_utility`:
the measured λ on each side of keep avg = base − keep_drop, with its interpolation weights. The base (λ 0), when it is
one side, is not attacked (it forgot nothing, its recovery is undefined): the attacked side's weight counts alone (the
weights are renormalised over attacked labels, as `frontiers_relearn.summarize` does).

At every attack step, for both forgotten domains (in-subset: the attacked one, the pair's first; cross-subset: the
other), two figures per attacked model:
- points: accuracy recovered, 100 · (acc_step − acc_step0), in accuracy points;
- recovery: 100 · (acc_step − acc_step0) / (acc_base − acc_step0), in % of what was forgotten; undefined where the model
  forgot less than `MIN_FORGOTTEN` of that domain (that unit is left out of the comparison, and counted). A share of a
  few facts is noise: a merge that forgot 3 of 46 facts and lost one more to the attack would read as −33 %, and
  could carry a verdict for an arm that never forgot.
Both are linear in the facts' verdicts (the denominator is fixed per model), so where the results hold per-fact
verdicts (`curve[].domains[].verdicts`) each held-out fact gets a value mixed across the two λ with the read-out's
weights and Spunge − baseline is a per-fact paired difference; otherwise the unit contributes its mixed value alone.

Interval: `hierarchical_bootstrap` over (pair, seed) units and, below them, facts. Verdict: `matched.verdict` with
lower is better (Spunge recovering less is the advantage splitting might have): helps / hurts when the interval
excludes 0, level within ± level_margin points, else no verdict; always no verdict with fewer than min_seeds seeds or
where some unit's operating point was not reached (as in the frontier read-out).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spunge_merge.evaluate.matched import as_readout, matched_utility, verdict
from spunge_merge.evaluate.stats import signed_interval

ROLES = ("in_subset", "cross_subset")
MIN_FORGOTTEN = 0.10  # accuracy: a model must have forgotten at least 10 points of a domain for its recovery % to count
FIGURES = ("points", "recovery")
Figure = tuple[float | None, list[float] | None]  # (the model's value, per-fact values or None)
Loader = Callable[[dict, str, str], dict | None]  # (unit, grid label, attack) -> relearn result or None


# ------------------------------------------------------------------------------------------------
# One attacked model, one arm's operating point


def label_figures(result: dict, domain: str) -> dict[int, dict[str, Figure]]:
    """step -> {points, recovery} of one attacked model for one domain (per-fact values where verdicts are stored)."""
    start = result["curve"][0]["domains"][domain]
    base = ((result.get("base") or {}).get("domains") or {}).get(domain)
    gap = None if base is None or base - start["accuracy"] < MIN_FORGOTTEN - 1e-12 else base - start["accuracy"]
    found = {}
    for point in result["curve"]:
        entry = point["domains"][domain]
        value = 100.0 * (entry["accuracy"] - start["accuracy"])
        items = None
        if entry.get("verdicts") is not None and start.get("verdicts") is not None and len(entry["verdicts"]) == len(start["verdicts"]):
            items = [100.0 * (a - b) for a, b in zip(entry["verdicts"], start["verdicts"], strict=True)]
        recovery: Figure = (None, None) if gap is None else (value / gap, None if items is None else [x / gap for x in items])
        found[int(point["step"])] = {"points": (value, items), "recovery": recovery}
    return found


def mix(figures: list[Figure], weights: list[float]) -> Figure:
    """The weighted mean of several models' figures (per fact too where every model has the same facts)."""
    if any(value is None for value, _ in figures):
        return (None, None)
    total = sum(weights)
    value = sum(w * v for (v, _), w in zip(figures, weights, strict=True)) / total
    lists = [items for _, items in figures]
    if any(items is None for items in lists) or len({len(items) for items in lists}) != 1:
        return (value, None)
    return (value, [sum(w * items[i] for items, w in zip(lists, weights, strict=True)) / total for i in range(len(lists[0]))])


def operating_point(unit: dict, arm: str, readout, attack: str, load: Loader) -> dict[str, Any] | None:
    """One arm's operating point in one unit under one attack: {reached, lam, weights, steps: {step: {role: {figure:
    Figure}}}}; None where a label it needs has no result."""
    matched = matched_utility(unit, arm, as_readout(readout))
    weights = {name: w for name, w in zip(matched["labels"], matched["weights"].values(), strict=True) if name != "base" and w > 0}
    results = {name: load(unit, name, attack) for name in weights}
    if not weights or any(result is None for result in results.values()):
        return None
    per_label = {name: {role: label_figures(result, domain) for role, domain in zip(ROLES, unit["pair"], strict=True)}
                 for name, result in results.items()}
    steps = sorted(set.intersection(*(set(figures[ROLES[0]]) for figures in per_label.values())))
    names = list(weights)
    return {"reached": bool(matched["reached"]), "lam": matched["lam"], "weights": weights,
            "steps": {step: {role: {figure: mix([per_label[n][role][step][figure] for n in names], [weights[n] for n in names])
                                    for figure in FIGURES} for role in ROLES} for step in steps}}


# ------------------------------------------------------------------------------------------------
# Spunge against the baseline over units


def difference(spunge: Figure, baseline: Figure) -> list[float] | None:
    """One unit's paired difference: per fact where both have the same facts, else the two values' difference."""
    if spunge[0] is None or baseline[0] is None:
        return None
    if spunge[1] is not None and baseline[1] is not None and len(spunge[1]) == len(baseline[1]):
        return [s - b for s, b in zip(spunge[1], baseline[1], strict=True)]
    return [spunge[0] - baseline[0]]


def compare_step(pairs: list[tuple[dict, dict, dict]], step: int, role: str, figure: str, readout) -> dict[str, Any]:
    """Spunge − baseline over the units at one step: mean, 95 % interval, verdict, both arms' means, units left out."""
    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    readout = as_readout(readout)
    diffs, seeds, arms, left_out = [], set(), {"spunge": [], "baseline": []}, 0
    for unit, spunge, baseline in pairs:
        s, b = spunge["steps"][step][role][figure], baseline["steps"][step][role][figure]
        found = difference(s, b)
        if found is None:
            left_out += 1
            continue
        diffs.append(found)
        seeds.add(unit["seed"])
        arms["spunge"].append(s[0])
        arms["baseline"].append(b[0])
    if not diffs:
        return {"mean": None, "low": None, "high": None, "n_seeds": 0, "units": 0, "left_out": left_out, "verdict": "no verdict",
                "spunge": None, "baseline": None}
    boot = hierarchical_bootstrap(diffs, n=readout.bootstrap.n, seed=readout.bootstrap.seed)
    reached = all(p["reached"] for _, s, b in pairs for p in (s, b))
    said = verdict(boot["low"], boot["high"], len(seeds), better="lower", level_margin=readout.level_margin,
                   min_seeds=readout.min_seeds) if reached else "no verdict"
    return {"mean": boot["mean"], "low": boot["low"], "high": boot["high"], "n_seeds": len(seeds), "units": len(diffs),
            "left_out": left_out, "verdict": said, "spunge": _mean(arms["spunge"]), "baseline": _mean(arms["baseline"])}


def compare(pairs: list[tuple[dict, dict, dict]], readout) -> dict[str, Any]:
    """role -> figure -> step -> `compare_step`, over the steps every unit's both arms were read at."""
    steps = sorted(set.intersection(*(set(p["steps"]) for _, s, b in pairs for p in (s, b))))
    return {role: {figure: {step: compare_step(pairs, step, role, figure, readout) for step in steps} for figure in FIGURES}
            for role in ROLES}


def curves(pairs: list[tuple[dict, dict, dict]]) -> list[dict[str, Any]]:
    """Per unit and arm, the recovery % per step of both roles (the plot's lines; per-seed figures in the summary)."""
    def arm(point: dict) -> dict:
        return {"lam": round(point["lam"], 4), "weights": point["weights"], "reached": point["reached"],
                **{role: {step: figures[role]["recovery"][0] for step, figures in point["steps"].items()} for role in ROLES}}

    return [{"pair": "+".join(unit["pair"]), "seed": unit["seed"], "spunge": arm(s), "baseline": arm(b)} for unit, s, b in pairs]


def read_row(units: list[dict], merges: list[str], attacks: list[str], readout, load: Loader) -> dict[str, dict[str, Any]]:
    """merge -> attack -> the comparison over the units whose both arms' operating points were attacked."""
    found: dict[str, dict[str, Any]] = {}
    for merge in merges:
        for attack in attacks:
            pairs = []
            for unit in units:
                spunge = operating_point(unit, f"spunge-{merge}", readout, attack, load)
                baseline = operating_point(unit, "baseline", readout, attack, load)
                if spunge is not None and baseline is not None:
                    pairs.append((unit, spunge, baseline))
            if pairs:
                found.setdefault(merge, {})[attack] = {
                    "units": len(pairs), "seeds": len({u["seed"] for u, _, _ in pairs}),
                    "pairs": sorted({"+".join(u["pair"]) for u, _, _ in pairs}), "missing": len(units) - len(pairs),
                    "comparison": compare(pairs, readout), "curves": curves(pairs)}
    return found


def rows_by_set(units: list[dict], merges: list[str], attacks: list[str], readout, load: Loader) -> tuple[dict, dict]:
    """(the pooled row, {forget set `a+b`: its own row}), as the frontier read-out gives them."""
    sets: dict[str, list[dict]] = {}
    for unit in units:
        sets.setdefault("+".join(unit["pair"]), []).append(unit)
    return (read_row(units, merges, attacks, readout, load),
            {name: read_row(members, merges, attacks, readout, load) for name, members in sorted(sets.items())})


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# ------------------------------------------------------------------------------------------------
# Output


def plot_row(entry: dict[str, Any], title: str, path: Path) -> None:
    """Recovery % against attack steps: one panel per (attack, role), a thin line per unit and arm, the means bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(entry)
    fig, axes = plt.subplots(len(attacks), len(ROLES), figsize=(9, 2.8 * len(attacks)), squeeze=False)
    for row, attack in enumerate(attacks):
        for col, role in enumerate(ROLES):
            ax = axes[row][col]
            for index, arm in enumerate(("baseline", "spunge")):
                lines = [sorted((int(step), value) for step, value in c[arm][role].items() if value is not None)
                         for c in entry[attack]["curves"]]
                for line in lines:
                    ax.plot([s for s, _ in line], [v for _, v in line], color=f"C{index}", lw=0.7, alpha=0.4)
                steps = sorted({s for line in lines for s, _ in line})
                means = [(s, _mean([v for line in lines for t, v in line if t == s])) for s in steps]
                ax.plot([s for s, _ in means], [v for _, v in means], color=f"C{index}", lw=2, marker="o", ms=3,
                        label=f"{arm} (mean of {len(lines)} units)")
            ax.axhline(0, color="grey", lw=0.6)
            ax.set_title(f"{attack} · {role.replace('_', '-')}", fontsize=8)
            ax.set_xlabel("attack step", fontsize=8)
            ax.set_ylabel("recovery %", fontsize=8)
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ci(entry: dict) -> str:
    return "–" if entry["mean"] is None else signed_interval(entry)


def _last(comparison: dict, role: str, figure: str) -> tuple[int | None, dict | None]:
    steps = comparison[role][figure]
    if not steps:
        return None, None
    step = max(steps, key=int)
    return step, steps[step]


def _table_rows(label: list[str], row: dict) -> list[str]:
    lines = []
    for merge, per_attack in row.items():
        for attack, entry in per_attack.items():
            for role in ROLES:
                step, rec = _last(entry["comparison"], role, "recovery")
                _, pts = _last(entry["comparison"], role, "points")
                if rec is None:
                    continue
                arms = "–" if rec["spunge"] is None else f"{rec['spunge']:.0f} / {rec['baseline']:.0f}"
                lines.append(f"| {' | '.join(label)} | {merge} | {attack} | {role.replace('_', '-')} | {step} | {_ci(rec)} | "
                             f"**{rec['verdict']}** | {arms} | {_ci(pts)} | **{pts['verdict']}** | {entry['units']} "
                             f"({len(entry['pairs'])} × {entry['seeds']} seeds) | {rec['left_out']} |")
    return lines


HEAD = ("| merge | attack | domain | step | Δ recovery % [95 %] | verdict | recovery % Spunge / baseline | "
        "Δ points recovered [95 %] | verdict | units | left out |")


def render(summary: dict) -> str:
    readout = summary["readout"]
    lines = ["# Is split unlearning harder to undo? Spunge − baseline recovery at matched utility", "",
             f"Made by `{summary['command']}` ({summary['date']}); attacks: preset {summary['preset']}.", "",
             "| method | model " + HEAD, "|---|---" + "|---" * 11 + "|"]
    for row in summary["rows"]:
        lines += _table_rows([row["method"], row["model"]], row["pooled"])
    lines += ["", "## Per forget set", "", "| method | model | forget set " + HEAD, "|---|---|---" + "|---" * 11 + "|"]
    for row in summary["rows"]:
        for name, entry in row["sets"].items():
            lines += _table_rows([row["method"], row["model"], name], entry)
    lines += ["", "Plots (recovery % against attack steps, every unit's curve for both arms): "
              + ", ".join(f"`{p}`" for row in summary["rows"] for p in row["plots"].values()), "",
              "Each arm is attacked at its matched-utility point: the measured λ on each side of keep avg = base − "
              f"{readout.get('keep_drop', 5.0):g} points, mixed with the frontier read-out's interpolation weights (a base "
              "side is not attacked: the other side counts alone). In-subset: the attacked (first) forgotten domain's "
              "held-out facts; cross-subset: the other forgotten domain's. Recovery % = 100 · (acc_step − acc_0) / "
              f"(acc_base − acc_0) (a unit whose model forgot less than {100 * MIN_FORGOTTEN:g} points of the domain is left out); "
              "points = 100 · (acc_step − acc_0). Δ = Spunge − baseline at the last attack step (every step in relearn.json): "
              "negative means Spunge recovers less. 95 % hierarchical bootstrap over (pair, seed) units and held-out facts "
              f"(per fact where the results hold each fact's verdict). Verdict only with ≥ {readout.get('min_seeds', 3)} seeds and every "
              "operating point reached: helps (Spunge recovers less) / hurts when the interval excludes 0, level within ± "
              f"{readout.get('level_margin', 2.0):g} points, else no verdict."]
    return "\n".join(lines) + "\n"


def grid_loader(root_of: Callable[[dict], Path]) -> Loader:
    """A `Loader` reading `<cell run>/grid/<seed>/relearn/<label>/<attack>/relearn.json` (the hook's layout)."""
    from frontiers_relearn import RELEARN_FILE

    from spunge_merge.fsutil import read_json

    def load(unit: dict, label: str, attack: str) -> dict | None:
        file = root_of(unit) / "grid" / str(unit["seed"]) / "relearn" / label / attack / RELEARN_FILE
        return read_json(file) if file.is_file() else None

    return load


def write_robustness(plan: dict, cells: list, settings, cell_dir, out: Path, *, preset: str, command: str) -> dict:
    """RESULTS/relearn.json (the read-out, its per-seed figures, the command) and relearn.md, one PNG per (row, merge)."""
    import datetime
    import json

    from frontiers_readout import collect
    from frontiers_relearn import attacks, pairs_only, summarize

    from spunge_merge.fsutil import atomic_write_text, write_json

    cells = pairs_only(cells)  # a set of more than two domains is not attacked (frontiers_relearn.pairs_only)
    roots = {(c.task, c.method, c.model, tuple(c.pair)): cell_dir(plan, c) for c in cells}
    names = list(attacks(cells[0], preset)) if cells else []
    rows = []
    for (task, method, model), units in collect(plan, cells, settings, cell_dir).items():
        load = grid_loader(lambda unit, key=(task, method, model): roots[(*key, tuple(unit["pair"]))])
        merges = list(settings.for_method(method, model).merges)
        pooled, sets = rows_by_set(units, merges, names, plan["readout"], load)
        if not pooled:  # nothing of this row attacked yet
            continue
        plots = {}
        for merge, entry in pooled.items():
            plots[merge] = f"relearn-{task}-{method}-{model}-{merge}.png"
            plot_row(entry, f"{task} · {method} · {model}: spunge-{merge} vs baseline, {preset}", out / plots[merge])
        rows.append({"task": task, "method": method, "model": model, "pooled": pooled, "sets": sets, "plots": plots})
    summary = {"command": command, "preset": preset, "readout": dict(plan["readout"]), "rows": rows,
               "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "per_seed": summarize(plan, cells, settings, cell_dir, preset=preset)}
    summary = json.loads(json.dumps(summary, default=str))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "relearn.json", summary)
    atomic_write_text(out / "relearn.md", render(summary))
    return summary
