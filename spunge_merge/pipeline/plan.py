"""`spunge run --plan`: what a pipeline would do, and for how long, computed from the file and the data alone.

Nothing is trained, loaded or converted: the data is read to count the subsets' texts, each run's
optimizer steps come from its method's `planned_steps` (the baseline's from `match_baseline`, as the
run itself does), and the time is steps × the cost per step **measured** by earlier runs of the same
method on the same base model (the `train_seconds` or `elapsed_s` their `spunge.json` recorded, found
in the run directory and in `runs/` beside the pipeline file). Without such a run the plan says so
rather than guess.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from spunge_merge.config import apply_overrides, load_pipeline_yaml
from spunge_merge.data.discovery import BlockBy
from spunge_merge.errors import SpungeError
from spunge_merge.pipeline import runtime
from spunge_merge.pipeline.inputs import load_ref
from spunge_merge.pipeline.schema import STAGES, Pipeline, baseline_corpora, parse_pipeline, resolve_path
from spunge_merge.unlearn import registry


def _texts(table, column: str) -> list[str]:
    return [t for t in table[column] if isinstance(t, str) and t.strip()] if column in table.column_names else []


def _subsets(pipeline: Pipeline, base_dir: Path) -> dict[str, dict[str, Any]] | None:
    """{name: {value, texts}} from the data, as the split stage would make them; None when discovered at run time."""
    split = pipeline.split
    if split.subsets:
        return {name: {"value": name, "texts": _texts(load_ref(ref, base_dir), ref.text_column)} for name, ref in split.subsets.items()}
    if isinstance(split.by, BlockBy):  # numbered before the filters, as the split stage does
        from spunge_merge.data.discovery.blocks import number_blocks
        from spunge_merge.data.split import apply_filters
        from spunge_merge.data.where import parse_condition

        table, _ = number_blocks(load_ref(split.data.model_copy(update={"where": []}), base_dir), split.by, split.data.path)
        table, by = apply_filters(table, [parse_condition(e) for e in split.data.where], split.data.path), split.by.block.column
    elif not isinstance(split.by, str):
        return None  # clustering or a classifier decides the subsets: that is computation
    else:
        table, by = load_ref(split.data, base_dir), split.by
    if by not in table.column_names:
        raise SpungeError(f"split.by: no column '{by}' in {split.data.path} (columns: {', '.join(table.column_names)})")
    if split.data.text_column not in table.column_names:
        raise SpungeError(f"split.data.text_column: no column '{split.data.text_column}' in {split.data.path} "
                          f"(columns: {', '.join(table.column_names)})")
    groups: dict[str, list[str]] = {}
    for value, text in zip(table[by], table[split.data.text_column], strict=True):
        if isinstance(text, str) and text.strip() and value is not None:
            groups.setdefault(str(value), []).append(text)
    values = split.values or sorted(groups)
    return {value: {"value": value, "texts": groups.get(value, [])} for value in values}


def measured_seconds_per_step(method: str, model_ref: str, folders: list[Path]) -> tuple[float | None, int]:
    """Median seconds per optimizer step of earlier runs of `method` from `model_ref` under `folders`, and how many."""
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for record_file in folder.rglob("spunge.json"):
            try:
                record = json.loads(record_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            base = record.get("base_model") if isinstance(record.get("base_model"), dict) else {}
            result = record.get("result") if isinstance(record.get("result"), dict) else {}
            seconds = result.get("train_seconds", result.get("elapsed_s"))
            steps = result.get("steps")
            if record.get("kind") == "materialized-model":  # a model built from a run repeats that run's figures
                continue
            if (record.get("method") == method and base.get("ref") == model_ref and isinstance(seconds, (int, float))
                    and isinstance(steps, int) and steps > 0):
                found.append(seconds / steps)
    return (statistics.median(found), len(found)) if found else (None, 0)


def plan_pipeline(pipeline_file: str | Path, *, run_dir: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The stages, their jobs with step counts, and the expected training time (see module docstring)."""
    from spunge_merge.pipeline.runner import default_run_dir

    pipeline_file = Path(pipeline_file)
    raw = apply_overrides(load_pipeline_yaml(pipeline_file), list(overrides or []), str(pipeline_file))
    pipeline = parse_pipeline(raw, str(pipeline_file))
    base_dir = pipeline_file.resolve().parent
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(pipeline)
    method = registry.get_method(pipeline.unlearn.method)
    seeds = pipeline.seeds or [None]
    stages = [s for s in STAGES if (s != "baseline" or pipeline.baseline.enabled) and (s != "push" or pipeline.push)]
    subsets = _subsets(pipeline, base_dir)
    retain = None
    if pipeline.unlearn.retain:
        retain = [t for ref in pipeline.unlearn.retain for t in _texts(load_ref(ref, base_dir), ref.text_column)]
    jobs: dict[str, list[dict[str, Any]]] = {stage: [] for stage in stages}
    if subsets is not None:
        configs = {name: runtime.method_settings(pipeline, pipeline.unlearn.overrides.get(str(entry["value"]),
                                                 pipeline.unlearn.overrides.get(name, pipeline.unlearn.config)))
                   for name, entry in subsets.items()}
        for name, entry in subsets.items():
            steps = method.planned_steps(configs[name], entry["texts"], retain)
            jobs["split"].append({"name": name, "texts": len(entry["texts"])})
            jobs["unlearn"].append({"name": name, "texts": len(entry["texts"]), "steps": steps})
        if pipeline.baseline.enabled:
            config = runtime.method_settings(pipeline, pipeline.baseline.config)
            if pipeline.baseline.budget == "matched":
                split = {name: c.model_dump(mode="json", exclude_unset=True) for name, c in configs.items()}
                matched = method.match_baseline(split, {n: list(e["texts"]) for n, e in subsets.items()},
                                                config.model_dump(mode="json", exclude_unset=True), retain, baseline_corpora(pipeline))
                steps = int(matched.record.get("baseline_planned") or 0)
            else:
                steps = method.planned_steps(config, [t for e in subsets.values() for t in e["texts"]], retain)
            jobs["baseline"].append({"name": "un-split run", "texts": sum(len(e["texts"]) for e in subsets.values()), "steps": steps})
    baseline_models = len(pipeline.baseline.lambdas or [None]) if pipeline.baseline.enabled else 0
    jobs["merge"] = [{"name": f"λ {lam:g}"} for lam in pipeline.merge.lambdas]
    if pipeline.baseline.enabled:
        jobs["baseline"] += [{"name": f"baseline model {i + 1}"} for i in range(baseline_models)]
    counts = {"base": 1, "baseline": baseline_models, "spunge": len(pipeline.merge.lambdas)}
    evaluations = list(pipeline.eval.chosen)
    jobs["eval"] = [{"name": f"{name} on {role} ({counts[role]} model{'s' if counts[role] != 1 else ''})"}
                    for role in pipeline.eval.models if counts.get(role) for name in evaluations]
    if pipeline.push is not None:
        jobs["push"] = [{"name": pipeline.push.repo_id + (" and each run" if pipeline.push.runs else "")}]
    folders = [run_dir, base_dir / "runs"]
    cost, measured_runs = measured_seconds_per_step(method.name, resolve_path(pipeline.model, base_dir), folders)
    if cost is None and resolve_path(pipeline.model, base_dir) != pipeline.model:
        cost, measured_runs = measured_seconds_per_step(method.name, pipeline.model, folders)
    steps_per_seed = sum(job.get("steps") or 0 for stage in ("unlearn", "baseline") for job in jobs.get(stage, []))
    return {"name": pipeline.name, "method": method.name, "model": pipeline.model, "run_dir": str(run_dir),
            "seeds": [s for s in seeds if s is not None], "stages": stages, "jobs": jobs,
            "subsets_known": subsets is not None, "steps_per_seed": steps_per_seed, "steps": steps_per_seed * len(seeds),
            "seconds_per_step": cost, "measured_runs": measured_runs,
            "training_seconds": cost * steps_per_seed * len(seeds) if cost is not None else None}


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as lines for the console."""
    seeds = plan["seeds"]
    lines = [f"Plan for {plan['name']}: {plan['method']} on {plan['model']} → {plan['run_dir']}"
             + (f", {len(seeds)} seeds ({', '.join(map(str, seeds))}), each running every stage" if seeds else "")]
    for stage in plan["stages"]:
        entries = plan["jobs"].get(stage) or []
        lines.append(f"  {stage}: {len(entries)} job{'s' if len(entries) != 1 else ''}")
        for job in entries:
            extra = [f"{job['texts']} texts"] if "texts" in job else []
            extra += [f"{job['steps']} steps"] if "steps" in job else []
            lines.append(f"    - {job['name']}" + (f" ({', '.join(extra)})" if extra else ""))
        if stage == "split" and not plan["subsets_known"]:
            lines.append("    - subsets discovered at run time (clustering / a classifier): step counts follow from them")
    total = f"{plan['steps_per_seed']} optimizer steps" + (f" per seed, {plan['steps']} in all" if seeds else "")
    lines.append(f"Training: {total}.")
    if plan["seconds_per_step"] is not None:
        minutes = plan["training_seconds"] / 60
        lines.append(f"Expected training time: about {minutes:.1f} min ({plan['seconds_per_step']:.3g} s/step, the median of "
                     f"{plan['measured_runs']} earlier {plan['method']} run(s) on this model found in the run directory "
                     "and runs/); merges and evaluations come on top.")
    else:
        lines.append(f"Expected time: no earlier {plan['method']} run on {plan['model']} was found to measure the cost per step "
                     "(in the run directory or runs/ beside the pipeline file); run one subset first, e.g. with --set, "
                     "and plan again.")
    lines.append("Nothing was computed: no model was loaded, no data was written.")
    return "\n".join(lines)
