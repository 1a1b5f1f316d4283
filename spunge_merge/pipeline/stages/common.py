"""The stages of a pipeline: split → unlearn → baseline → merge → eval → push.

Each stage computes a fingerprint from its settings and the fingerprints of what it reads (data
sha256, the base model, the stages before it), and is skipped when its record in the run
directory carries the same one. Inside a stage, every independent piece of work (one subset's
unlearning run, one merged model per λ, one model's evaluations) is tracked the same way, so an
interrupted stage redoes only what had not finished, and redoes it from scratch: every output is
written to a temporary sibling and renamed at the end, and every run is seeded, so the rerun's
files are the ones an uninterrupted run writes.

Layout of a run directory:

    inputs/               filtered or Hub data written once (retain.jsonl, eval-perplexity.jsonl, ...)
    split/                one file per attribute value + manifest.json (spunge split's layout)
    unlearn/<name>/       one run per subset + manifest.json (kind unlearn-runs)
    baseline/run/         the same method on the un-split union (same budget)
    baseline/models/<l>/  full models of the baseline, one per λ (the method's `to_model`)
    merge/<label>/        merged model per merge λ (spunge, or spunge-lam<λ>)
    eval/<label>/         every evaluation of one model; eval/compare/ the comparison
    report.md             the final tables; pipeline.log the log; .spunge-state/ the records
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spunge_merge.data.loading import SPLIT_MANIFEST, Subset, load_subsets
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, atomic_write_text, iter_jsonl, read_json, sha256_file, sha256_json, write_json
from spunge_merge.models import ResolvedModel
from spunge_merge.pipeline import evals, inputs, runtime
from spunge_merge.pipeline.executors import LocalExecutor
from spunge_merge.pipeline.jobs import Job, resolved_model
from spunge_merge.pipeline.progress import RunView
from spunge_merge.pipeline.schema import DataRef, Pipeline, baseline_corpora, resolve_path
from spunge_merge.pipeline.state import STATE_DIR, StateStore
from spunge_merge.provenance import fingerprint
from spunge_merge.unlearn import registry

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


def _path_identity(value: Any) -> Any:
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


def _lam_label(role: str, lam: float | None, count: int) -> str:
    return role if lam is None or count == 1 else f"{role}-lam{lam:g}"


# ------------------------------------------------------------------------------------------------
# split


def stage_split(ctx: Context) -> dict[str, Any]:
    section = ctx.pipeline.split
    retain = ctx.pipeline.unlearn.retain or []
    if section.subsets is None:
        data = inputs.identity(section.data, ctx.base_dir)
    else:
        data = {name: inputs.identity(ref, ctx.base_dir) for name, ref in section.subsets.items()}
    fp = fingerprint(format=FORMAT, split=section.model_dump(mode="json", by_alias=True), data=data,
                     retain=[inputs.identity(ref, ctx.base_dir) for ref in retain])
    outputs = [ctx.split_dir / SPLIT_MANIFEST] + ([ctx.retain_file] if retain else [])

    def work() -> dict[str, Any]:
        if section.subsets is None:
            _split_by_column(ctx)
        else:
            _split_from_sources(ctx)
        if retain:
            _write_retain(ctx, retain)
        manifest = read_json(ctx.split_dir / SPLIT_MANIFEST)
        counts = {entry["value"]: entry["rows"] for entry in manifest["subsets"]}
        return {"detail": ", ".join(f"{v} {n}" for v, n in counts.items()), "rows": counts}

    return run_stage(ctx, "split", fp, outputs, work)


def _split_by_column(ctx: Context) -> None:
    from spunge_merge.data.split import split_dataset

    section = ctx.pipeline.split
    ref = section.data
    if ref.config is not None or ref.limit is not None:  # Hub configuration or a row limit: write the rows first
        source = ctx.inputs_dir / "forget.jsonl"
        inputs.write_rows(ref, ctx.base_dir, source)
        split_dataset(source, by=section.by, out=ctx.split_dir, values=section.values, text_column="text", force=True,
                      progress=False)
    else:  # `by` a column, or how to discover one (clusters, a classifier): split_dataset handles both
        split_dataset(ctx.path(ref.path), by=section.by, out=ctx.split_dir, where=ref.where, values=section.values,
                      text_column=ref.text_column, force=True, hub_split=ref.hub_split, progress=False)


def _split_from_sources(ctx: Context) -> None:
    """`split.subsets`: one data source per subset, laid out as a `spunge split` directory."""
    from spunge_merge import __version__
    from spunge_merge.data.split import safe_name

    section = ctx.pipeline.split
    with atomic_output_dir(ctx.split_dir, force=True) as tmp:
        entries = []
        for name, ref in section.subsets.items():
            file = f"{safe_name(name)}.jsonl"
            rows = inputs.write_rows(ref, ctx.base_dir, tmp / file, texts_only=True)
            entries.append({"value": name, "name": safe_name(name), "file": file, "rows": rows})
        write_json(tmp / SPLIT_MANIFEST, {
            "kind": "split", "spunge_version": __version__, "column": section.attribute, "text_column": "text", "format": "jsonl",
            "source": {name: inputs.identity(ref, ctx.base_dir) for name, ref in section.subsets.items()},
            "filters": [], "values": list(section.subsets), "subsets": entries,
            "rows_after_filter": sum(e["rows"] for e in entries),
        })


def _write_retain(ctx: Context, refs: list[DataRef]) -> None:
    """All retain sources as one text file (RMU uses one retain set for every run)."""
    parts = []
    for i, ref in enumerate(refs):
        part = ctx.inputs_dir / f".retain-{i}.jsonl"
        inputs.write_rows(ref, ctx.base_dir, part, texts_only=True)
        parts.append(part.read_text(encoding="utf-8"))
        part.unlink()
    atomic_write_text(ctx.retain_file, "".join(parts))


# ------------------------------------------------------------------------------------------------
# unlearn (+ the baseline's training, run alongside when possible)


def subset_configs(ctx: Context, subsets: list[Subset]) -> dict[str, dict[str, Any]]:
    """Each subset's hyperparameters: `unlearn.config` with its override (keyed by value or name)."""
    section = ctx.pipeline.unlearn
    known = {s.name for s in subsets} | {str(s.value) for s in subsets if s.value is not None}
    unknown = sorted(set(section.overrides) - known)
    if unknown:
        raise SpungeError(f"unlearn.overrides.{unknown[0]}: no such subset (subsets: {', '.join(s.name for s in subsets)})")
    configs = {}
    for subset in subsets:
        override = section.overrides.get(str(subset.value), section.overrides.get(subset.name, {}))
        configs[subset.name] = runtime.method_settings(ctx.pipeline, {**section.config, **override})
    return configs


