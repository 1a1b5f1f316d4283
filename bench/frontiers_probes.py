"""Is split unlearning harder to undo without training? Probes at each arm's matched-utility point, and their read-out:
Spunge − baseline accuracy on the forgotten domains' held-out facts when they are asked another way.

Called by `python bench/frontiers.py --probes` (after the grid, or over a finished grid with --readout-only). The probes
are `spunge eval relearn`'s (`spunge_merge.evaluate.probes`), read on the template's own knowledge evaluation (the
seed's `eval.knowledge` section, as the relearn hook measures; its facts the cell's file), without training:

- `choice`: the same held-out facts in the 4-option form (the answer ranked by log-likelihood against 3 distractors,
  chance 25 %), against the completion form the grid was read with;
- `paraphrase`: each prompt reworded by its domain's template (`spunge_merge/evaluate/paraphrases.yaml`);
- `fewshot`: `FEWSHOT_K` held-out facts (prompt and answer) of the cell's KEPT domains before each prompt (never a
  forgotten domain's: the context shows the format, not the answer), drawn per prompt by `FEWSHOT_SEED`, so every
  model of a cell reads the very same prompts.

Scored: the base once per cell (`<cell run>/grid/base/probes/<probe>/probe.json`) and, per seed, every arm (the
un-split baseline, each anchored baseline, each merge) at the frontier read-out's operating point, the measured λ on
each side of keep avg = base − `readout.keep_drop` (`frontiers_relearn.operating_points`):
`<cell run>/grid/<seed>/probes/<label>/<probe>/probe.json`. A result made with the same settings, record and facts
file (its `key`) is skipped on a rerun; a model is rebuilt without retraining (`grid_points.build_model`) only where
some probe of its label is missing, and deleted again.

Read-out (`write_probes`): per probe, each arm's forget avg (the forgotten domains' held-out accuracy under that probe,
macro-averaged over the two domains) mixed across the two λ with the read-out's interpolation weights (the base's own
result where the base is one side), and each fact's verdict mixed the same way; `completion` is the grid's own
figure (the matched forget avg itself), beside the probes for reference. Spunge − baseline is a per-fact paired
difference; interval `stats.hierarchical_bootstrap` over (pair, seed) units and facts (each forgotten domain a
stratum), as `frontiers_robustness.compare_step` draws it; verdict `matched.verdict` with lower better (Spunge leaving
less extractable is the advantage), the read-out's `min_seeds` and `level_margin`, none where some operating point
was not reached.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from frontiers_mia import arm_point  # bench/ is on sys.path (the driver's, the tests')

from spunge_merge.evaluate.matched import as_readout, verdict
from spunge_merge.evaluate.probes import PROBES

REPO = Path(__file__).resolve().parents[1]
PROBE_FILE = "probe.json"
FEWSHOT_K = 3  # facts in each prompt's context (relearn's default)
FEWSHOT_SEED = 0  # one context per prompt for every model, seed and arm of a cell: the comparison is paired
FIGURES = ("completion", *PROBES)  # completion: the grid's own read (the matched forget avg), for reference
MEANING = {"completion": "greedy completion (the grid's own read)", "choice": "4-option choice (chance 25 %)",
           "paraphrase": "prompt reworded by its domain's template", "fewshot": f"{FEWSHOT_K} kept-domain facts before the prompt"}
Verdicts = dict[str, list[float]]  # domain -> each held-out fact's verdict (1 or 0), in the facts' order
Loader = Callable[[dict, str, str], Verdicts | None]  # (unit, grid label or "base", figure) -> verdicts or None


# ------------------------------------------------------------------------------------------------
# The hook: score what is missing


def probe_dir(root: Path, seed: int, label: str, probe: str) -> Path:
    """Where a grid label's probe result lives: the base's once per cell, every other label's per seed."""
    return (root / "grid" / "base" / "probes" if label == "base" else root / "grid" / str(seed) / "probes" / label) / probe


