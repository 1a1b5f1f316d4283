"""`eval`: the chosen evaluations of the base, baseline and Spunge models, and their comparison.

What an evaluation is (its function, which arguments are paths) is `pipeline/evals.py`'s; this
stage only reads it there and ships one job per model to `evals.evaluate_model`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from spunge_merge.evaluate import registry
from spunge_merge.fsutil import atomic_write_text, sha256_json
from spunge_merge.pipeline import evals, inputs, runtime
from spunge_merge.pipeline.jobs import Job
from spunge_merge.pipeline.schema import DataRef
from spunge_merge.pipeline.stages.common import FORMAT, Context, Work, path_identity, run_stage, run_works
from spunge_merge.provenance import fingerprint


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
            outer, _, inner = key.partition(".")  # `measure_settings.facts`: a path inside a mapping setting
            if inner and isinstance(kwargs.get(outer), dict) and isinstance(kwargs[outer].get(inner), str):
                kwargs[outer] = {**kwargs[outer], inner: ctx.path(kwargs[outer][inner])}
        evaluation = registry.get(name)
        for key in evaluation.data_settings:
            if isinstance(kwargs.get(key), dict):
                rows = key in evaluation.row_settings
                kwargs[key] = str(_write_data_source(ctx, name, key, DataRef.model_validate(kwargs[key]), rows=rows))
                if not rows:
                    kwargs.pop("text_column", None)
        chosen[name] = runtime.eval_settings(ctx.pipeline, evals.accepted_keywords(name), kwargs)
    return chosen


def _write_data_source(ctx: Context, name: str, key: str, ref: DataRef, *, rows: bool = False) -> Path:
    """A data source with filters, given as an evaluation's setting, written out once as a texts file
    (`rows`: as whole rows, every column kept)."""
    stem = f"eval-{name}" if key == "data" else f"eval-{name}-{key}"
    target = ctx.inputs_dir / f"{stem}.jsonl"
    marker = ctx.inputs_dir / f".{stem}.sha"
    wanted = sha256_json(inputs.identity(ref, ctx.base_dir))
    if not target.is_file() or not marker.is_file() or marker.read_text() != wanted:
        if rows:
            inputs.write_table(ref, ctx.base_dir, target)
        else:
            inputs.write_rows(ref, ctx.base_dir, target, texts_only=True)
        atomic_write_text(marker, wanted)
    return target


def stage_eval(ctx: Context) -> dict[str, Any]:
    """Every chosen evaluation of every chosen model (one job per model), then the comparison table; with
    `eval.screen`, the screen on every model and the rest only where the read-out looks (`_screened`)."""
    models = model_labels(ctx)
    settings = _eval_settings(ctx)
    screen = ctx.pipeline.eval.screen
    identities = {name: {k: path_identity(v) for k, v in kwargs.items()} for name, kwargs in settings.items()}
    works = {label: _model_work(ctx, label, path, settings, identities) for label, path in models.items()}
    compare_kwargs = {"reference_label": "base" if "base" in models else None, **ctx.pipeline.eval.compare}
    compared = _compared(settings)
    compare_out = ctx.eval_dir / "compare"
    fp = fingerprint(format=FORMAT, evals=[w.fingerprint for w in works.values()],
                     compare=_compare_work(ctx, works, compare_kwargs, compare_out).fingerprint if compared else None,
                     **({"screen": screen.model_dump(mode="json")} if screen is not None else {}))
    outputs = [w.outputs[0] for w in works.values()] + ([compare_out] if compared else [])
    ctx.info["eval_models"] = {label: str(path) for label, path in models.items()}

    def work() -> dict[str, Any]:
        if screen is None:
            evaluated = list(models)
            results = run_works(ctx, list(works.values()))
        else:
            evaluated, results = _screened(ctx, models, works, settings, identities)
        if compared:
            run_works(ctx, [_compare_work(ctx, {label: works[label] for label in evaluated}, compare_kwargs, compare_out)])
        detail = f"{len(works)} models" if screen is None else f"{len(evaluated)} of {len(works)} models in full, all screened"
        return {"detail": detail, "summary": {k: v.get("summary") for k, v in results.items()}}

    return run_stage(ctx, "eval", fp, outputs, work)


def _model_work(ctx: Context, label: str, path: Path, settings: dict[str, dict[str, Any]], identities: dict[str, dict],
                key_suffix: str = "") -> Work:
    """The work that runs `settings`' evaluations of one model into `eval/<label>` (under key `eval/<label><key_suffix>`)."""
    parts = {name: fingerprint(format=FORMAT, model=ctx.model_parts[label], settings=identities[name]) for name in settings}
    out = ctx.eval_dir / label
    key = f"eval/{label}{key_suffix}"

    def build(force: dict[str, bool]) -> Job:
        ref = ctx.model.ref if label == "base" else str(path)
        return Job(key=key, label=label, function=evals.evaluate_model,
                   kwargs={"model_ref": ref, "model_path": str(path), "out": str(out), "evaluations": settings, "force": force},
                   cpus=ctx.pipeline.unlearn.resources.cpus, gpus=ctx.pipeline.unlearn.resources.gpus)

    return Work(stage="eval", key=key, label=label, parts=parts, outputs=[out], build=build)