def _retain_fp(ctx: Context) -> str | None:
    return sha256_file(ctx.retain_file) if ctx.pipeline.unlearn.retain else None


def _subset_view(ctx: Context, subset_entry: dict[str, Any]) -> Path:
    """A one-subset split directory pointing at the real subset file, so the method records the attribute."""
    manifest = read_json(ctx.split_dir / SPLIT_MANIFEST)
    view = ctx.run_dir / STATE_DIR / "views" / subset_entry["name"]
    entry = {**subset_entry, "file": str((ctx.split_dir / subset_entry["file"]).resolve())}
    write_json(view / SPLIT_MANIFEST, {**manifest, "subsets": [entry], "values": [entry["value"]],
                                       "view_of": str(ctx.split_dir.resolve())})
    return view


def _train_job(ctx: Context, key: str, label: str, forget: list[str], out: Path, config: dict[str, Any], force: bool) -> Job:
    section = ctx.pipeline.unlearn
    return Job(key=key, label=label, function="spunge_merge.pipeline.jobs:train",
               kwargs={"method": section.method, "model_ref": ctx.model.ref, "model_path": str(ctx.model.path),
                       "forget": forget, "out": str(out), "config": config,
                       "retain": [str(ctx.retain_file)] if section.retain else None, "force": force,
                       "method_module": getattr(registry.get_method(section.method).train, "__module__", None)},
               cpus=section.resources.cpus, gpus=section.resources.gpus)