def knowledge_settings(cell, seed_dir: Path) -> dict[str, Any]:
    """The template's knowledge section as the seed's pipeline ran it, its facts the cell's file (what the driver's
    override sets; the path recorded there may name another checkout)."""
    from spunge_merge.config import load_yaml

    return {**load_yaml(seed_dir / "pipeline.yaml")["eval"]["knowledge"], "facts": str(cell.facts)}


def cell_probes(cell, knowledge: dict[str, Any]) -> tuple[Any, dict[str, tuple], dict[str, str]]:
    """(the knowledge record, name -> `build_probes`' probe, name -> the key a finished result carries). The few-shot
    context comes from the cell's kept domains: every domain of its facts file but the forgotten pair."""
    from frontiers_plan import facts_domains

    from spunge_merge.evaluate import registry
    from spunge_merge.evaluate.probes import build_probes
    from spunge_merge.fsutil import sha256_file, sha256_json

    measured = registry.get("knowledge")
    settings = measured.validate_config({**knowledge, "device": "cpu"}, f"{cell.key}: eval.knowledge")
    kept = [d for d in facts_domains(cell.facts) if d not in cell.pair]
    probes = build_probes(PROBES, settings, fewshot_domains=kept, fewshot_k=FEWSHOT_K, seed=FEWSHOT_SEED)
    facts = sha256_file(cell.facts)
    keys = {name: sha256_json({"probe": name, "settings": {**variant.model_dump(mode="json"), "facts": facts},
                               "record": {k: v for k, v in record.items() if k != "templates"}})  # no path: the same anywhere
            for name, (variant, _, record) in probes.items()}
    return measured, probes, keys


def missing(keys: dict[str, str], where: Callable[[str], Path]) -> list[str]:
    """The probes without a result made with these settings (another key: the settings or facts changed, scored again)."""
    from spunge_merge.fsutil import read_json

    return [name for name, key in keys.items() if not ((where(name) / PROBE_FILE).is_file()
                                                       and read_json(where(name) / PROBE_FILE).get("key") == key)]


def score(model, measured, probes: dict[str, tuple], keys: dict[str, str], todo: list[str], where: Callable[[str], Path],
          what: str) -> None:
    """Load the model once and write each probe of `todo` (its per-domain accuracy and per-fact verdicts), timed."""
    from spunge_merge.evaluate.probes import score_probes
    from spunge_merge.fsutil import write_json
    from spunge_merge.models import load_causal_lm, load_tokenizer
    from spunge_merge.runtime import pick_device, pick_dtype

    device = pick_device("cpu")
    lm = load_causal_lm(model, dtype=pick_dtype(probes[todo[0]][0].dtype, device), device=device)
    tokenizer = load_tokenizer(model)
    for name in todo:
        started = time.perf_counter()
        scored = score_probes(measured, {name: probes[name]}, lm, tokenizer, device)[name]
        record = {k: _repo_relative(v) if k == "templates" else v for k, v in probes[name][2].items()}
        write_json(where(name) / PROBE_FILE, {"kind": "probe", "probe": name, "key": keys[name], "record": record,
                                              "form": probes[name][0].form, "domains": scored["domains"],
                                              "overall": scored["overall"], "seconds": round(time.perf_counter() - started, 2)})
        print(f"{what}: probe {name} {time.perf_counter() - started:.0f} s", flush=True)


def probes_cells(plan: dict, cells: list, settings, cell_dir) -> None:
    """Probe the base and every arm's operating point of every finished (cell, seed); see the module docstring."""
    from frontiers_relearn import finished_cells, matched_labels
    from grid_points import grid_model

    from spunge_merge.models import ResolvedModel, resolve_model
    from spunge_merge.unlearn import registry

    for cell, units in finished_cells(plan, cells, settings, cell_dir, verb="probe"):
        root = cell_dir(plan, cell)
        measured, probes, keys = cell_probes(cell, knowledge_settings(cell, root / "seeds" / str(units[0]["seed"])))
        base = resolve_model(cell.model)
        where = partial(probe_dir, root, 0, "base")
        if todo := missing(keys, where):
            score(base, measured, probes, keys, todo, where, f"{cell.key} base")
        sweep = settings.for_method(cell.method, cell.model)
        method = registry.get_method(cell.method)
        for unit in units:
            seed = unit["seed"]
            for name in matched_labels(unit, sweep.merges, plan):
                where = partial(probe_dir, root, seed, name)
                if not (todo := missing(keys, where)):
                    continue
                with grid_model(plan, cell, sweep, root, seed, name, base=base, method=method) as model_dir:
                    score(ResolvedModel(ref=str(model_dir), path=model_dir), measured, probes, keys, todo, where,
                          f"{cell.key} seed {seed} {name}")