def _screened(ctx: Context, models: dict[str, Path], works: dict[str, Work], settings: dict[str, dict[str, Any]],
              identities: dict[str, dict]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The two-stage sweep (`evaluate/screen.py`): the screen on every model, then the full evaluations of the base and
    of the points the read-out needs, again after each full round that sets a point aside as inadmissible."""
    from spunge_merge.evaluate.screen import inadmissible, needed_points, screened_point

    screen = ctx.pipeline.eval.screen
    name = screen.evaluation()
    only = {name: settings[name]}
    run_works(ctx, [_model_work(ctx, label, path, only, identities, key_suffix="/screen") for label, path in models.items()])
    points = {label: screened_point(label, ctx.eval_dir / label, screen.metric) for label in models}
    arms = {role: [points[label] for label in ctx.labels.get(role, {}) if label in points] for role in ("baseline", "spunge")}
    done: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    excluded: set[str] = set()
    while True:
        needed = {"base"} | needed_points(arms, points["base"]["x"], screen, excluded)
        todo = [label for label in models if label in needed and label not in done]
        if not todo:
            return done, results
        full = [replace(works[label], build=_keep_screen(works[label].build, name)) for label in todo]
        results.update(run_works(ctx, full))
        done += todo
        excluded = inadmissible({label: ctx.eval_dir / label for label in done}, "base", screen.non_text_tolerance)


def _keep_screen(build, name: str):
    """A full evaluation's job that keeps the screen's result the first stage has just brought up to date."""
    return lambda force: build({**force, name: False})


def _compared(settings: dict[str, dict[str, Any]]) -> list[str]:
    from spunge_merge.evaluate.compare import RESULT_FILES

    return [name for name in settings if name in RESULT_FILES]  # what compare_results reads


def _compare_work(ctx: Context, works: dict[str, Work], compare_kwargs: dict[str, Any], compare_out: Path) -> Work:
    part = fingerprint(format=FORMAT, inputs=[w.fingerprint for w in works.values()], settings=compare_kwargs)

    def build_compare(force: dict[str, bool]) -> Job:
        return Job(key="eval/compare", label="compare", function=compare_task,
                   kwargs={"results": {label: str(ctx.eval_dir / label) for label in works}, "out": str(compare_out),
                           "settings": compare_kwargs, "force": force["compare"]})

    return Work(stage="eval", key="eval/compare", label="comparison table", parts={"compare": part},
                outputs=[compare_out], build=build_compare, local=True)


def compare_task(*, results: dict[str, str], out: str, settings: dict[str, Any], force: bool) -> dict[str, Any]:
    from spunge_merge.evaluate.compare import compare_results

    compare_results(results, out, force=force, **settings)
    return {"path": out}
