"""`push`: the merged model to the Hugging Face Hub (or a dry run that lists the files), and with `push.runs`
every per-subset run beside it (`REPO-<subset>`), so one pipeline publishes everything it made."""

from __future__ import annotations

from typing import Any

from spunge_merge.fsutil import write_json
from spunge_merge.pipeline.jobs import Job
from spunge_merge.pipeline.stages.common import FORMAT, Context, Work, lam_label, run_stage, run_works
from spunge_merge.provenance import fingerprint


def stage_push(ctx: Context) -> dict[str, Any]:
    """The merged model at `push.lambda` (default: the first merge λ) to the Hub, with its model card."""
    section = ctx.pipeline.push
    lam = section.lam if section.lam is not None else ctx.pipeline.merge.lambdas[0]
    label = lam_label("spunge", lam, len(ctx.pipeline.merge.lambdas))
    model_dir = ctx.merge_dir / label
    settings = section.model_dump(mode="json", by_alias=True)
    record_file = ctx.run_dir / "push.json"
    part = fingerprint(format=FORMAT, model=ctx.model_parts[label], settings=settings,
                       runs=ctx.fps.get("unlearn") if section.runs else None, evals=ctx.fps.get("eval"))
    evals = [str(ctx.eval_dir / label), str(ctx.eval_dir / "compare")]  # pushed as eval/<folder>/ and shown on the card

    def build(force: dict[str, bool]) -> Job:
        return Job(key="push", label=section.repo_id, function=push_task,
                   kwargs={"model_dir": str(model_dir), "settings": settings, "record": str(record_file),
                           "unlearn_dir": str(ctx.unlearn_dir), "eval_dirs": evals})

    work_item = Work(stage="push", key="push", label=section.repo_id + (" (dry run)" if section.dry_run else ""),
                     parts={"push": part}, outputs=[record_file], build=build, local=True)

    def work() -> dict[str, Any]:
        run_works(ctx, [work_item])
        return {"detail": f"{label} → {section.repo_id}"}

    return run_stage(ctx, "push", fingerprint(push=work_item.fingerprint), [record_file], work)


def push_task(*, model_dir: str, settings: dict[str, Any], record: str, unlearn_dir: str | None = None,
              eval_dirs: list[str] | None = None) -> dict[str, Any]:
    from pathlib import Path

    from spunge_merge.pipeline.publish import pipeline_outputs, push_output

    options = {"private": settings["private"], "revision": settings["revision"], "create_pr": settings["create_pr"],
               "commit_message": settings["commit_message"], "dry_run": settings["dry_run"], "datasets": settings.get("datasets"),
               "exclude": settings.get("exclude"), "task": settings.get("task")}
    targets = (pipeline_outputs(Path(unlearn_dir), Path(model_dir), settings["repo_id"]) if settings.get("runs") and unlearn_dir
               else [(Path(model_dir), settings["repo_id"], False)])
    merged_evals = [d for d in eval_dirs or [] if Path(d).is_dir()]
    results = [push_output(directory, repo_id, materialize=materialize, **options,
                           eval_dirs=merged_evals if directory == Path(model_dir) else None)
               for directory, repo_id, materialize in targets]
    result = {**results[0], "runs": results[1:]}  # the merged model's push, then each run's
    write_json(record, result)
    return {"url": result.get("commit_url") or result.get("pr_url"), "dry_run": settings["dry_run"],
            "pushed": [r["repo_id"] for r in results]}
