"""Where does splitting pay? A resumable multi-seed frontier benchmark over methods, merges, forget pairs and base models.

The grid is defined once, in `recipes/frontiers.yaml` (the plan); each method's experiment once, in
`recipes/frontiers-knowledge-<method>.yaml` (a pipeline template). For every cell (task, base model,
method, forget set: a pair, or more domains, grouped into subsets or not) the driver:

1. runs the method's template once per seed (`spunge run` with `--set` overrides for the cell: model,
   facts file, the forgotten domains, seeds): split the forget facts by domain (or, for grouped subsets, by a
   derived file's `subset` column), unlearn each subset, unlearn the un-split union at the matched step budget
   (the pipeline's resume); a model whose plan entry caps some domain's training facts (`train_rows`) reads a
   derived facts file (`bench/frontiers_facts.py`);
2. builds, without retraining, every merge of the plan at every λ and the baseline at every λ
   (`bench/grid_points.py`, shared with `bench/knowledge_grid.py`), with an anchored baseline arm for each
   data-dependent merge (`baseline-anchored_ls`: the un-split run merged alone the same way), and scores each model on the
   held-out facts (forget avg over the forgotten domains, keep avg over the kept ones) and the retain
   perplexity of the held-out kept facts; every finished model and evaluation is kept and skipped on
   a rerun, so a killed run loses at most the model in progress;
3. reads out one row per (task, method, model) (`bench/frontiers_readout.py`): the best Spunge merge
   against the baseline at matched utility (forget avg where keep avg = base − 5 points), with a 95 %
   hierarchical bootstrap interval over (pair, seed) units and facts, and a verdict; plus λ = 1 and
   matched forgetting; each forgotten domain and the worst one at matched utility (`bench/frontiers_domains.py`);
   a frontier PNG per row; RESULTS/summary.md and summary.json.

    OMP_NUM_THREADS=1 python bench/frontiers.py --plan     # every cell, its estimated cost, what is cut
    OMP_NUM_THREADS=1 python bench/frontiers.py --quick    # smollm2-135m, rmu, one pair, 3 seeds, 2 merges, 3 λ
    OMP_NUM_THREADS=1 python bench/frontiers.py            # the cells that fit the plan's CPU budget
    OMP_NUM_THREADS=1 python bench/frontiers.py --only model=gemma3-270m,method=tvn
    OMP_NUM_THREADS=1 python bench/frontiers.py --readout-only --relearn lucki2024 --only model=smollm2-135m,method=rmu
    OMP_NUM_THREADS=1 python bench/frontiers.py --readout-only --mia --only model=smollm2-135m,method=rmu
    OMP_NUM_THREADS=1 python bench/frontiers.py --readout-only --probes --only model=smollm2-135m,method=rmu
    OMP_NUM_THREADS=1 python bench/frontiers.py --plan-file bench/plans/unequal-rmu-smollm2.yaml --plan   # a plan of its own
    OMP_NUM_THREADS=1 python bench/frontiers.py --plan-file bench/plans/more-subsets-rmu-smollm2.yaml --plan   # k = 4 and k = 2
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from frontiers_cost import TIMINGS, plan_text, record_timing, set_scale, unit_costs  # noqa: E402, F401 - the plan's cost, re-exported
from frontiers_facts import capped_facts, grouped_facts  # noqa: E402 - bench/ is on sys.path
from frontiers_plan import (  # noqa: E402, F401 - bench/ is on sys.path; the plan's reading, re-exported for the driver's callers
    PLAN,
    forget_sets,
    load_plan,
    method_lambdas,
    method_merges,
    model_lambdas,
    pairs_for,
    parse_args,
    parse_only,
)
from grid_points import anchored_merges, build_seed_points, evaluate_model, seed_arms  # noqa: E402 - bench/ is on sys.path when this runs as a script

QUICK_MARKER = "<!-- read-out below: written by `python bench/frontiers.py --quick`; notes above this line are kept -->"


@dataclass(frozen=True)
class Cell:
    """One experiment: a method unlearning a forget set (two or more domains) of one model's facts, every seed."""

    task: str
    model: str
    method: str
    pair: tuple[str, ...]  # the forgotten domains (a pair, or more)
    facts: Path
    fallback: bool  # the model's own facts file is missing: the plan's fallback is used
    subsets: tuple[tuple[str, ...], ...] = ()  # the domains grouped into subsets; (): one subset per domain

    @property
    def k(self) -> int:
        """The number of subsets Spunge unlearns separately and merges."""
        return len(self.subsets) or len(self.pair)

    @property
    def set_name(self) -> str:
        """`a+b+c+d`, and `a+b+c+d-k2` where its domains are grouped into 2 subsets: the k = 4 and k = 2 cells of one
        forget set never share a name, a unit or a run directory."""
        return "+".join(self.pair) + (f"-k{self.k}" if self.subsets else "")

    @property
    def key(self) -> str:
        return f"{self.task}/{self.model}/{self.method}/{self.set_name}"