def _repo_relative(path: str) -> str:
    return str(Path(path).relative_to(REPO)) if Path(path).is_relative_to(REPO) else str(path)


# ------------------------------------------------------------------------------------------------
# Read-out: one seed's figures, then Spunge against a baseline over seeds


def arm_figure(verdicts: dict[str, Verdicts], weights: dict[str, float], pair: list[str]) -> tuple[float, dict[str, np.ndarray] | None]:
    """(forget avg in %, {domain: each fact's verdict mixed with the weights, × 100}) of one arm's operating point; the
    per-fact part None where its labels scored different facts (the unit then contributes its value alone)."""
    value = sum(sum(w * float(np.mean(verdicts[n][d])) for n, w in weights.items()) for d in pair) * 100.0 / len(pair)
    if any(len({len(verdicts[n][d]) for n in weights}) != 1 for d in pair):
        return value, None
    return value, {d: 100.0 * sum(w * np.asarray(verdicts[n][d], dtype=float) for n, w in weights.items()) for d in pair}


def seed_data(unit: dict, arms: list[str], readout, load: Loader) -> dict[str, Any]:
    """One unit: {seed, points: {arm: operating point}, figures: {figure: {arm: arm_figure}}, base: {figure: forget avg},
    facts: {figure: {domain: facts}}}; an arm lacking some λ's result of a figure has no figure for it."""
    points = {arm: arm_point(unit, arm, readout) for arm in arms}
    found: dict[str, Any] = {"seed": unit["seed"], "pair": list(unit["pair"]), "points": points, "figures": {}, "base": {}, "facts": {}}
    for figure in FIGURES:
        results = {name: load(unit, name, figure) for name in {"base"} | {n for p in points.values() for n in p["weights"]}}
        if results["base"] is not None:
            found["base"][figure] = 100.0 * sum(float(np.mean(results["base"][d])) for d in unit["pair"]) / len(unit["pair"])
            found["facts"][figure] = {d: len(results["base"][d]) for d in unit["pair"]}
        for arm, point in points.items():
            if all(results[n] is not None for n in point["weights"]):
                found["figures"].setdefault(figure, {})[arm] = arm_figure(results, point["weights"], unit["pair"])
    return found


def compare(seeds: list[dict], spunge: str, baseline: str, figure: str, readout) -> dict[str, Any] | None:
    """Spunge − baseline forget avg under one figure over the units holding both: mean, 95 % interval, verdict, both
    arms' and the base's mean forget avg; None where no unit holds both."""
    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    readout = as_readout(readout)
    both = [d for d in seeds if {spunge, baseline} <= set(d["figures"].get(figure, {}))]
    if not both:
        return None
    diffs = []
    for d in both:
        (s, s_items), (b, b_items) = d["figures"][figure][spunge], d["figures"][figure][baseline]
        paired = s_items is not None and b_items is not None and all(len(s_items[x]) == len(b_items[x]) for x in s_items)
        diffs.append({x: (s_items[x] - b_items[x]).tolist() for x in s_items} if paired else [s - b])
    boot = hierarchical_bootstrap(diffs, n=readout.bootstrap.n, seed=readout.bootstrap.seed)
    missed = sum(not d["points"][arm]["reached"] for d in both for arm in (spunge, baseline))
    n_seeds = len({d["seed"] for d in both})
    said = "no verdict" if missed else verdict(boot["low"], boot["high"], n_seeds, better="lower",
                                               level_margin=readout.level_margin, min_seeds=readout.min_seeds)
    return {"figure": figure, "seeds": sorted(d["seed"] for d in both), "not_reached": missed, "mean": boot["mean"],
            "low": boot["low"], "high": boot["high"], "verdict": said,
            "spunge": _mean([d["figures"][figure][spunge][0] for d in both]),
            "baseline": _mean([d["figures"][figure][baseline][0] for d in both]),
            "base": _mean([d["base"][figure] for d in both if figure in d["base"]])}


