"""`run_pipeline`: run a pipeline file's stages in order into one run directory, then write the report.

One run directory holds everything (see `stages`); a second `spunge run` of the same file finds
every stage up to date and does no work, and a run that was killed resumes where it stopped. Two
runs cannot share a run directory at the same time (an advisory lock, released by the OS even
after `kill -9`).

A run directory remembers how it was run (`pipeline.yaml`, the settings as run, `--set` included).
A later run whose settings differ is refused before anything is touched, with the differing keys
and the stages they would redo, unless `accept_changes` (`--accept-changes`) or `force` says to go
ahead; then only the stages downstream of the change are redone. Why refuse: retraining silently
over finished runs, e.g. because a `--set` was forgotten on the second invocation, costs hours and
loses the results the directory held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from spunge_merge.config import apply_overrides, as_run_text, load_pipeline_yaml
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_write_text, read_json, write_json
from spunge_merge.models import resolve_model
from spunge_merge.pipeline.executors import make_executor
from spunge_merge.pipeline.inputs import check_local_inputs
from spunge_merge.pipeline.progress import LOG_FILE, RunView, log
from spunge_merge.pipeline.schema import STAGES, Pipeline, parse_pipeline, resolve_path
from spunge_merge.pipeline.stages import STAGE_FUNCTIONS, Context
from spunge_merge.pipeline.state import STATE_DIR, StateStore

REPORT_FILE = "report.md"
REPORT_JSON = "report.json"
RECORDED_PIPELINE = "pipeline.yaml"
# What a change under each top-level key of the pipeline file can make stale (the fingerprints decide the
# rest: a stage listed here whose inputs turn out unchanged is still skipped).
_AFFECTS = {
    "model": ("split", "unlearn", "baseline", "merge", "eval", "push"),
    "split": ("split", "unlearn", "baseline", "merge", "eval", "push"),
    "unlearn": ("unlearn", "baseline", "merge", "eval", "push"),
    "baseline": ("baseline", "eval", "push"),
    "merge": ("merge", "eval", "push"),
    "eval": ("eval", "push"),
    "push": ("push",),
}
_MISSING = object()


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    report: Path | None
    merged: dict[str, Path]  # label -> merged model dir
    baseline: dict[str, Path]
    seconds: float
    ran: list[str]  # stages that did work (not skipped)
    jobs: list[str]  # keys of the jobs and tasks that did work
    text: str  # the report's Markdown


def default_run_dir(pipeline: Pipeline) -> Path:
    return Path(pipeline.run_dir) if pipeline.run_dir else Path("runs") / pipeline.name


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, name: str = "lock"):
    """One `spunge run` per run directory at a time (a file lock named `name` in its state folder)."""
    lock_path = run_dir / STATE_DIR / name
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpungeError(f"{run_dir} is in use by another `spunge run` (lock {lock_path})") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run_pipeline(
    pipeline_file: str | Path,
    *,
    run_dir: str | Path | None = None,
    only: str | None = None,
    force: bool = False,
    executor: str | None = None,
    ray_address: str | None = None,
    live: bool | None = None,
    console=None,
    overrides: list[str] | None = None,
    accept_changes: bool = False,
) -> RunSummary:
    """Run (or resume) the pipeline in `pipeline_file`; see the module docstring.

    `accept_changes`: go ahead when the settings differ from those the run directory recorded
    (otherwise SpungeError listing the differences and the stages they would redo)."""
    pipeline_file = Path(pipeline_file)
    raw = apply_overrides(load_pipeline_yaml(pipeline_file), list(overrides or []), str(pipeline_file))
    pipeline = parse_pipeline(raw, str(pipeline_file))
    check_local_inputs(pipeline, pipeline_file.resolve().parent)  # before anything is written or the model converted
    if only is not None and only not in STAGES:
        raise SpungeError(f"--only {only}: no such stage (stages: {', '.join(STAGES)})")
    if only == "baseline" and not pipeline.baseline.enabled:
        raise SpungeError("--only baseline: the baseline is disabled in this pipeline (baseline.enabled: false)")
    if only == "push" and pipeline.push is None:
        raise SpungeError("--only push: this pipeline has no push section")
    if pipeline.seeds is not None:  # one run per seed, then the aggregate: pipeline/seeds.py
        from spunge_merge.pipeline.seeds import run_seeds

        return run_seeds(pipeline_file, pipeline, run_dir=run_dir, only=only, force=force, executor=executor,
                         ray_address=ray_address, live=live, console=console, overrides=overrides,
                         accept_changes=accept_changes)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(pipeline)
    executor_name = executor or pipeline.executor
    started = time.perf_counter()
    _make_run_dir(run_dir)
    stages = [s for s in STAGES if (s != "baseline" or pipeline.baseline.enabled) and (s != "push" or pipeline.push)]
    changes = check_recorded_settings(run_dir, raw, stages, accept=accept_changes or force)
    with run_dir_lock(run_dir):
        effective = as_run_text(pipeline_file, raw, overrides)
        atomic_write_text(run_dir / RECORDED_PIPELINE, effective)
        model = resolve_model(resolve_path(pipeline.model, pipeline_file.resolve().parent))
        with RunView(run_dir, stages, title=f"spunge run {pipeline.name} → {run_dir}", live=live, console=console) as view:
            view.note(f"pipeline {pipeline_file} ({pipeline.unlearn.method}, {executor_name} executor); log: {run_dir / LOG_FILE}")
            if changes:
                view.note(changes)
            engine = make_executor(executor_name, address=ray_address or pipeline.ray.address, runtime_env=pipeline.ray.runtime_env)
            ctx = Context(pipeline=pipeline, base_dir=pipeline_file.resolve().parent, run_dir=run_dir, model=model,
                          state=StateStore(run_dir), view=view, executor=engine, force=force, only=only)
            try:
                for stage in stages:
                    STAGE_FUNCTIONS[stage](ctx)
                    if only == stage:
                        break
            except SpungeError as exc:
                log.error("stopped: %s", exc)
                raise
            except KeyboardInterrupt:
                log.info("stopped: interrupted (Ctrl-C); a rerun resumes from here")  # the log file; the CLI prints one line
                raise
            except BaseException as exc:
                log.exception("stopped: %s", type(exc).__name__)
                raise
            finally:
                engine.close()
        seconds = time.perf_counter() - started
        ran = list(ctx.info.get("ran", []))
        report = None
        text = ""
        if (run_dir / "eval").is_dir() and "eval" in _completed(ctx):
            text = write_report(ctx, seconds=seconds, ran=ran)
            report = run_dir / REPORT_FILE
    return RunSummary(run_dir=run_dir, report=report, merged=dict(ctx.labels.get("spunge", {})),
                      baseline=dict(ctx.labels.get("baseline", {})), seconds=seconds, ran=ran,
                      jobs=list(ctx.info.get("jobs_run", [])), text=text)


def _make_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise SpungeError(f"--run-dir {run_dir} is a file; give a directory (it is created if missing)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpungeError(f"--run-dir {run_dir}: cannot create it ({exc.strerror or exc})") from exc


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, sub in value.items():
            flat.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def settings_changes(recorded: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, recorded value, new value) for every setting that differs; `_MISSING` for an absent one."""
    old, new = _flatten(recorded), _flatten(current)
    return [(key, old.get(key, _MISSING), new.get(key, _MISSING)) for key in sorted(set(old) | set(new))
            if old.get(key, _MISSING) != new.get(key, _MISSING)]


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "(not set)"
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def check_recorded_settings(run_dir: Path, raw: dict, stages: list[str], *, accept: bool) -> str:
    """Compare the settings about to run with the run directory's `pipeline.yaml`.

    Returns a note to show ("" when nothing differs or nothing was recorded); raises SpungeError when
    they differ, finished work would be redone, and `accept` is false.
    """
    path = run_dir / RECORDED_PIPELINE
    if not path.is_file():
        return ""
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        recorded = None
    if not isinstance(recorded, dict):
        return f"{path} is not readable YAML; its settings could not be compared with these"
    changes = settings_changes(recorded, raw)
    if not changes:
        return ""
    redo = [s for s in stages if any(s in _AFFECTS.get(key.split(".")[0], ()) for key, _, _ in changes)]
    shown = changes[:8]
    listing = "; ".join(f"{key}: {_shown(old)} -> {_shown(new)}" for key, old, new in shown)
    if len(changes) > len(shown):
        listing += f"; (+{len(changes) - len(shown)} more)"
    state = StateStore(run_dir)
    finished = [s for s in redo if (state.get(f"stage/{s}") or {}).get("status") in ("done", "started")]
    if finished and not accept:
        raise SpungeError(f"{run_dir} was run with other settings ({path}): {listing}. This would redo: "
                          f"{', '.join(finished)} (where their inputs changed), replacing their results; pass "
                          "--accept-changes to do that, or give another --run-dir to keep both")
    what = f"redoing where inputs changed: {', '.join(redo)}" if redo else "no stage depends on them"
    return f"settings differ from the recorded run ({listing}); {what}"


