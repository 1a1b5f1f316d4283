"""`unlearn`: the method once per subset, from the same base model, into `unlearn/<subset>/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spunge_merge.data.loading import SPLIT_MANIFEST, Subset, load_subsets
from spunge_merge.fsutil import read_json, write_json
from spunge_merge.pipeline.jobs import Job
from spunge_merge.pipeline.stages.baseline import baseline_train_work
from spunge_merge.pipeline.stages.common import FORMAT, Context, Work, run_stage, run_works
from spunge_merge.pipeline.stages.training import retain_fp, settings_identity, subset_configs, train_job
from spunge_merge.pipeline.state import STATE_DIR
from spunge_merge.provenance import fingerprint


def _subset_view(ctx: Context, subset_entry: dict[str, Any]) -> Path:
    """A one-subset split directory pointing at the real subset file, so the method records the attribute."""
    manifest = read_json(ctx.split_dir / SPLIT_MANIFEST)
    view = ctx.run_dir / STATE_DIR / "views" / subset_entry["name"]
    entry = {**subset_entry, "file": str((ctx.split_dir / subset_entry["file"]).resolve())}
    write_json(view / SPLIT_MANIFEST, {**manifest, "subsets": [entry], "values": [entry["value"]],
                                       "view_of": str(ctx.split_dir.resolve())})
    return view


def unlearn_works(ctx: Context, subsets: list[Subset]) -> list[Work]:
    """One training job per subset, each with the subset's settings, tracked by its own fingerprint."""
    section = ctx.pipeline.unlearn
    configs = subset_configs(ctx, subsets)
    entries = {e["name"]: e for e in read_json(ctx.split_dir / SPLIT_MANIFEST)["subsets"]}
    works = []
    for subset in subsets:
        part = fingerprint(format=FORMAT, method=section.method, config=settings_identity(configs[subset.name]), data=subset.sha256,
                           model=ctx.model.fingerprint, retain=retain_fp(ctx), attribute=[subset.column, subset.value])

        def build(force: dict[str, bool], subset=subset) -> Job:
            view = _subset_view(ctx, entries[subset.name])
            return train_job(ctx, f"unlearn/{subset.name}", f"{subset.value}", [str(view)], ctx.unlearn_dir,
                              configs[subset.name], force["run"])

        works.append(Work(stage="unlearn", key=f"unlearn/{subset.name}", label=str(subset.value), parts={"run": part},
                          outputs=[ctx.unlearn_dir / subset.name], build=build))
    return works


def _write_runs_manifest(ctx: Context, subsets: list[Subset]) -> None:
    """`unlearn/manifest.json` listing every run, in the exact form `spunge unlearn` writes."""
    from spunge_merge.runs import RunOutcome, run_subsets

    run_subsets(subsets, ctx.unlearn_dir, method=ctx.pipeline.unlearn.method,
                run_one=lambda subset, path: RunOutcome(name=subset.name, path=path, skipped=True), split_source=ctx.split_dir)


def stage_unlearn(ctx: Context) -> dict[str, Any]:
    """One run per subset (the baseline's training fans out with them when it will run too)."""
    subsets = load_subsets(ctx.split_dir)
    works = unlearn_works(ctx, subsets)
    fp = fingerprint(format=FORMAT, runs=[w.fingerprint for w in works])
    outputs = [w.outputs[0] for w in works] + [ctx.unlearn_dir / "manifest.json"]

    def work() -> dict[str, Any]:
        ctx.unlearn_dir.mkdir(parents=True, exist_ok=True)
        _write_runs_manifest(ctx, subsets)  # before the jobs: each job's own manifest write then finds a spunge output
        extra = []
        if ctx.pipeline.baseline.enabled and ctx.only is None:  # fan out the baseline's training with the subsets
            extra = [baseline_train_work(ctx, subsets)[0]]
        results = run_works(ctx, works + extra)
        _write_runs_manifest(ctx, subsets)
        steps = {w.label: results.get(w.key, {}).get("steps") for w in works}
        return {"detail": f"{len(works)} runs", "steps": steps}

    return run_stage(ctx, "unlearn", fp, outputs, work)