@dataclass(frozen=True)
class Settings:
    """The plan's axes after --quick and --only: what each cell runs."""

    seeds: list[int]
    merges: list[str]
    lambdas: list[float]
    baseline_lambdas: list[float]
    # {method: {"lambdas": [...], "baseline_lambdas": [...]}}: a method whose edit has another natural scale
    method_lambdas: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # {model: {method: {...}}}: a model on which a method's scale differs again (`models.<model>.method_lambdas`)
    model_lambdas: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    # {method: [merge]}: a method whose runs cannot take some merge (TVN records no retain data for anchored_ls)
    method_merges: dict[str, list[str]] = field(default_factory=dict)
    # {merge: its mergekit settings} (the plan's `merges`): which merges read statistics and get an anchored baseline
    merge_settings: dict[str, dict] = field(default_factory=dict)

    @property
    def models_per_seed(self) -> int:
        """Grid models per seed: the baseline and each anchored baseline over its sweep, every merge over its sweep."""
        return len(seed_arms(self.lambdas, self.baseline_lambdas, self.merges, self.merge_settings or None))

    @property
    def statistics_passes(self) -> int:
        """Statistics passes per cell for its data-dependent merges: one where every such merge reads the base model's
        inputs (their files are shared by the seeds, the λ and both arms), one per seed where one reads each run's."""
        anchored = anchored_merges(self.merges, self.merge_settings or None)
        if not anchored:
            return 0
        per_run = any((self.merge_settings.get(m, {}).get("statistics") or {}).get("inputs") == "run" for m in anchored)
        return len(self.seeds) if per_run else 1

    def for_method(self, method: str, model: str | None = None) -> Settings:
        """These settings with the method's own λ sweeps and merges where the plan gives some, and the model's own
        sweeps for that method over them."""
        own = {**self.method_lambdas.get(method, {}), **self.model_lambdas.get(model, {}).get(method, {})}
        return replace(self, lambdas=own.get("lambdas", self.lambdas),
                       baseline_lambdas=own.get("baseline_lambdas", self.baseline_lambdas),
                       merges=self.method_merges.get(method, self.merges))

    def describe_lambdas(self) -> str:
        text = f"merges {', '.join(self.merges)} at λ {self.lambdas}; baseline at λ {self.baseline_lambdas}"
        anchored = anchored_merges(self.merges, self.merge_settings or None)
        if anchored:
            text += f" (and anchored: {', '.join(f'baseline-{m}' for m in anchored)})"
        for method, merges in self.method_merges.items():
            text += f"; {method}: merges {', '.join(merges)}"
        for method in self.method_lambdas:
            mine = self.for_method(method)
            text += f"; {method}: merges at λ {mine.lambdas}, baseline at λ {mine.baseline_lambdas}"
        for model, methods in self.model_lambdas.items():
            for method in methods:
                mine = self.for_method(method, model)
                text += f"; {method} on {model}: merges at λ {mine.lambdas}, baseline at λ {mine.baseline_lambdas}"
        return text


