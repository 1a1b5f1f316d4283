"""The frontier benchmark's cost: measured timings (RESULTS/timings.json), each cell's estimated cost and the cut
to the plan's CPU budget (`--plan`). Split out of `bench/frontiers.py` so the driver stays one concept (selecting
and running cells); the driver re-exports these names."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from frontiers_plan import PLAN

if TYPE_CHECKING:
    from frontiers import Cell, Settings

TIMINGS = "timings.json"


def read_timings(results: Path) -> dict:
    from spunge_merge.fsutil import read_json

    path = results / TIMINGS
    return read_json(path) if path.is_file() else {"seed_pipeline": {}, "model": {}}


def record_timing(results: Path, kind: str, key: str, seconds: float) -> None:
    """Append one measured figure (seconds) to RESULTS/timings.json: the plan's cost estimates read them."""
    from spunge_merge.fsutil import write_json

    timings = read_timings(results)
    timings.setdefault(kind, {}).setdefault(key, []).append(round(seconds, 1))
    results.mkdir(parents=True, exist_ok=True)
    write_json(results / TIMINGS, timings)


def _shipped_results() -> Path:
    from spunge_merge.config import load_yaml

    return (PLAN.parent / load_yaml(PLAN)["results"]).resolve()


def cost_scales(plan: dict) -> dict[str, float]:
    """{model: its per-run and per-model cost relative to the plan's reference model} (`cost_scale`, default 1)."""
    return {m: float(v.get("cost_scale", 1.0)) for m, v in plan["models"].items()}


def set_scale(cell: Cell) -> float:
    """A seed's pipeline relative to a pair's: its split runs and the un-split run train on every forgotten domain's
    rows, so 4 domains cost about twice 2 (timings record a pair's share: measured time / this)."""
    return len(cell.pair) / 2


def unit_costs(plan: dict, cell: Cell) -> tuple[float, float, str]:
    """(seconds per seed's pipeline, seconds per grid model, where from): measured on this model, else measured on
    another model scaled by the plans' cost_scale, else the plan's estimate scaled; a seed's pipeline by `set_scale`."""
    timings = read_timings(plan["results"])
    shipped = read_timings(_shipped_results())
    for kind in ("seed_pipeline", "model"):  # the plan's own measurements first, the shipped benchmark's where it has none
        timings[kind] = {**shipped.get(kind, {}), **timings.get(kind, {})}
    scale = cost_scales(plan)

    def pick(kind: str, key_of, estimate: float) -> tuple[float, str]:
        measured = timings.get(kind, {})
        own = measured.get(key_of(cell.model))
        if own:
            return sum(own) / len(own), "measured"
        for other in plan["models"]:
            if measured.get(key_of(other)):
                values = measured[key_of(other)]
                return sum(values) / len(values) * scale[cell.model] / scale[other], f"measured on {other}, scaled"
        return estimate * scale[cell.model], "estimate"

    per_seed, how_seed = pick("seed_pipeline", lambda m: f"{m}/{cell.method}", plan["estimates"]["seed_pipeline"][cell.method])
    per_model, how_model = pick("model", lambda m: m, plan["estimates"]["model"])
    how = how_seed if how_seed == how_model else f"{how_seed}; models {how_model}"
    return per_seed * set_scale(cell), per_model, how + (f"; pipeline × {set_scale(cell):g} ({len(cell.pair)} domains)"
                                                         if len(cell.pair) != 2 else "")


