"""`merge`: the per-subset runs merged into one model per merge λ (TIES through mergekit by default)."""

from __future__ import annotations

from typing import Any

from spunge_merge.merge.settings import MergeSettings
from spunge_merge.pipeline import runtime
from spunge_merge.pipeline.jobs import Job, resolved_model
from spunge_merge.pipeline.stages.common import FORMAT, Context, Work, lam_label, run_stage, run_works
from spunge_merge.provenance import fingerprint
from spunge_merge.unlearn import registry


def stage_merge(ctx: Context) -> dict[str, Any]:
    """One merged model per λ of `merge.lambda`, each from the `merge:` section's settings at that λ."""
    section = ctx.pipeline.merge
    dtype = runtime.merge_dtype(ctx.pipeline)
    unset = {"statistics"} if section.statistics is None else set()  # fingerprints of merges without it stay as they were
    identity = {**section.model_dump(mode="json", by_alias=True, exclude={"lambdas", "cuda", *unset}), "dtype": dtype}
    works, labels = [], {}
    for lam in section.lambdas:
        label = lam_label("spunge", lam, len(section.lambdas))
        out = ctx.merge_dir / label
        labels[label] = out
        part = fingerprint(format=FORMAT, runs=ctx.fps["unlearn"], model=ctx.model.fingerprint, settings=identity, lam=lam)
        ctx.model_parts[label] = part

        def build(force: dict[str, bool], lam=lam, label=label, out=out) -> Job:
            return Job(key=f"merge/{label}", label=label, function=merge_task,
                       kwargs={"model_ref": ctx.model.ref, "model_path": str(ctx.model.path), "runs": [str(ctx.unlearn_dir)],
                               "out": str(out), "settings": section.at(lam, dtype=dtype), "cuda": runtime.merge_cuda(ctx.pipeline),
                               "views_dir": str(ctx.merge_dir / ".views"), "force": force["merge"]})

        works.append(Work(stage="merge", key=f"merge/{label}", label=f"{section.method} λ={lam:g}", parts={"merge": part},
                          outputs=[out], build=build, local=True))
    ctx.labels["spunge"] = labels
    fp = fingerprint(format=FORMAT, merges=[w.fingerprint for w in works])

    def work() -> dict[str, Any]:
        run_works(ctx, works)
        return {"detail": ", ".join(str(p.relative_to(ctx.run_dir)) for p in labels.values())}

    return run_stage(ctx, "merge", fp, list(labels.values()), work)


def merge_task(*, model_ref: str, model_path: str, runs: list[str], out: str, settings: MergeSettings, cuda: bool | None,
               views_dir: str, force: bool) -> dict[str, Any]:
    """One merged model: `merge_runs` with the settings object as the stage built it (validated once, in the schema)."""
    from spunge_merge.merge import merge_runs

    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    merge_runs(resolved_model(model_ref, model_path), runs, out, settings=settings, cuda=cuda, force=force, views_dir=views_dir,
               progress=False, method_descriptions=registry.descriptions())
    return {"path": out}