def select(plan: dict, *, quick: bool, only: dict[str, set[str]]) -> tuple[list[Cell], Settings]:
    """The cells and settings to run: the whole plan, or its `quick` subset; narrowed by --only."""
    from spunge_merge.errors import SpungeError

    sub = plan["quick"] if quick else {}
    models = sub.get("models", list(plan["models"]))
    methods = sub.get("methods", plan["methods"])
    n_pairs = sub.get("n_pairs", plan.get("n_pairs", 3))
    settings = Settings(seeds=list(sub.get("seeds", plan["seeds"])), merges=list(sub.get("merges", plan["merges"])),
                        lambdas=[float(x) for x in sub.get("lambdas", plan["lambdas"])],
                        baseline_lambdas=[float(x) for x in sub.get("baseline_lambdas", plan["baseline_lambdas"])],
                        method_lambdas=method_lambdas(plan, sub), model_lambdas=model_lambdas(plan),
                        method_merges=method_merges(plan, sub), merge_settings=dict(plan["merges"]))
    for merge in settings.merges:
        if merge not in plan["merges"]:
            raise SpungeError(f"recipes/frontiers.yaml: quick.merges: unknown merge {merge} (merges: {', '.join(plan['merges'])})")
    if "merge" in only:  # a slice of the merges: those models only (an anchored merge's baseline arm with it)
        if unknown := sorted(only["merge"] - set(plan["merges"])):
            raise SpungeError(f"--only merge={','.join(unknown)}: not a merge of the plan ({', '.join(plan['merges'])})")
        settings = replace(settings, merges=[m for m in settings.merges if m in only["merge"]],
                           method_merges={k: [m for m in v if m in only["merge"]] for k, v in settings.method_merges.items()})
    cells = []
    for model in models:
        own = plan["models"][model]["facts"]
        if not own.is_file() and plan.get("fallback_facts") is None:
            raise SpungeError(f"{plan['_file']}: models.{model}.facts: {own} does not exist (and the plan has no fallback_facts)")
        facts, fallback = (own, False) if own.is_file() else (plan["fallback_facts"], True)
        facts = capped_facts(plan, model, facts)  # unequal subsets: some domain's training facts capped (a derived file)
        for method in methods:
            if not settings.for_method(method).merges:  # --only merge= left none of this method's merges: no cell
                continue
            check_retain(plan, Cell(plan["task"], model, method, ("", ""), facts, fallback), settings.for_method(method))
            for pair, subsets in forget_sets(plan, facts, n_pairs):  # grouped subsets: a derived file with their column
                cell = Cell(plan["task"], model, method, pair, grouped_facts(plan, facts, subsets), fallback, subsets)
                wanted = {"task": cell.task, "model": model, "method": method, "pair": cell.set_name}
                if all(wanted[k] in v for k, v in only.items() if k != "merge"):
                    cells.append(cell)
    return cells, settings


def check_retain(plan: dict, cell: Cell, settings: Settings) -> None:
    """A data-dependent merge (anchored_ls, ρ > 0) needs retain data: the method's template records some
    (`unlearn.retain`), or the merge names its own (`statistics.retain_data`); else the plan is refused by name."""
    from spunge_merge.config import load_yaml
    from spunge_merge.errors import SpungeError

    for merge in anchored_merges(settings.merges, settings.merge_settings):
        entry = settings.merge_settings[merge]
        if (entry.get("parameters") or {}).get("rho", 1.0) == 0 or (entry.get("statistics") or {}).get("retain_data"):
            continue
        if not (load_yaml(template(plan, cell)).get("unlearn") or {}).get("retain"):
            raise SpungeError(f"{plan.get('_file', PLAN)}: merge {merge} needs retain data, which {cell.method}'s runs do not "
                              f"record; leave it out of method_merges.{cell.method}")


def cell_dir(plan: dict, cell: Cell) -> Path:
    """runs/<facts file stem>/<model>/<method>/<a>--<b>[--<c>...][-k<k> where grouped]: another facts file never
    reuses a cell's work, nor another grouping of the same domains.

    Not `a+b`: mergekit reads a `+` in a model path as its base+LoRA syntax."""
    return plan["runs"] / cell.facts.stem / cell.model / cell.method / ("--".join(cell.pair) + (f"-k{cell.k}" if cell.subsets else ""))


def template(plan: dict, cell: Cell) -> Path:
    """The method's pipeline template: the plan's `templates.<method>` (relative to the plan), else
    `frontiers-<task>-<method>.yaml` beside the plan, else the shipped one in recipes/ (its relative paths
    resolve against its own folder, as `spunge run` reads every pipeline file)."""
    from spunge_merge.errors import SpungeError

    given = (plan.get("templates") or {}).get(cell.method)
    if given is not None:
        if not given.is_file():
            raise SpungeError(f"{plan['_file']}: templates.{cell.method}: {given} does not exist")
        return given
    name = f"frontiers-{cell.task}-{cell.method}.yaml"
    for folder in (plan["_dir"], PLAN.parent):
        if (folder / name).is_file():
            return folder / name
    raise SpungeError(f"{name}: no pipeline template for task {cell.task}, method {cell.method} beside "
                      f"{plan.get('_file', PLAN)} or in {PLAN.parent}; name one under `templates:`")