def plan_text(plan: dict, cells: list[Cell], settings: Settings, budget_hours: float) -> tuple[str, list[Cell]]:
    """Every cell with its estimated cost, the total, and the cells kept within the budget: in breadth-first
    order (every model and method on the first pair, then the second pair, ...), each cell that still fits."""
    from frontiers_readout import size_ratio

    pair_rank = {}
    for cell in cells:
        pair_rank.setdefault((cell.model, cell.method), []).append(cell.set_name)
    order = sorted(cells, key=lambda c: (pair_rank[(c.model, c.method)].index(c.set_name),
                                         list(plan["models"]).index(c.model), plan["methods"].index(c.method)))
    rows, kept, total, used = [], [], 0.0, 0.0
    budget = budget_hours * 3600
    for cell in order:
        per_seed, per_model, how = unit_costs(plan, cell)
        mine = settings.for_method(cell.method, cell.model)
        models, passes = mine.models_per_seed, mine.statistics_passes
        statistics = passes * float(plan["estimates"].get("statistics", 0.0)) * cost_scales(plan)[cell.model]
        cost = len(settings.seeds) * (per_seed + models * per_model) + statistics
        total += cost
        fits = used + cost <= budget
        if fits:
            used += cost
            kept.append(cell)
        size = size_ratio(cell.facts, list(cell.pair))
        rows.append(f"| {cell.model} | {cell.method} | {set_label(cell)} | "
                    f"{' / '.join(f'{d} {n}' for d, n in size['rows'].items())} ({size['ratio']:.2f}×) | {len(settings.seeds)} | "
                    f"{per_seed:.0f} s + {models} × {per_model:.0f} s{f'; + {statistics:.0f} s statistics per cell' if passes else ''} | "
                    f"{cost / 60:.0f} min | "
                    f"{'run' if fits else '**cut**'} | {how} |")
    fallback = sorted({f"{c.model} (its facts file is missing: {c.facts.name} used)" for c in cells if c.fallback})
    fallback += capped_text(plan, cells)
    lines = [f"# Frontier benchmark plan ({plan['task']})", "",
             f"Seeds {settings.seeds}; {settings.describe_lambdas()}.",
             *([f"Facts: {'; '.join(fallback)}."] if fallback else []), "",
             "Cost per cell = seeds × (one seed's pipeline + grid models × one model's build and evaluation), from "
             f"RESULTS/{TIMINGS} where measured (OMP_NUM_THREADS=1, shared 2-core machine), else the plan's estimates; "
             "plus the statistics pass of data-dependent merges (the plan's `estimates.statistics`, once per cell: its "
             "files are shared by seeds, λ and both arms; once per seed with `inputs: run`).", "",
             "| model | method | forget pair | training rows (ratio) | seeds | per seed | cost | within budget | from |",
             "|---|---|---|---|---:|---|---:|---|---|",
             *rows, "",
             f"Total: {total / 3600:.1f} h for {len(cells)} cells. Budget {budget_hours:g} h of CPU on two cores: "
             f"{len(kept)} cells run ({used / 3600:.1f} h), {len(cells) - len(kept)} cut "
             "(taken in breadth-first order, every model and method on the first pair, then the next pair, each cell "
             "that still fits; a cut cell runs with --only ... --no-cut)."]
    lines += not_planned_text(plan, settings)
    return "\n".join(lines) + "\n", kept


def set_label(cell: Cell) -> str:
    """`a + b`; a larger set with its k and, where grouped, its subsets (`a + b + c + d (k = 2: a + b / c + d)`)."""
    text = " + ".join(cell.pair)
    if cell.subsets:
        return f"{text} (k = {cell.k}: {' / '.join(' + '.join(g) for g in cell.subsets)})"
    return text + (f" (k = {cell.k})" if cell.k != 2 else "")


def capped_text(plan: dict, cells: list[Cell]) -> list[str]:
    """Per grouped forget set, the derived file it splits; per model whose training facts are capped
    (`models.<model>.train_rows`), the derived file and what it keeps."""
    from spunge_merge.fsutil import read_json

    found = [f"{c.model} {c.set_name} split by the derived file's `subset` column: <runs>/derived/{c.facts.name}"
             for c in dict((c.facts, c) for c in cells if c.subsets).values()]
    for model in dict.fromkeys(c.model for c in cells):
        facts = next(c.facts for c in cells if c.model == model)
        if facts.with_suffix(".json").is_file() and "subsets" in read_json(facts.with_suffix(".json")):
            facts = facts.parent / read_json(facts.with_suffix(".json"))["source"]  # grouped: the capped file it came from
        if plan["models"][model].get("train_rows") and facts.with_suffix(".json").is_file():
            record = read_json(facts.with_suffix(".json"))
            caps = ", ".join(f"{d} {n} of {record['train_rows_before'][d]}" for d, n in sorted(record["train_rows"].items()))
            found.append(f"{model} training rows capped ({caps}; held-out rows whole): <runs>/derived/{facts.name}")
    return found


def not_planned_text(plan: dict, settings: Settings) -> list[str]:
    """Lines for the tasks the plan names under `not_planned`: what one grid over them would cost at the plan's
    methods, models and seeds (one cell per model and method: such a task has one split, e.g. ToxiGen's groups),
    from the per-seed and per-model figures the plan gives for them. They are cut from the CPU budget."""
    lines = []
    scale = cost_scales(plan)
    for task, entry in (plan.get("not_planned") or {}).items():
        per_seed, per_model = float(entry["seed_pipeline"]), float(entry["model"])
        total = sum(len(settings.seeds) * scale[model] * (per_seed + settings.for_method(method).models_per_seed * per_model)
                    for model in plan["models"] for method in plan["methods"])
        lines += ["", f"Not in this plan: **{task}**, cut. The same grid there ({len(plan['methods'])} methods × "
                  f"{len(plan['models'])} models × {len(settings.seeds)} seeds, one split) would take ≈ {total / 3600:.0f} h "
                  f"here: one seed's pipeline ≈ {per_seed:.0f} s and one model's evaluation ≈ {per_model:.0f} s at "
                  f"cost_scale 1, scaled by each model's. {entry['why']} What runs it "
                  f"today: {entry['run']}."]
    return lines