def _completed(ctx: Context) -> set[str]:
    return {s for s in STAGES if (ctx.state.get(f"stage/{s}") or {}).get("status") == "done"}


# ------------------------------------------------------------------------------------------------
# Report


def _knowledge_section(ctx: Context, labels: dict[str, str]) -> tuple[str, dict[str, Any]]:
    from spunge_merge.data.loading import load_subsets
    from spunge_merge.evaluate.knowledge import KNOWLEDGE_FILE, knowledge_table

    results = {}
    for label in labels:
        path = ctx.run_dir / "eval" / label / KNOWLEDGE_FILE
        if path.is_file():
            results[label] = read_json(path)
    if not results:
        return "", {}
    forget = [str(s.value) for s in load_subsets(ctx.run_dir / "split")]
    table = knowledge_table(results, forget=forget)
    lines = ["## Knowledge: held-out facts completed correctly, per domain", "",
             f"Forgotten (split and unlearned): {', '.join(forget)}. Greedy completion; a fact counts when the completion "
             "starts with its answer.", "", table]
    figures = {label: {d: e["accuracy"] for d, e in r["domains"].items()} for label, r in results.items()}
    return "\n".join(lines), figures


def write_report(ctx: Context, *, seconds: float, ran: list[str]) -> str:
    """`report.md` and `report.json` in the run directory; returns the Markdown."""
    pipeline = ctx.pipeline
    labels = ctx.info.get("eval_models") or {}
    parts = [f"# {pipeline.name}: Spunge vs. un-split baseline", ""]
    if pipeline.description:
        parts += [pipeline.description.strip(), ""]
    split_info = (ctx.state.get("stage/split") or {}).get("info", {})
    parts += [f"- base model: `{pipeline.model}`; method: **{pipeline.unlearn.method}**; "
              f"merge: {pipeline.merge.method}, λ = {', '.join(f'{v:g}' for v in pipeline.merge.lambdas)}",
              f"- subsets (rows): {split_info.get('detail', '-')}"]
    budget = ((ctx.state.get("stage/baseline") or {}).get("info") or {}).get("budget")
    if budget:
        if budget.get("mode") == "matched":
            runs = " + ".join(f"{name} {steps}" for name, steps in (budget.get("split_runs") or {}).items())
            changed = ", ".join(f"{k} {v}" for k, v in (budget.get("changed") or {}).items())
            parts.append(f"- budget: same optimizer steps — split runs {runs} = {budget.get('split_total')}; baseline planned "
                         f"{budget.get('baseline_planned')}, ran {budget.get('baseline_steps')}"
                         + (f" (its settings changed for that: {changed})" if changed else ""))
        else:
            parts.append(f"- budget: the baseline's settings as given; it ran {budget.get('baseline_steps')} steps")
    parts.append("")
    knowledge_md, knowledge = _knowledge_section(ctx, labels)
    if knowledge_md:
        parts += [knowledge_md, ""]
    compare_md = ctx.run_dir / "eval" / "compare" / "compare.md"
    compare = None
    if compare_md.is_file():  # the eval stage's table, its headings one level down
        lines = compare_md.read_text(encoding="utf-8").strip().splitlines()
        parts += ["#" + line if line.startswith("#") else line for line in lines] + [""]
        compare = read_json(ctx.run_dir / "eval" / "compare" / "compare.json")
    parts += ["## Where things are", "", "| model | directory | evaluations |", "|---|---|---|"]
    for label, path in labels.items():
        parts.append(f"| {label} | `{path}` | `{ctx.run_dir / 'eval' / label}` |")
    timings = {s: (ctx.state.get(f"stage/{s}") or {}).get("seconds") for s in STAGES}
    spent = ", ".join(f"{s} {t:.0f} s" for s, t in timings.items() if t is not None)
    parts += ["", f"Run directory `{ctx.run_dir}`; log `{ctx.run_dir / LOG_FILE}`. Time per stage (when it last did its work): "
              f"{spent}. This invocation took {seconds:.0f} s"
              + (f" (stages that did work: {', '.join(ran)})." if ran else " (nothing to do: every stage was up to date)."), ""]
    text = "\n".join(parts)
    atomic_write_text(ctx.run_dir / REPORT_FILE, text)
    write_json(ctx.run_dir / REPORT_JSON, {"kind": "pipeline-report", "name": pipeline.name, "models": labels,
                                           "knowledge": knowledge, "compare": compare, "budget": budget,
                                           "seconds": round(seconds, 1), "stage_seconds": timings, "stages_run": ran})
    return text