def overrides(plan: dict, cell: Cell, seeds: list[int]) -> list[str]:
    """`--set` assignments that turn the method's template into this cell's pipeline: split by domain into the
    forgotten domains, or, where they are grouped, by the derived file's `subset` column into the subsets' names (the
    kept domains' rows have none and are left out); keep filters on every forgotten domain either way."""
    from frontiers_facts import SUBSET_COLUMN
    from frontiers_plan import subset_name

    from spunge_merge.config import load_yaml

    raw = load_yaml(template(plan, cell))
    facts = str(cell.facts)
    keep = f"domain not in {','.join(cell.pair)}"
    split = [f"split.by={SUBSET_COLUMN}", f"split.values={json.dumps([subset_name(g) for g in cell.subsets])}"] \
        if cell.subsets else [f"split.values={json.dumps(list(cell.pair))}"]
    found = [f"model={cell.model}", f"seeds={json.dumps(seeds)}", f"split.data.path={facts}", *split,
             f"eval.knowledge.facts={facts}", f"eval.perplexity.data.path={facts}",
             f"eval.perplexity.data.where={json.dumps(['part == heldout', keep])}"]
    if raw["unlearn"].get("retain"):
        found += [f"unlearn.retain.path={facts}", f"unlearn.retain.where={json.dumps(['part == train', keep])}"]
    return found


# ------------------------------------------------------------------------------------------------
# Running


def run_cell(plan: dict, cell: Cell, settings: Settings) -> dict[int, dict[str, Path]]:
    """The cell's pipeline (every seed, resumable) and its grid models; {seed: {label: eval dir}}."""
    from spunge_merge.config import load_yaml
    from spunge_merge.models import resolve_model
    from spunge_merge.pipeline.runner import run_pipeline
    from spunge_merge.unlearn import registry

    run_dir = cell_dir(plan, cell)
    started = time.perf_counter()
    # the split, unlearning and baseline stages, not the merge: the grid builds its own models. The baseline
    # stage trains the un-split run and then writes its own model (a full copy), deleted below: only the run is read.
    settings_given = overrides(plan, cell, settings.seeds)
    summary = run_pipeline(template(plan, cell), run_dir=run_dir, only="unlearn", overrides=settings_given, live=False)
    run_pipeline(template(plan, cell), run_dir=run_dir, only="baseline", overrides=settings_given, live=False)
    for seed in settings.seeds:
        shutil.rmtree(run_dir / "seeds" / str(seed) / "baseline" / "models", ignore_errors=True)
    trained = {entry.split(":")[0] for entry in summary.ran if entry.startswith("seed ") and "unlearn" in entry}
    if trained:  # the seeds that trained now share the time (a resumed seed costs next to nothing): --plan reads it
        record_timing(plan["results"], "seed_pipeline", f"{cell.model}/{cell.method}",
                      (time.perf_counter() - started) / len(trained) / set_scale(cell))  # a pair's share
    raw = load_yaml(run_dir / "seeds" / str(settings.seeds[0]) / "pipeline.yaml")
    base = resolve_model(cell.model)
    method = registry.get_method(cell.method)
    base_eval = run_dir / "grid" / "base"  # no seed touches the base model: evaluated once per cell
    if not all((base_eval / name).is_file() for name in ("knowledge.json", "perplexity.json")):
        evaluate_model(base.path, base_eval, raw["eval"], REPO)
    points = {}
    for seed in settings.seeds:
        def build(arms: list[tuple[str, float]] | None = None, seed: int = seed) -> dict[str, Path]:
            return build_seed_points(
                run_dir / "seeds" / str(seed), run_dir / "grid" / str(seed), base=base, method=method, eval_section=raw["eval"],
                files_dir=REPO, lambdas=settings.lambdas, baseline_lambdas=settings.baseline_lambdas, merges=settings.merges,
                merge_settings={name: plan["merges"][name] for name in settings.merges}, base_eval=base_eval,
                views_dir=plan["runs"] / ".views" / cell.model, keep_models=False, arms=arms,
                on_model=lambda name, seconds: record_timing(plan["results"], "model", cell.model, seconds))

        points[seed] = build()
        points[seed].update(refine_seed(plan, cell, points[seed], build))
        print(f"{cell.key} seed {seed}: {len(points[seed])} models evaluated", flush=True)
    return points


