"""Can an attacker still tell the forgotten facts from unseen ones? Membership inference on the forgotten facts at each
arm's matched-utility point, and its read-out: Spunge − baseline distance of the MIA AUC from the base's.

Called by `python bench/frontiers.py --mia` (after the grid, or over a finished grid with --readout-only). For every
cell the members are the forgotten domains' training facts (the facts file's rows `part == train` in the forget set, a
pair or more, grouped or not: what both arms unlearned) and the non-members the same domains' held-out facts
(`part == heldout`: never trained on or unlearned), written once to `<cell run>/grid/mia-inputs/{members,nonmembers}.jsonl`.
`spunge_merge.evaluate.mia.evaluate_mia` scores them (LOSS, zlib, Min-K %, Min-K %++) under:

- the base model, once per cell: `<cell run>/grid/base/mia/`;
- every seed's arms (the un-split baseline, each anchored baseline, each merge) at the frontier read-out's operating
  point, the measured λ on each side of keep avg = base − `readout.keep_drop` (`frontiers_relearn.operating_points`):
  `<cell run>/grid/<seed>/mia/<label>/`. A model is rebuilt without retraining (`grid_points.build_model`) only where
  its label lacks a result, and deleted again; a finished result on the same inputs is skipped on a rerun.

The read-out (`write_mia`; every seed's figures from `summarize_mia`): per arm the operating point's weights (the base
itself where it is one side, λ 0: its scores are measured anyway) mix the λ's AUCs per attack, and the compared figure
is the mixed AUC's distance from the base's, |AUC − AUC_base| in AUC points (× 100). The base saw neither the members nor
the non-members specifically, so it plays MUSE's retrained reference (PrivLeak's numerator). Lower is better: above the
base the forgotten facts are still recognisable, below it they look *less* familiar than unseen facts of their kind
(over-unlearning, itself a tell); the raw AUCs per arm say which side.

Interval: a hierarchical bootstrap drawn as `stats.hierarchical_bootstrap` draws it (seeds with replacement, then for
each drawn seed its members and its non-members, each resampled within itself), paired: one draw of texts serves both
arms, every λ of their operating points and the base, and each resample's AUCs are mixed and compared again. Verdict:
`matched.verdict` with lower better, the read-out's `min_seeds`, a level margin of `LEVEL_MARGIN` AUC points; no verdict
where some seed's operating point was not reached (as the frontier read-out).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spunge_merge.evaluate.matched import as_readout, matched_utility, verdict
from spunge_merge.evaluate.mia import ATTACKS, MIA_FILE, SCORES_FILE

INPUTS = "mia-inputs"


def mia_inputs(cell, root: Path) -> tuple[Path, Path]:
    """(members.jsonl, nonmembers.jsonl) of the cell under `root/grid/mia-inputs`: the forget set's training facts and its
    held-out facts, one `{"text": ...}` a line; rewritten only where the facts file now gives other texts."""
    from spunge_merge.errors import SpungeError
    from spunge_merge.fsutil import atomic_write_text, iter_jsonl

    sides: dict[str, list[str]] = {"train": [], "heldout": []}
    for _, row in iter_jsonl(cell.facts):
        if row.get("domain") in cell.pair and row.get("part") in sides and row.get("text"):
            sides[row["part"]].append(row["text"])
    if not sides["train"] or not sides["heldout"]:
        raise SpungeError(f"{cell.facts}: membership inference needs `text` rows with part train and heldout in "
                          f"{' and '.join(cell.pair)} (train {len(sides['train'])}, heldout {len(sides['heldout'])})")
    folder = root / "grid" / INPUTS
    paths = (folder / "members.jsonl", folder / "nonmembers.jsonl")
    for path, texts in zip(paths, (sides["train"], sides["heldout"]), strict=True):
        text = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
    return paths


def mia_dir(root: Path, seed: int, label: str) -> Path:
    """Where a grid label's MIA result lives: the base's once per cell, every other label's per seed."""
    return root / "grid" / "base" / "mia" if label == "base" else root / "grid" / str(seed) / "mia" / label


def scored(out: Path, inputs: tuple[Path, Path]) -> bool:
    """Whether `out` holds a result on these very input files (a facts file rewritten since means scoring again)."""
    from spunge_merge.data.loading import source_sha256
    from spunge_merge.fsutil import read_json

    if not (out / MIA_FILE).is_file():
        return False
    stored = read_json(out / MIA_FILE)
    return all(stored[side]["sha256"] == source_sha256(path) for side, path in zip(("members", "nonmembers"), inputs, strict=True))


