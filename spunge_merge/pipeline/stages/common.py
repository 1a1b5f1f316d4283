"""What every stage shares: the `Context` of one `spunge run`, and the tracking of stages (`run_stage`)
and of the independent pieces of work inside them (`Work`, `run_works`). See the package docstring
for how a stage decides it is up to date, and for the layout of a run directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import sha256_file, sha256_json
from spunge_merge.models import ResolvedModel
from spunge_merge.pipeline.executors import LocalExecutor
from spunge_merge.pipeline.jobs import Job
from spunge_merge.pipeline.progress import RunView
from spunge_merge.pipeline.schema import Pipeline, resolve_path
from spunge_merge.pipeline.state import StateStore

FORMAT = 1  # bump when the layout or the meaning of a fingerprint changes


@dataclass
class Context:
    """Everything the stages share during one `spunge run`."""

    pipeline: Pipeline
    base_dir: Path  # the pipeline file's folder: relative paths in the file are relative to it
    run_dir: Path
    model: ResolvedModel
    state: StateStore
    view: RunView
    executor: Any
    force: bool = False
    only: str | None = None
    fps: dict[str, str] = field(default_factory=dict)
    labels: dict[str, dict[str, Path]] = field(default_factory=dict)  # role -> {label: model dir}
    model_parts: dict[str, str] = field(default_factory=dict)  # label -> fingerprint of that model
    info: dict[str, Any] = field(default_factory=dict)  # figures for the report

    def path(self, value: str) -> str:
        return resolve_path(value, self.base_dir)

    @property
    def split_dir(self) -> Path:
        return self.run_dir / "split"

    @property
    def unlearn_dir(self) -> Path:
        return self.run_dir / "unlearn"

    @property
    def baseline_dir(self) -> Path:
        return self.run_dir / "baseline"

    @property
    def merge_dir(self) -> Path:
        return self.run_dir / "merge"

    @property
    def eval_dir(self) -> Path:
        return self.run_dir / "eval"

    @property
    def inputs_dir(self) -> Path:
        return self.run_dir / "inputs"

    @property
    def retain_file(self) -> Path:
        return self.inputs_dir / "retain.jsonl"


# ------------------------------------------------------------------------------------------------
# Tracking: stages and the pieces of work inside them


@dataclass
class Work:
    """A tracked piece of work: `build(force_by_part)` gives the job that does it."""

    stage: str
    key: str
    label: str
    parts: dict[str, str]  # name -> fingerprint; a changed part is redone with force
    outputs: list[Path]
    build: Callable[[dict[str, bool]], Job]
    local: bool = False  # always in this process (cheap work that need not travel to Ray)

    @property
    def fingerprint(self) -> str:
        return sha256_json(self.parts)


def run_works(ctx: Context, works: list[Work]) -> dict[str, dict[str, Any]]:
    """Run the works that are not up to date; Ray-capable ones through the executor, the rest here."""
    results: dict[str, dict[str, Any]] = {}
    pending: list[tuple[Work, Job]] = []
    for work in works:
        if not ctx.force and ctx.state.is_done(work.key, work.fingerprint):
            ctx.view.job(work.stage, work.key, work.label, "skipped", "up to date")
            results[work.key] = (ctx.state.get(work.key) or {}).get("result", {})
            continue
        previous = {} if ctx.force else ctx.state.previous_parts(work.key)
        force = {name: previous.get(name) != value for name, value in work.parts.items()}
        job = work.build(force)
        ctx.state.started(work.key, work.fingerprint, parts=work.parts)
        ctx.info.setdefault("jobs_run", []).append(work.key)
        ctx.view.job(work.stage, work.key, work.label, "queued")
        pending.append((work, job))
    by_key = {job.key: work for work, job in pending}

    def started(job: Job) -> None:
        work = by_key[job.key]
        ctx.view.job(work.stage, work.key, work.label, "running")

    def finished(job: Job, result: dict[str, Any]) -> None:
        work = by_key[job.key]
        ctx.state.done(work.key, work.fingerprint, outputs=[str(p) for p in work.outputs], parts=work.parts, result=result)
        ctx.view.job(work.stage, work.key, work.label, "done", _job_detail(result))
        results[work.key] = result

    remote = [job for work, job in pending if not work.local]
    local = [job for work, job in pending if work.local]
    try:
        if remote:
            ctx.executor.run(remote, started=started, finished=finished)
        if local:
            LocalExecutor().run(local, started=started, finished=finished)
    except BaseException:
        for work, job in pending:
            if job.key not in results:
                ctx.view.job(work.stage, work.key, work.label, "failed")
        raise
    return results


def _job_detail(result: dict[str, Any]) -> str:
    if result.get("skipped"):
        return "found complete"
    if result.get("steps") is not None:
        return f"{result['steps']} steps"
    if "summary" in result:
        parts = []
        for name, value in result["summary"].items():
            if isinstance(value, dict):
                parts.append(f"{name} " + " ".join(f"{k} {100 * v:.0f}%" for k, v in value.items()))
            elif isinstance(value, float):
                parts.append(f"{name} {value:.2f}")
        return "; ".join(parts)
    return ""


def run_stage(ctx: Context, name: str, fp: str, outputs: list[Path], work: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """Skip the stage when its record matches `fp` (or only check that under `--only` another stage)."""
    ctx.fps[name] = fp
    key = f"stage/{name}"
    complete = ctx.state.is_done(key, fp) and all(Path(p).exists() for p in outputs)  # outputs: where they are now
    if ctx.only is not None and ctx.only != name:
        if not complete:
            raise SpungeError(f"--only {ctx.only}: stage '{name}' before it has not run with the current settings and inputs; "
                              f"run the pipeline without --only first (or --only {name})")
        ctx.view.stage(name, "skipped", "up to date")
        return (ctx.state.get(key) or {}).get("info", {})
    if complete and not ctx.force:
        ctx.view.stage(name, "skipped", "up to date: inputs and settings unchanged")
        return (ctx.state.get(key) or {}).get("info", {})
    ctx.state.started(key, fp)
    ctx.info.setdefault("ran", []).append(name)
    ctx.view.stage(name, "running")
    started = time.perf_counter()
    try:
        info = work() or {}
    except BaseException:
        ctx.view.stage(name, "failed")
        raise
    ctx.state.done(key, fp, outputs=[str(p) for p in outputs], info=info, seconds=round(time.perf_counter() - started, 1))
    ctx.view.stage(name, "done", info.get("detail", ""))
    return info


def path_identity(value: Any) -> Any:
    """Content hash of a local file or directory argument; anything else as given."""
    if not isinstance(value, str):
        return value
    path = Path(value)
    if path.is_file():
        return {"sha256": sha256_file(path)}
    if path.is_dir():
        return {"sha256": sha256_json({str(f.relative_to(path)): sha256_file(f) for f in sorted(path.rglob("*"))
                                       if f.is_file() and not f.name.startswith(".")})}
    return value


def lam_label(role: str, lam: float | None, count: int) -> str:
    return role if lam is None or count == 1 else f"{role}-lam{lam:g}"