def read_cell(units: list[dict], merges: list[str], anchored: list[str], readout, load: Loader) -> dict[str, Any]:
    """One cell: every Spunge merge against the plain and each anchored baseline under every figure, and each arm's
    mean forget avg per figure (the base's as λ 0)."""
    baselines = ["baseline"] + [f"baseline-{m}" for m in anchored]
    arms = baselines + [f"spunge-{m}" for m in merges]
    seeds = [seed_data(unit, arms, readout, load) for unit in units]
    comparisons = [{"merge": merge, "against": against, **found} for merge in merges for against in baselines for figure in FIGURES
                   if (found := compare(seeds, f"spunge-{merge}", against, figure, readout)) is not None]
    table = {"base": {"lam": 0.0, "seeds": sum(bool(d["base"]) for d in seeds), "not_reached": 0,
                      **{f: _mean([d["base"][f] for d in seeds if f in d["base"]]) for f in FIGURES}}}
    for arm in arms:
        have = [d for d in seeds if any(arm in per for per in d["figures"].values())]
        if have:
            table[arm] = {"lam": _mean([d["points"][arm]["lam"] for d in have]), "seeds": len(have),
                          "not_reached": sum(not d["points"][arm]["reached"] for d in have),
                          **{f: _mean([d["figures"][f][arm][0] for d in have if arm in d["figures"].get(f, {})]) for f in FIGURES}}
    facts = next((d["facts"] for d in seeds if d["facts"]), {})
    return {"comparisons": comparisons, "arms": table, "facts": facts, "seeds": seeds}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# ------------------------------------------------------------------------------------------------
# Output


def grid_loader(root_of: Callable[[dict], Path]) -> Loader:
    """A `Loader` reading the hook's layout (`<cell run>/grid/<seed>/probes/<label>/<probe>/probe.json`, the base's
    `grid/base/probes/<probe>/`) and, for `completion`, the grid's own per-fact verdicts of the forgotten domains."""
    from spunge_merge.fsutil import read_json

    def load(unit: dict, label: str, figure: str) -> Verdicts | None:
        if figure == "completion":
            point = unit["points"].get(label)
            items = None if point is None else point["forget"][1]
            return None if items is None else {d: [v / 100.0 for v in facts.values()] for d, facts in items.items()}
        file = probe_dir(root_of(unit), unit["seed"], label, figure) / PROBE_FILE
        return {d: [float(v) for v in e["verdicts"]] for d, e in read_json(file)["domains"].items()} if file.is_file() else None

    return load


def per_seed(cell: str, data: dict) -> list[dict]:
    """One row per (arm, figure) of one unit: its operating point, forget avg and each forgotten domain's accuracy."""
    return [{"cell": cell, "seed": data["seed"], "arm": arm, "figure": figure, **data["points"][arm], "forget_avg": value,
             "domains": None if items is None else {d: float(np.mean(v)) for d, v in items.items()}}
            for figure, arms in data["figures"].items() for arm, (value, items) in arms.items()]