def score(model, inputs: tuple[Path, Path], out: Path, what: str, device: str) -> None:
    """One model's membership inference on the cell's inputs (replacing a result on older inputs), timed."""
    from spunge_merge.evaluate.mia import evaluate_mia

    started = time.perf_counter()
    evaluate_mia(model, *inputs, out, device=device, force=(out / MIA_FILE).is_file())
    print(f"{what}: MIA {time.perf_counter() - started:.0f} s", flush=True)


def mia_cells(plan: dict, cells: list, settings, cell_dir, *, device: str = "cpu") -> None:
    """Score the base and every arm's operating point of every finished (cell, seed); see the module docstring."""
    from frontiers_relearn import finished_cells, matched_labels
    from grid_points import grid_model

    from spunge_merge.models import resolve_model
    from spunge_merge.unlearn import registry

    for cell, units in finished_cells(plan, cells, settings, cell_dir, verb="score"):
        root = cell_dir(plan, cell)
        inputs = mia_inputs(cell, root)
        base = resolve_model(cell.model)
        if not scored(mia_dir(root, 0, "base"), inputs):
            score(base, inputs, mia_dir(root, 0, "base"), f"{cell.key} base", device)
        sweep = settings.for_method(cell.method, cell.model)
        method = registry.get_method(cell.method)
        for unit in units:
            seed = unit["seed"]
            for name in matched_labels(unit, sweep.merges, plan):
                if scored(mia_dir(root, seed, name), inputs):
                    continue
                with grid_model(plan, cell, sweep, root, seed, name, base=base, method=method) as model_dir:
                    score(model_dir, inputs, mia_dir(root, seed, name), f"{cell.key} seed {seed} {name}", device)


# ------------------------------------------------------------------------------------------------
# Read-out

# 'level' when the whole interval lies within ± this many AUC points. Two points is about what one member moving from
# the bottom to the top of the ranking changes (1/m with m = 50–140 training facts in a pair: 0.7–2 points), so a
# difference inside it is a text or two, not a property of the merge; the frontier uses 2 accuracy points likewise.
LEVEL_MARGIN = 2.0
NAMES = {"loss": "LOSS", "zlib": "zlib", "min_k": "Min-K %", "min_k_plus_plus": "Min-K %++"}
SHOWN = ("min_k_plus_plus", "loss")  # the attacks of the Markdown tables; mia.json holds all four
Side = list[tuple[str, dict[str, float]]]  # (text, its attack scores) in the order the hook's inputs give them
Loader = Callable[[dict, str], dict[str, Side] | None]  # (unit, grid label or "base") -> {"members", "nonmembers"} or None


# ------------------------------------------------------------------------------------------------
# One seed: scores aligned across labels, AUCs, each arm's distance from the base


def read_scores(path: Path) -> dict[str, Side]:
    """mia.jsonl as {"members": [(text, scores)], "nonmembers": [...]} (a text too short to score has empty scores)."""
    from spunge_merge.fsutil import iter_jsonl

    found: dict[str, Side] = {"members": [], "nonmembers": []}
    for _, row in iter_jsonl(path):
        found["members" if row["member"] else "nonmembers"].append((row["text"], {a: row[a] for a in ATTACKS if a in row}))
    return found


def aligned(results: dict[str, dict[str, Side]], where: str) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """label -> attack -> (member scores, non-member scores) over the texts every label scored; every label must have
    scored the same texts in the same order (the cell's one pair of input files)."""
    from spunge_merge.errors import SpungeError

    first = next(iter(results))
    for name, result in results.items():
        for side in ("members", "nonmembers"):
            if [t for t, _ in result[side]] != [t for t, _ in results[first][side]]:
                raise SpungeError(f"{where}: {name}'s MIA {side} differ from {first}'s; delete the older mia/ results and rerun --mia")
    keep = {side: [i for i in range(len(results[first][side])) if all(len(r[side][i][1]) == len(ATTACKS) for r in results.values())]
            for side in ("members", "nonmembers")}
    return {name: {a: tuple(np.array([r[side][i][1][a] for i in keep[side]]) for side in ("members", "nonmembers"))
                   for a in ATTACKS} for name, r in results.items()}