def refine_seed(plan: dict, cell: Cell, found: dict[str, Path], build) -> dict[str, Path]:
    """Adaptive λ: each arm's sweep refined by itself (`spunge_merge.evaluate.matched.refine_lambdas`: bisection where
    the crossing of keep = base − keep_drop lies between points too far apart, doubling where it is not reached) up to
    the plan's `refine.extra_points` per arm and seed; {label: eval dir} of the points added."""
    from spunge_merge.evaluate.matched import arm_and_lambda, read_point, refine_lambdas, useful

    budget = int((plan.get("refine") or {}).get("extra_points", 0))
    if budget <= 0:
        return {}
    forget = list(cell.pair)
    base = read_point(found["base"], forget)
    target = base["keep"][0] - float(plan["readout"]["keep_drop"])
    margin = plan["readout"].get("retain_ppl_margin_pct")
    added: dict[str, Path] = {}
    for arm in sorted({arm_and_lambda(name)[0] for name in found} - {"base"}):
        curve, broken = [(0.0, base["keep"][0], base["forget"][0])], []
        for name, directory in found.items():
            if name != "base" and arm_and_lambda(name)[0] == arm:
                point = read_point(directory, forget)  # a point the read-out will not use is not a bracket either
                (curve if useful(point, base, margin) else broken).append((arm_and_lambda(name)[1], point["keep"][0], point["forget"][0]))

        def evaluate(lam: float, arm: str = arm) -> tuple[float, float, float | None]:
            new = build([(arm, lam)])
            label = next(name for name in new if name != "base")
            added[label] = new[label]
            point = read_point(new[label], forget)
            return point["keep"][0], point["forget"][0], point["ppl"]

        result = refine_lambdas(evaluate, curve, target, budget=budget, base_ppl=base["ppl"], margin_pct=margin, broken=broken)
        if result["added"]:
            print(f"{cell.key} {arm}: λ {', '.join(f'{x:g}' for x in result['added'])} added "
                  f"({'crossing read' if result['reached'] else 'crossing still not read: extra_points spent'})", flush=True)
    return added


def main() -> None:
    args = parse_args(__doc__)

    from spunge_merge.errors import SpungeError

    try:
        plan = load_plan(args.plan_file)
        cells, settings = select(plan, quick=args.quick, only=parse_only(args.only))
        if not cells:
            raise SpungeError(f"--only {args.only}: no cell of the plan matches")
        text, kept = plan_text(plan, cells, settings, float(plan["budget_hours"]))
        out = plan["results"] / "quick" if args.quick else plan["results"]
        if args.plan:
            print(text)
            if not args.only:  # RESULTS/plan.md is the whole plan's, not a slice's
                from spunge_merge.fsutil import atomic_write_text

                atomic_write_text(out / "plan.md", text)
            return
        todo = cells if (args.no_cut or args.quick) else kept
        started = time.perf_counter()
        for cell in todo:
            if args.readout_only:
                continue
            print(f"== {cell.key} ({cell.facts.name}{', fallback' if cell.fallback else ''})", flush=True)
            run_cell(plan, cell, settings.for_method(cell.method, cell.model))
        command = "OMP_NUM_THREADS=1 python bench/frontiers.py " + shlex.join(sys.argv[1:])
        if args.relearn:
            from frontiers_relearn import relearn_cells
            from frontiers_robustness import write_robustness

            wanted = set(args.relearn_attacks.split(",")) if args.relearn_attacks else None
            relearn_cells(plan, todo, settings, cell_dir, preset=args.relearn, only_attacks=wanted)
            # every cell of the plan with attacked units, not only this slice's: one cell per run adds to one read-out
            write_robustness(plan, select(plan, quick=args.quick, only={})[0], settings, cell_dir, out, preset=args.relearn,
                             command=command)
        if args.mia:
            from frontiers_mia import mia_cells, write_mia

            mia_cells(plan, todo, settings, cell_dir)
            write_mia(plan, select(plan, quick=args.quick, only={})[0], settings, cell_dir, out, command=command)
        if args.probes:
            from frontiers_probes import probes_cells, write_probes

            probes_cells(plan, todo, settings, cell_dir)
            write_probes(plan, select(plan, quick=args.quick, only={})[0], settings, cell_dir, out, command=command)
        from frontiers_readout import collect, render, write_outputs

        # every finished cell of the plan (or of its quick subset), not only this invocation's slice: a run with
        # --only adds its cells to the one summary instead of overwriting it with theirs
        every, _ = select(plan, quick=args.quick, only={})
        results = collect(plan, every, settings, cell_dir)
        summary = write_outputs(results, plan, settings, out, plan_markdown=text,
                                seconds=time.perf_counter() - started, quick=args.quick)
        text = render(summary)
        if args.quick:  # the quick run's record: notes written by hand above the marker survive a rerun
            from spunge_merge.fsutil import atomic_write_text

            record = plan["results"] / "quick.md"
            notes = record.read_text(encoding="utf-8").split(QUICK_MARKER)[0] if record.is_file() else ""
            atomic_write_text(record, f"{notes}{QUICK_MARKER}\n{text}")
        print(text)
    except SpungeError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
