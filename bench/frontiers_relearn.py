"""Is split unlearning harder to undo? The relearning attacks of `spunge eval relearn` at each arm's matched-utility point.

Called by `python bench/frontiers.py --relearn` (after the grid, or over a finished grid with --readout-only).
For every cell, seed and arm (the un-split baseline and each merge of the plan), the operating point is the
frontier read-out's: where keep avg = base keep avg − `readout.keep_drop`, i.e. the measured λ on each side
of it (one λ when a point lies on it; `frontiers_readout.interpolate_at_keep`). Each such model is rebuilt
without retraining (`grid_points.build_model`), attacked in memory by every attack of `attacks(cell)`, and
deleted again; the results go to `<cell run>/grid/<seed>/relearn/<label>/<attack>/relearn.json`, and each is
skipped on a rerun. The measure is the template's own knowledge evaluation (held-out facts of every domain),
its base the cell's `grid/base/knowledge.json`, so recovery is read for the attacked domain (in-subset) and
for the other forgotten domain (cross-subset) at once. Those two roles are a pair's: a cell forgetting more than two
domains (more subsets) is not attacked, and says so (`pairs_only`).

The read-out (`summarize`) gives per (cell, arm, attack) and seed the recovery at the last attack step of
each forgotten domain, mixed across the two bracketing λ with the read-out's interpolation weights; the
Spunge − baseline difference with its interval and verdict, per attack step, is `frontiers_robustness.py`'s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "retain" / "wikitext2_raw_test_rows.jsonl"
RELEARN_FILE = "relearn.json"


def attacks(cell, preset: str = "lucki2024") -> dict[str, dict]:
    """name -> `evaluate_relearn` settings: k = 5, 10, 20 training facts of the pair's first domain (in-subset;
    the second forgotten domain is then cross-subset), and 10 WikiText paragraphs (unrelated data)."""
    found = {f"in-subset-k{k}": {"data": str(cell.facts), "where": ["part == train", f"domain == {cell.pair[0]}"], "k": k,
                                 "preset": preset} for k in (5, 10, 20)}
    found["wikitext-k10"] = {"data": str(WIKITEXT), "where": ["kind == text"], "k": 10, "preset": preset}
    return found


def cell_units(rows: dict, cell) -> list[dict]:
    """The cell's finished (pair, seed) units among `frontiers_readout.collect`'s rows: those of its forget set
    (`matched.set_name`: the same domains grouped into other subsets are another cell, never mixed in)."""
    from spunge_merge.evaluate.matched import set_name

    return [u for u in rows.get((cell.task, cell.method, cell.model), []) if set_name(u) == cell.set_name]


def finished_cells(plan: dict, cells: list, settings, cell_dir, *, verb: str) -> Iterator[tuple[Any, list[dict]]]:
    """(cell, its finished units) for each cell of a hook that has any; says which have none ("no finished seed to
    `verb`"), so each hook walks the plan the same way."""
    from frontiers_readout import collect

    rows = collect(plan, cells, settings, cell_dir)
    for cell in cells:
        units = cell_units(rows, cell)
        if not units:
            print(f"{cell.key}: no finished seed to {verb}", flush=True)
            continue
        yield cell, units


def matched_labels(unit: dict, merges: list[str], plan: dict) -> list[str]:
    """The grid labels a hook scores in one unit: every arm's operating point (`operating_points`), arm by arm."""
    return [name for labels in operating_points(unit, grid_arms(merges, plan["merges"]), plan["readout"]).values() for name in labels]


def pairs_only(cells: list, *, say: bool = False) -> list:
    """The cells whose forget set is a pair: in-subset and cross-subset recovery are its two domains' roles."""
    for cell in cells:
        if say and len(cell.pair) != 2:
            print(f"{cell.key}: not attacked: --relearn reads in-subset and cross-subset recovery of a forget pair, and this "
                  f"set has {len(cell.pair)} domains", flush=True)
    return [cell for cell in cells if len(cell.pair) == 2]


def grid_arms(merges: list[str], merge_settings: dict[str, dict]) -> list[str]:
    """The arms of a seed's grid, as `grid_points.seed_arms` names them: the baseline, each anchored baseline, each merge."""
    from grid_points import seed_arms

    return list(dict.fromkeys(arm for arm, _ in seed_arms([1.0], [1.0], merges, merge_settings)))


def operating_points(unit: dict, arms: list[str], readout) -> dict[str, dict[str, float]]:
    """arm -> {grid label: interpolation weight} of the measured λ that bracket keep avg = base − keep_drop
    (the read-out's own rule, `matched.matched_utility`, retain-perplexity margin included)."""
    from spunge_merge.evaluate.matched import as_readout, matched_utility

    readout = as_readout(readout)
    found = {}
    for arm in arms:
        matched = matched_utility(unit, arm, readout)
        weights = list(matched["weights"].values())
        found[arm] = {name: w for name, w in zip(matched["labels"], weights, strict=True) if name != "base"}
    return found


def relearn_cells(plan: dict, cells: list, settings, cell_dir, *, preset: str = "lucki2024", only_attacks: set[str] | None = None) -> None:
    """Attack every arm's operating point of every finished (cell, seed); see the module docstring."""
    from grid_points import grid_model

    from spunge_merge.config import load_yaml
    from spunge_merge.evaluate.relearn import evaluate_relearn
    from spunge_merge.models import resolve_model
    from spunge_merge.unlearn import registry

    for cell, units in finished_cells(plan, pairs_only(cells, say=True), settings, cell_dir, verb="attack"):
        root = cell_dir(plan, cell)
        sweep = settings.for_method(cell.method, cell.model)
        base = resolve_model(cell.model)
        method = registry.get_method(cell.method)
        chosen = {name: spec for name, spec in attacks(cell, preset).items() if only_attacks is None or name in only_attacks}
        for unit in units:
            seed = unit["seed"]
            seed_dir = root / "seeds" / str(seed)
            knowledge = dict(load_yaml(seed_dir / "pipeline.yaml")["eval"]["knowledge"])
            knowledge["facts"] = str(cell.facts)  # the plan's file (a run made elsewhere records another path to the same facts)
            work = root / "grid" / str(seed)
            for name in matched_labels(unit, sweep.merges, plan):
                outs = {attack: work / "relearn" / name / attack for attack in chosen}
                todo = [a for a, out in outs.items() if not (out / RELEARN_FILE).is_file()]
                if not todo:
                    continue
                with grid_model(plan, cell, sweep, root, seed, name, base=base, method=method) as model_dir:
                    for attack in todo:
                        started = time.perf_counter()
                        evaluate_relearn(model_dir, out=outs[attack], base_result=str(root / "grid" / "base"),
                                         measure_settings=knowledge, device="cpu", seed=seed, **chosen[attack])
                        print(f"{cell.key} seed {seed} {name} {attack}: {time.perf_counter() - started:.0f} s", flush=True)


def summarize(plan: dict, cells: list, settings, cell_dir, *, preset: str = "lucki2024") -> list[dict]:
    """One row per (cell, seed, arm, attack) whose operating point is attacked: recovery at the last step of each
    forgotten domain, mixed across the bracketing λ with the read-out's weights (None where undefined)."""
    from frontiers_readout import collect

    readout = plan["readout"]
    cells = pairs_only(cells)
    rows = collect(plan, cells, settings, cell_dir)
    found = []
    for cell in cells:
        sweep = settings.for_method(cell.method, cell.model)
        arms = grid_arms(sweep.merges, plan["merges"])
        for unit in cell_units(rows, cell):
            work = cell_dir(plan, cell) / "grid" / str(unit["seed"])
            for arm, labels in operating_points(unit, arms, readout).items():
                for attack in attacks(cell, preset):
                    files = {name: work / "relearn" / name / attack / RELEARN_FILE for name in labels}
                    if not labels or not all(f.is_file() for f in files.values()):
                        continue
                    results = {name: json.loads(f.read_text(encoding="utf-8")) for name, f in files.items()}
                    mixed = {}
                    for domain in cell.pair:
                        values = [(labels[name], results[name]["domains"][domain]["recovery"]) for name in labels]
                        mixed[domain] = None if any(v is None for _, v in values) else sum(w * v for w, v in values) / sum(
                            w for w, _ in values)
                    found.append({"cell": cell.key, "seed": unit["seed"], "arm": arm, "attack": attack, "labels": labels,
                                  "in_subset": mixed[cell.pair[0]], "cross_subset": mixed[cell.pair[1]]})
    return found