def unlearn_works(ctx: Context, subsets: list[Subset]) -> list[Work]:
    section = ctx.pipeline.unlearn
    configs = subset_configs(ctx, subsets)
    entries = {e["name"]: e for e in read_json(ctx.split_dir / SPLIT_MANIFEST)["subsets"]}
    works = []
    for subset in subsets:
        part = fingerprint(format=FORMAT, method=section.method, config=configs[subset.name], data=subset.sha256,
                           model=ctx.model.fingerprint, retain=_retain_fp(ctx), attribute=[subset.column, subset.value])

        def build(force: dict[str, bool], subset=subset) -> Job:
            view = _subset_view(ctx, entries[subset.name])
            return _train_job(ctx, f"unlearn/{subset.name}", f"{subset.value}", [str(view)], ctx.unlearn_dir,
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


# ------------------------------------------------------------------------------------------------
# baseline


def baseline_train_work(ctx: Context, subsets: list[Subset]) -> tuple[Work, dict[str, Any]]:
    """The un-split run: the method on the union of the subsets, or alternating over them (one data file each)
    where the method offers it; with `budget: matched` at the split runs' total steps (the method's `match_baseline`)."""
    section = ctx.pipeline.unlearn
    method = registry.get_method(section.method)
    corpora = baseline_corpora(ctx.pipeline)
    config = runtime.method_settings(ctx.pipeline, {**section.config, **ctx.pipeline.baseline.config})
    budget: dict[str, Any] = {"mode": ctx.pipeline.baseline.budget}
    if ctx.pipeline.baseline.budget == "matched":
        retain_texts = [row["text"] for _, row in iter_jsonl(ctx.retain_file)] if section.retain else None
        matched = method.match_baseline(subset_configs(ctx, subsets), {s.name: list(s.texts) for s in subsets}, config,
                                        retain_texts, corpora)
        config = dict(matched.config)
        budget.update(matched.record)
    union_run = corpora == "union"
    part = fingerprint(format=FORMAT, method=section.method, config=config, data=[s.sha256 for s in subsets],
                       model=ctx.model.fingerprint, retain=_retain_fp(ctx), union=union_run)
    out = ctx.baseline_dir / "run"
    union = ctx.baseline_dir / "forget.jsonl"

    def build(force: dict[str, bool]) -> Job:
        if union_run:
            rows = [{"text": text, subset.column or "subset": subset.value} for subset in subsets for text in subset.texts]
            atomic_write_text(union, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            forget = [str(union)]
        else:
            forget = [str(s.source.resolve()) for s in subsets]
        return _train_job(ctx, "baseline/run", "un-split run", forget, out, config, force["run"])

    work = Work(stage="baseline", key="baseline/run", label="un-split run", parts={"run": part}, outputs=[out], build=build)
    return work, {"config": config, "budget": budget}


def baseline_lambdas(ctx: Context, config: dict[str, Any]) -> list[float | None]:
    """The scales the baseline is built at: as given, else the method's default (None: the run as trained)."""
    method = registry.get_method(ctx.pipeline.unlearn.method)
    return list(ctx.pipeline.baseline.lambdas or [method.default_lambda(method.config_class.model_validate(config))])


def stage_baseline(ctx: Context) -> dict[str, Any]:
    subsets = load_subsets(ctx.split_dir)
    train, meta = baseline_train_work(ctx, subsets)
    lambdas = baseline_lambdas(ctx, meta["config"])
    model_works = []
    labels = {}
    for lam in lambdas:
        label = _lam_label("baseline", lam, len(lambdas))
        out = ctx.baseline_dir / "models" / label
        labels[label] = out
        part = fingerprint(format=FORMAT, train=train.fingerprint, lam=lam)
        ctx.model_parts[label] = part

        def build(force: dict[str, bool], lam=lam, label=label, out=out) -> Job:
            return Job(key=f"baseline/{label}", label=label, function="spunge_merge.pipeline.stages:build_baseline_model",
                       kwargs={"method": ctx.pipeline.unlearn.method, "model_ref": ctx.model.ref, "model_path": str(ctx.model.path),
                               "run": str(train.outputs[0]), "lam": lam, "out": str(out),
                               "scratch": str(ctx.baseline_dir / "scratch" / label)})

        model_works.append(Work(stage="baseline", key=f"baseline/{label}", label=f"model {label}", parts={"model": part},
                                outputs=[out], build=build, local=True))
    ctx.labels["baseline"] = labels
    fp = fingerprint(format=FORMAT, train=train.fingerprint, models=[w.fingerprint for w in model_works])

    def work() -> dict[str, Any]:
        run_works(ctx, [train])
        run_works(ctx, model_works)
        record = read_json(train.outputs[0] / "spunge.json")
        steps = (record.get("result") or {}).get("steps")
        budget = {**meta["budget"], "baseline_steps": steps}
        planned = budget.get("split_total")
        detail = f"{steps} steps" + (f" (split runs: {planned})" if planned is not None else "")
        return {"detail": detail, "budget": budget, "config": meta["config"]}

    return run_stage(ctx, "baseline", fp, [*labels.values(), train.outputs[0]], work)


def build_baseline_model(*, method: str, model_ref: str, model_path: str, run: str, lam: float | None, out: str,
                         scratch: str) -> dict[str, Any]:
    """A full model directory of the baseline at scale λ, without retraining: the method's `to_model`."""
    registry.get_method(method).to_model(resolved_model(model_ref, model_path), Path(run), lam, Path(out), Path(scratch))
    return {"path": out, "lambda": lam}


# ------------------------------------------------------------------------------------------------
# merge


def stage_merge(ctx: Context) -> dict[str, Any]:
    section = ctx.pipeline.merge
    settings = {**section.model_dump(mode="json", by_alias=True, exclude={"lambdas", "cuda"}), "dtype": runtime.merge_dtype(ctx.pipeline)}
    works, labels = [], {}
    for lam in section.lambdas:
        label = _lam_label("spunge", lam, len(section.lambdas))
        out = ctx.merge_dir / label
        labels[label] = out
        part = fingerprint(format=FORMAT, runs=ctx.fps["unlearn"], model=ctx.model.fingerprint, settings=settings, lam=lam)
        ctx.model_parts[label] = part

        def build(force: dict[str, bool], lam=lam, label=label, out=out) -> Job:
            return Job(key=f"merge/{label}", label=label, function="spunge_merge.pipeline.stages:merge_task",
                       kwargs={"model_ref": ctx.model.ref, "model_path": str(ctx.model.path), "runs": [str(ctx.unlearn_dir)],
                               "out": str(out), "settings": settings, "lam": lam, "cuda": runtime.merge_cuda(ctx.pipeline),
                               "views_dir": str(ctx.merge_dir / ".views"), "force": force["merge"]})

        works.append(Work(stage="merge", key=f"merge/{label}", label=f"{section.method} λ={lam:g}", parts={"merge": part},
                          outputs=[out], build=build, local=True))
    ctx.labels["spunge"] = labels
    fp = fingerprint(format=FORMAT, merges=[w.fingerprint for w in works])

    def work() -> dict[str, Any]:
        run_works(ctx, works)
        return {"detail": ", ".join(str(p.relative_to(ctx.run_dir)) for p in labels.values())}

    return run_stage(ctx, "merge", fp, list(labels.values()), work)


def merge_task(*, model_ref: str, model_path: str, runs: list[str], out: str, settings: dict[str, Any], lam: float,
               cuda: bool | None, views_dir: str, force: bool) -> dict[str, Any]:
    from spunge_merge.merge import merge_runs

    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    merge_runs(resolved_model(model_ref, model_path), runs, out, method=settings["method"], density=settings.get("density"),
               weight=settings.get("weight"), lam=lam, normalize=settings.get("normalize"), dtype=settings.get("dtype"),
               parameters=settings.get("parameters"), cuda=cuda, force=force, views_dir=views_dir, progress=False,
               method_descriptions=registry.descriptions())
    return {"path": out}


# ------------------------------------------------------------------------------------------------
# eval


def model_labels(ctx: Context) -> dict[str, Path]:
    """label -> model directory, for the roles the eval section names (base first)."""
    roles = ctx.pipeline.eval.models
    found: dict[str, Path] = {}
    if "base" in roles:
        found["base"] = ctx.model.path
        ctx.model_parts["base"] = ctx.model.fingerprint
    if "baseline" in roles and ctx.pipeline.baseline.enabled:
        found.update(ctx.labels.get("baseline", {}))
    if "spunge" in roles:
        found.update(ctx.labels.get("spunge", {}))
    return found


def _eval_settings(ctx: Context) -> dict[str, dict[str, Any]]:
    """Each chosen evaluation's keyword arguments, paths made absolute and data sources written out."""
    section = ctx.pipeline.eval
    chosen: dict[str, dict[str, Any]] = {}
    for name in evals.ORDER:
        given = getattr(section, name)
        if given is None:
            continue
        kwargs = dict(given)
        for key in evals.PATH_ARGUMENTS.get(name, ()):
            if isinstance(kwargs.get(key), str):
                kwargs[key] = ctx.path(kwargs[key])
        if name == "perplexity" and isinstance(kwargs.get("data"), dict):
            ref = DataRef.model_validate(kwargs["data"])
            target = ctx.inputs_dir / "eval-perplexity.jsonl"
            identity = inputs.identity(ref, ctx.base_dir)
            marker = ctx.inputs_dir / ".eval-perplexity.sha"
            wanted = sha256_json(identity)
            if not target.is_file() or not marker.is_file() or marker.read_text() != wanted:
                inputs.write_rows(ref, ctx.base_dir, target, texts_only=True)
                atomic_write_text(marker, wanted)
            kwargs["data"] = str(target)
            kwargs.pop("text_column", None)
        chosen[name] = runtime.eval_settings(ctx.pipeline, evals.accepted_keywords(name), kwargs)
    return chosen


def stage_eval(ctx: Context) -> dict[str, Any]:
    models = model_labels(ctx)
    settings = _eval_settings(ctx)
    identities = {name: {k: _path_identity(v) for k, v in kwargs.items()} for name, kwargs in settings.items()}
    resources = ctx.pipeline.unlearn.resources
    works = []
    for label, path in models.items():
        parts = {name: fingerprint(format=FORMAT, model=ctx.model_parts[label], settings=identities[name]) for name in settings}
        out = ctx.eval_dir / label

        def build(force: dict[str, bool], label=label, path=path, out=out) -> Job:
            ref = ctx.model.ref if label == "base" else str(path)
            return Job(key=f"eval/{label}", label=label, function="spunge_merge.pipeline.evals:evaluate_model",
                       kwargs={"model_ref": ref, "model_path": str(path), "out": str(out), "evaluations": settings, "force": force},
                       cpus=resources.cpus, gpus=resources.gpus)

        works.append(Work(stage="eval", key=f"eval/{label}", label=label, parts=parts, outputs=[out], build=build))
    from spunge_merge.evaluate.compare import RESULT_FILES

    compared = [name for name in settings if name in RESULT_FILES]  # what compare_results reads
    compare_out = ctx.eval_dir / "compare"
    if compared:
        reference = "base" if "base" in models else None
        compare_kwargs = {"reference_label": reference, **ctx.pipeline.eval.compare}
        part = fingerprint(format=FORMAT, inputs=[w.fingerprint for w in works], settings=compare_kwargs)

        def build_compare(force: dict[str, bool]) -> Job:
            return Job(key="eval/compare", label="compare", function="spunge_merge.pipeline.stages:compare_task",
                       kwargs={"results": {label: str(ctx.eval_dir / label) for label in models}, "out": str(compare_out),
                               "settings": compare_kwargs, "force": force["compare"]})

        compare_work = Work(stage="eval", key="eval/compare", label="comparison table", parts={"compare": part},
                            outputs=[compare_out], build=build_compare, local=True)
    fp = fingerprint(format=FORMAT, evals=[w.fingerprint for w in works], compare=compare_work.fingerprint if compared else None)
    outputs = [w.outputs[0] for w in works] + ([compare_out] if compared else [])
    ctx.info["eval_models"] = {label: str(path) for label, path in models.items()}

    def work() -> dict[str, Any]:
        results = run_works(ctx, works)
        if compared:
            run_works(ctx, [compare_work])
        return {"detail": f"{len(works)} models", "summary": {k: v.get("summary") for k, v in results.items()}}

    return run_stage(ctx, "eval", fp, outputs, work)


def compare_task(*, results: dict[str, str], out: str, settings: dict[str, Any], force: bool) -> dict[str, Any]:
    from spunge_merge.evaluate.compare import compare_results

    compare_results(results, out, force=force, **settings)
    return {"path": out}


# ------------------------------------------------------------------------------------------------
# push


def stage_push(ctx: Context) -> dict[str, Any]:
    section = ctx.pipeline.push
    lam = section.lam if section.lam is not None else ctx.pipeline.merge.lambdas[0]
    label = _lam_label("spunge", lam, len(ctx.pipeline.merge.lambdas))
    model_dir = ctx.merge_dir / label
    settings = section.model_dump(mode="json", by_alias=True)
    record_file = ctx.run_dir / "push.json"
    part = fingerprint(format=FORMAT, model=ctx.model_parts[label], settings=settings)

    def build(force: dict[str, bool]) -> Job:
        return Job(key="push", label=section.repo_id, function="spunge_merge.pipeline.stages:push_task",
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


STAGE_FUNCTIONS = {"split": stage_split, "unlearn": stage_unlearn, "baseline": stage_baseline, "merge": stage_merge,
                   "eval": stage_eval, "push": stage_push}