def render(summary: dict) -> str:
    lines = ["# Probes without training at matched utility: Spunge − baseline forget avg when the facts are asked another way",
             "", f"Made by `{summary['command']}` ({summary['date']}).", ""]
    if not summary["cells"]:
        lines += ["No cell has probed operating points yet (`--probes` probes every finished cell's).", ""]
    for cell in summary["cells"]:
        counts = "; ".join(f"{f} {', '.join(f'{d} {n}' for d, n in per.items())}" for f, per in cell["facts"].items())
        lines += [f"## {cell['cell']}", "", f"Forgotten: {', '.join(cell['pair'])} (held-out facts per probe: {counts}). "
                  f"Few-shot context from the kept domains {', '.join(cell['fewshot_domains'])}.", "",
                  "| Spunge merge | against | probe | Δ forget avg, points [95 %] | verdict | forget avg Spunge / baseline | "
                  "base | seeds | not reached |", "|---|---|---|---|---|---|---:|---:|---:|"]
        for c in cell["comparisons"]:
            lines.append(f"| {c['merge']} | {c['against']} | {c['figure']} | {c['mean']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}] | "
                         f"**{c['verdict']}** | {c['spunge']:.1f} / {c['baseline']:.1f} | {c['base']:.1f} | {len(c['seeds'])} | "
                         f"{c['not_reached']} |")
        lines += ["", "Forget avg % at each arm's operating point (mean over seeds; the base is λ 0):", "",
                  "| arm | λ (mean) | " + " | ".join(FIGURES) + " | seeds | not reached |", "|---|---:|" + "---:|" * (len(FIGURES) + 2)]
        for arm, e in cell["arms"].items():
            lines.append(f"| {arm} | {e['lam']:.2f} | " + " | ".join(f"{e[f]:.1f}" for f in FIGURES)
                         + f" | {e['seeds']} | {e['not_reached']} |")
        lines.append("")
    readout = summary["readout"]
    lines += ["Probes (no training; `spunge_merge/evaluate/probes.py`, as `spunge eval relearn --probes`): "
              + "; ".join(f"**{f}** {summary['figures'][f]}" for f in FIGURES) + ". Each arm is read at its matched-utility "
              f"point: the measured λ on each side of keep avg = base − {readout['keep_drop']:g} points, each probed, their "
              "per-fact verdicts mixed with the frontier read-out's interpolation weights (the base's own where it is one "
              "side). Forget avg = the forgotten domains' held-out accuracy under the probe, averaged over the two domains; "
              "completion is the grid's own read, the matched forget avg itself. Δ = Spunge − baseline (negative: less of "
              "the forgotten facts comes out of Spunge). 95 % hierarchical bootstrap over (pair, seed) units and, below "
              "them, the held-out facts of each forgotten domain, paired per fact. Verdict only with ≥ "
              f"{readout['min_seeds']} seeds and every operating point reached: helps (Spunge leaves less extractable) / "
              f"hurts when the interval excludes 0, level within ± {readout['level_margin']:g} points, else no verdict. "
              "probes.json holds every seed's figures (`per_seed`)."]
    return "\n".join(lines) + "\n"


def write_probes(plan: dict, cells: list, settings, cell_dir, out: Path, *, command: str) -> dict:
    """RESULTS/probes.json (the read-out per cell, every seed's figures, the command) and probes.md."""
    import datetime

    from frontiers_plan import facts_domains
    from frontiers_readout import collect
    from frontiers_relearn import cell_units
    from grid_points import anchored_merges

    from spunge_merge.fsutil import atomic_write_text, write_json

    readout = as_readout(plan["readout"])
    rows = collect(plan, cells, settings, cell_dir)
    found, seeds = [], []
    for cell in cells:
        units = cell_units(rows, cell)
        merges = list(settings.for_method(cell.method, cell.model).merges)
        entry = read_cell(units, merges, anchored_merges(merges, plan["merges"]), readout,
                          grid_loader(lambda unit, root=cell_dir(plan, cell): root))
        seeds += [row for data in entry.pop("seeds") for row in per_seed(cell.key, data)]
        if entry["comparisons"]:
            found.append({"cell": cell.key, "task": cell.task, "model": cell.model, "method": cell.method, "pair": list(cell.pair),
                          "fewshot_domains": [d for d in facts_domains(cell.facts) if d not in cell.pair], **entry})
    summary = {"command": command, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "readout": readout.model_dump(), "figures": MEANING, "fewshot": {"k": FEWSHOT_K, "seed": FEWSHOT_SEED},
               "cells": found, "per_seed": seeds}
    # as probes.json stores it (keys sorted), so probes.md is what its JSON renders to
    summary = json.loads(json.dumps(summary, default=str, sort_keys=True))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "probes.json", summary)
    atomic_write_text(out / "probes.md", render(summary))
    return summary