def auc_matrix(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    """m × n: 1 where a member scores above a non-member, ½ where equal; its mean is the AUC (`stats.auc`)."""
    return (members[:, None] > nonmembers[None, :]) + 0.5 * (members[:, None] == nonmembers[None, :])


def resampled_auc(matrix: np.ndarray, member_counts: np.ndarray, nonmember_counts: np.ndarray) -> np.ndarray:
    """The AUC of each resample given how often it drew each member (rows × m) and each non-member (rows × n)."""
    m, n = matrix.shape
    return ((member_counts @ matrix) * nonmember_counts).sum(axis=1) / (m * n)


def distance(aucs: dict[str, Any], weights: dict[str, float]) -> Any:
    """100 · |Σ w · AUC(λ) − AUC(base)|: an arm's mixed AUC's distance from the base's, in AUC points."""
    return 100.0 * abs(sum(w * aucs[name] for name, w in weights.items()) - aucs["base"])


def arm_point(unit: dict, arm: str, readout) -> dict[str, Any]:
    """The arm's operating point in one unit: {weights: {label: w} (the base included where it is a side), lam, reached}."""
    matched = matched_utility(unit, arm, as_readout(readout))
    weights = {name: w for name, w in zip(matched["labels"], matched["weights"].values(), strict=True) if w > 0}
    return {"weights": weights, "lam": float(matched["lam"]), "reached": bool(matched["reached"])}


def seed_data(unit: dict, arms: list[str], readout, load: Loader, where: str) -> dict[str, Any] | None:
    """One seed's arms that have every result they need: {seed, points: {arm: arm_point}, matrices: {attack: {label: m × n}},
    auc: {label: {attack: AUC}}}; None where the base has no result."""
    points = {arm: arm_point(unit, arm, readout) for arm in arms}
    labels = {"base"} | {name for point in points.values() for name in point["weights"]}
    results = {name: load(unit, name) for name in sorted(labels)}
    if results["base"] is None:
        return None
    points = {arm: p for arm, p in points.items() if all(results[name] is not None for name in p["weights"])}
    scores = aligned({name: r for name, r in results.items() if r is not None}, where)
    matrices = {a: {name: auc_matrix(*per[a]) for name, per in scores.items()} for a in ATTACKS}
    return {"seed": unit["seed"], "points": points, "matrices": matrices,
            "auc": {name: {a: float(matrices[a][name].mean()) for a in ATTACKS} for name in scores}}


# ------------------------------------------------------------------------------------------------
# Spunge against a baseline over seeds


def bootstrap(seeds: list[dict], arms: list[str], *, n: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """attack -> arm -> n resampled values of the arm's distance averaged over the drawn seeds (one draw of texts per
    drawn seed serves every arm, λ and the base: paired). One seed: its texts alone are resampled."""
    rng = np.random.default_rng(seed)
    k = len(seeds)
    picks = rng.integers(0, k, size=(n, k)) if k > 1 else np.zeros((n, 1), dtype=int)
    draws = {a: {arm: np.zeros(picks.shape) for arm in arms} for a in ATTACKS}
    for position in range(picks.shape[1]):
        for index, data in enumerate(seeds):
            rows = np.flatnonzero(picks[:, position] == index)
            if not rows.size:
                continue
            m, n_non = next(iter(data["matrices"][ATTACKS[0]].values())).shape
            members = rng.multinomial(m, np.full(m, 1.0 / m), size=rows.size).astype(float)
            nonmembers = rng.multinomial(n_non, np.full(n_non, 1.0 / n_non), size=rows.size).astype(float)
            needed = {"base"} | {name for arm in arms for name in data["points"][arm]["weights"]}
            for a in ATTACKS:
                aucs = {name: resampled_auc(data["matrices"][a][name], members, nonmembers) for name in needed}
                for arm in arms:
                    draws[a][arm][rows, position] = distance(aucs, data["points"][arm]["weights"])
    return {a: {arm: values.mean(axis=1) for arm, values in per.items()} for a, per in draws.items()}


def compare(seeds: list[dict], spunge: str, baseline: str, readout) -> dict[str, dict[str, Any]]:
    """attack -> Spunge − baseline distance from the base: mean over seeds, 95 % interval, verdict, each arm's mean distance."""
    readout = as_readout(readout)
    boot = bootstrap(seeds, [spunge, baseline], n=readout.bootstrap.n, seed=readout.bootstrap.seed)
    reached = all(data["points"][arm]["reached"] for data in seeds for arm in (spunge, baseline))
    found = {}
    for a in ATTACKS:
        own = {arm: [distance({n: v[a] for n, v in data["auc"].items()}, data["points"][arm]["weights"]) for data in seeds]
               for arm in (spunge, baseline)}
        low, high = np.percentile(boot[a][spunge] - boot[a][baseline], [2.5, 97.5])
        said = verdict(float(low), float(high), len(seeds), better="lower", level_margin=LEVEL_MARGIN,
                       min_seeds=readout.min_seeds) if reached else "no verdict"
        found[a] = {"mean": _mean(own[spunge]) - _mean(own[baseline]), "low": float(low), "high": float(high),
                    "verdict": said, "spunge": _mean(own[spunge]), "baseline": _mean(own[baseline])}
    return found


def read_cell(units: list[dict], merges: list[str], anchored: list[str], readout, load: Loader, where: str) -> dict[str, Any]:
    """One cell: every Spunge merge against the plain and each anchored baseline, and each arm's mean AUCs."""
    baselines = ["baseline"] + [f"baseline-{m}" for m in anchored]
    arms = baselines + [f"spunge-{m}" for m in merges]
    seeds = [data for unit in units if (data := seed_data(unit, arms, readout, load, where)) is not None]
    comparisons = []
    for merge in merges:
        for against in baselines:
            both = [d for d in seeds if f"spunge-{merge}" in d["points"] and against in d["points"]]
            if both:
                missed = sum(not d["points"][arm]["reached"] for d in both for arm in (f"spunge-{merge}", against))
                comparisons.append({"merge": merge, "against": against, "seeds": sorted(d["seed"] for d in both),
                                    "not_reached": missed, "attacks": compare(both, f"spunge-{merge}", against, readout)})
    mean_aucs = {"base": {"lam": 0.0, "seeds": len(seeds), "not_reached": 0,
                          **{a: _mean([d["auc"]["base"][a] for d in seeds]) for a in ATTACKS}}}
    for arm in arms:
        have = [d for d in seeds if arm in d["points"]]
        if have:
            mean_aucs[arm] = {"lam": _mean([d["points"][arm]["lam"] for d in have]), "seeds": len(have),
                              "not_reached": sum(not d["points"][arm]["reached"] for d in have),
                              **{a: _mean([sum(w * d["auc"][n][a] for n, w in d["points"][arm]["weights"].items()) for d in have])
                                 for a in ATTACKS}}
    sizes = next(iter(seeds[0]["matrices"][ATTACKS[0]].values())).shape if seeds else (0, 0)
    return {"members": int(sizes[0]), "nonmembers": int(sizes[1]), "comparisons": comparisons, "aucs": mean_aucs}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# ------------------------------------------------------------------------------------------------
# Output


def render(summary: dict) -> str:
    lines = ["# Membership inference at matched utility: Spunge − baseline distance of the MIA AUC from the base's", "",
             f"Made by `{summary['command']}` ({summary['date']}).", ""]
    if not summary["cells"]:
        lines += ["No cell has scored operating points yet (`--mia` scores every finished cell's).", ""]
    for cell in summary["cells"]:
        lines += [f"## {cell['cell']}", "", f"{cell['members']} members (the forgotten domains' training facts) against "
                  f"{cell['nonmembers']} non-members (their held-out facts).", "",
                  "| Spunge merge | against | attack | Δ distance, AUC points [95 %] | verdict | distance Spunge / baseline | "
                  "seeds | not reached |", "|---|---|---|---|---|---|---:|---:|"]
        for entry in cell["comparisons"]:
            for a in SHOWN:
                c = entry["attacks"][a]
                lines.append(f"| {entry['merge']} | {entry['against']} | {NAMES[a]} | {c['mean']:+.1f} [{c['low']:+.1f}, "
                             f"{c['high']:+.1f}] | **{c['verdict']}** | {c['spunge']:.1f} / {c['baseline']:.1f} | "
                             f"{len(entry['seeds'])} | {entry['not_reached']} |")
        lines += ["", "AUC at each arm's operating point (mean over seeds; 0.5 chance, below the base's: over-unlearned):", "",
                  "| arm | λ (mean) | " + " | ".join(NAMES[a] for a in ATTACKS) + " | seeds |",
                  "|---|---:|" + "---:|" * len(ATTACKS) + "---:|"]
        for arm, entry in cell["aucs"].items():
            lines.append(f"| {arm} | {entry['lam']:.2f} | " + " | ".join(f"{entry[a]:.3f}" for a in ATTACKS) + f" | {entry['seeds']} |")
        lines.append("")
    readout = summary["readout"]
    lines += ["Each arm is read at its matched-utility point: the measured λ on each side of keep avg = base − "
              f"{readout['keep_drop']:g} points, each scored, their AUCs mixed with the frontier read-out's interpolation "
              "weights. Distance = |AUC − AUC_base| × 100 (the base saw neither set specifically: MUSE's retrained "
              "reference, PrivLeak's numerator); lower is better, and the raw AUCs above say on which side an arm lies. "
              "Δ = Spunge − baseline (negative: Spunge's forgotten facts look more like unseen ones). 95 % hierarchical "
              "bootstrap over seeds and, within a seed, members and non-members resampled apart, the same texts for both "
              f"arms, every λ and the base. Verdict only with ≥ {readout['min_seeds']} seeds and every operating point "
              "reached: helps / hurts when the interval excludes 0, level within ± "
              f"{summary['level_margin']:g} AUC points (about one member text moving across the whole ranking), else no "
              f"verdict. Tables: {', '.join(NAMES[a] for a in SHOWN)}; mia.json holds all four attacks and every seed's figures."]
    return "\n".join(lines) + "\n"


def grid_loader(root_of: Callable[[dict], Path]) -> Loader:
    """A `Loader` reading the hook's layout: `<cell run>/grid/<seed>/mia/<label>/mia.jsonl`, the base's `grid/base/mia/`."""
    def load(unit: dict, label: str) -> dict[str, Side] | None:
        folder = mia_dir(root_of(unit), unit["seed"], label)
        return read_scores(folder / SCORES_FILE) if (folder / MIA_FILE).is_file() else None

    return load


def _cell_units(plan: dict, cells: list, settings, cell_dir) -> list[tuple[Any, list[dict], Loader]]:
    """(cell, its finished units, a loader of its results) for each cell."""
    from frontiers_readout import collect
    from frontiers_relearn import cell_units

    rows = collect(plan, cells, settings, cell_dir)
    return [(cell, cell_units(rows, cell), grid_loader(lambda unit, root=cell_dir(plan, cell): root)) for cell in cells]


def summarize_mia(plan: dict, cells: list, settings, cell_dir) -> list[dict]:
    """One row per (cell, seed, arm) with its results: the operating point, each attack's mixed AUC, the base's and the distance."""
    from frontiers_relearn import grid_arms

    found = []
    for cell, units, load in _cell_units(plan, cells, settings, cell_dir):
        arms = grid_arms(settings.for_method(cell.method, cell.model).merges, plan["merges"])
        for unit in units:
            data = seed_data(unit, arms, plan["readout"], load, cell.key)
            for arm, point in (data or {"points": {}})["points"].items():
                mixed = {a: sum(w * data["auc"][n][a] for n, w in point["weights"].items()) for a in ATTACKS}
                base = data["auc"]["base"]
                found.append({"cell": cell.key, "seed": unit["seed"], "arm": arm, **point, "auc": mixed, "base_auc": base,
                              "distance": {a: 100.0 * abs(mixed[a] - base[a]) for a in ATTACKS}})
    return found


def write_mia(plan: dict, cells: list, settings, cell_dir, out: Path, *, command: str) -> dict:
    """RESULTS/mia.json (the read-out per cell, every seed's figures, the command) and mia.md."""
    import datetime

    from grid_points import anchored_merges

    from spunge_merge.fsutil import atomic_write_text, write_json

    readout = as_readout(plan["readout"])
    found = []
    for cell, units, load in _cell_units(plan, cells, settings, cell_dir):
        merges = list(settings.for_method(cell.method, cell.model).merges)
        entry = read_cell(units, merges, anchored_merges(merges, plan["merges"]), readout, load, cell.key)
        if entry["comparisons"]:
            found.append({"cell": cell.key, "task": cell.task, "model": cell.model, "method": cell.method,
                          "pair": list(cell.pair), **entry})
    summary = {"command": command, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "readout": readout.model_dump(), "level_margin": LEVEL_MARGIN, "cells": found,
               "per_seed": summarize_mia(plan, cells, settings, cell_dir)}
    # as mia.json stores it (keys sorted: base, then the baselines, then the merges), so mia.md is what its JSON renders to
    summary = json.loads(json.dumps(summary, default=str, sort_keys=True))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "mia.json", summary)
    atomic_write_text(out / "mia.md", render(summary))
    return summary
