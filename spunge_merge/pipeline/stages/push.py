"""`push`: one merged model to the Hugging Face Hub (or a dry run that lists the files)."""

from __future__ import annotations

from typing import Any

from spunge_merge.fsutil import write_json
from spunge_merge.pipeline.jobs import Job
from spunge_merge.pipeline.stages.common import FORMAT, Context, Work, lam_label, run_stage, run_works
from spunge_merge.provenance import fingerprint
from spunge_merge.unlearn import registry


def stage_push(ctx: Context) -> dict[str, Any]:
    """The merged model at `push.lambda` (default: the first merge λ) to the Hub, with its model card."""
    section = ctx.pipeline.push
    lam = section.lam if section.lam is not None else ctx.pipeline.merge.lambdas[0]
    label = lam_label("spunge", lam, len(ctx.pipeline.merge.lambdas))
    model_dir = ctx.merge_dir / label
    settings = section.model_dump(mode="json", by_alias=True)
    record_file = ctx.run_dir / "push.json"
    part = fingerprint(format=FORMAT, model=ctx.model_parts[label], settings=settings)

    def build(force: dict[str, bool]) -> Job:
        return Job(key="push", label=section.repo_id, function=push_task,
                   kwargs={"model_dir": str(model_dir), "settings": settings, "record": str(record_file)})

    work_item = Work(stage="push", key="push", label=section.repo_id + (" (dry run)" if section.dry_run else ""),
                     parts={"push": part}, outputs=[record_file], build=build, local=True)

    def work() -> dict[str, Any]:
        run_works(ctx, [work_item])
        return {"detail": f"{label} → {section.repo_id}"}

    return run_stage(ctx, "push", fingerprint(push=work_item.fingerprint), [record_file], work)


def push_task(*, model_dir: str, settings: dict[str, Any], record: str) -> dict[str, Any]:
    from spunge_merge.hub import push_model

    result = push_model(model_dir, settings["repo_id"], private=settings["private"], revision=settings["revision"],
                        create_pr=settings["create_pr"], commit_message=settings["commit_message"], dry_run=settings["dry_run"],
                        datasets=settings.get("datasets"), exclude=settings.get("exclude"),
                        method_descriptions=registry.descriptions())
    write_json(record, result)
    return {"url": result.get("commit_url") or result.get("pr_url"), "dry_run": settings["dry_run"]}
