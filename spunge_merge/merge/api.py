"""`merge_runs` and `merge_recipe`: the merge stage as the CLI and the pipeline call it.

`merge_runs` turns per-attribute runs into model views (`views.py`), writes a mergekit recipe for
them (`recipe.py`) and runs it (`runner.py`); `merge_recipe` runs a recipe file, typically one a
user edited by hand. Both write a merged model directory atomically: model shards and their index,
config, tokenizer, `mergekit_config.yml`, a model card `README.md` and `spunge.json`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, atomic_write_text, guard_output, is_nonempty_dir
from spunge_merge.merge.inputs import expand_runs, is_model_dir
from spunge_merge.merge.methods import takes_statistics
from spunge_merge.merge.recipe import (
    PORTABLE_RECIPE_FILE,
    build_recipe,
    load_recipe,
    portable_recipe,
    portable_root,
    recipe_text,
    strip_adapter_tag,
    validate_recipe,
)
from spunge_merge.merge.runner import MERGED_KIND, RECIPE_FILE, MergeStats, check_output, merge_options, run_recipe_into
from spunge_merge.merge.settings import MergeSettings, check_recipe_ranges, merge_settings
from spunge_merge.merge.views import describe_model_dir, model_for_run, model_identity
from spunge_merge.models import ALIASES, ResolvedModel, resolve_model
from spunge_merge.provenance import fingerprint, read_provenance, write_provenance
from spunge_merge.tensorfiles import model_slots

DEFAULT_SHARD_SIZE = 5 * 10**9  # bytes per output shard, as mergekit's --out-shard-size default
MERGE_FORMAT = 1
_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
log = logging.getLogger(__name__)


def merge_runs(
    base: str | Path | ResolvedModel,
    runs: list[str | Path],
    out: str | Path,
    *,
    settings: MergeSettings | None = None,
    method: str | None = None,
    density: float | list[float] | None = None,
    weight: float | list[float] | None = None,
    lam: float | None = None,
    normalize: bool | None = None,
    dtype: str | None = None,
    parameters: dict[str, Any] | None = None,
    statistics: dict[str, Any] | None = None,
    cuda: bool = False,
    force: bool = False,
    recipe_out: str | Path | None = None,
    dry_run: bool = False,
    seed: int | None = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    views_dir: str | Path | None = None,
    progress: bool = True,
    method_descriptions: Mapping[str, str] | None = None,
) -> Path:
    """Merge per-attribute runs of `base` into `out`; returns `out` (the recipe's path with `dry_run`).

    `runs`: run directories (TVN adapters, RMU deltas, full checkpoints) or `spunge unlearn` output
    directories (expanded through their manifest). The merge's settings are `settings` (a validated
    `MergeSettings`, as `spunge merge` and the pipeline build it), or the keyword values method ...
    parameters (validated here into one; give one form, not both). None means the default: ties,
    density 0.2 and lambda 1.0 (TIES paper), weight 1.0, normalize as the method's default (true for
    ties: the mean over the models agreeing with the elected sign). density and weight take one value
    for all runs or one per run. `parameters` adds mergekit parameters (e.g. {"int8_mask": True}); `statistics`
    sets the statistics pass of data-dependent methods (`StatisticsSettings`: retain_data, inputs, rows, ...).
    `dtype` defaults to the base's weights' dtype. `method_descriptions` (method name → paragraph,
    from the caller's method registry) goes into the local model card.

    The recipe is built and checked once, over the runs themselves, before any view is built; its
    models are then pointed at the views (`_pointed_at`).
    """
    values = {"method": method, "density": density, "weight": weight, "lam": lam, "normalize": normalize, "dtype": dtype,
              "parameters": parameters, "statistics": statistics}
    settings = _settings_given(settings, values)
    resolved = base if isinstance(base, ResolvedModel) else resolve_model(base, tokenizer=False)
    base_slots = model_slots(resolved.path)
    if settings.dtype is None:
        settings = settings.model_copy(update={"dtype": _weights_dtype(base_slots)})
    inputs = expand_runs(list(runs))
    out = Path(out)
    read = [resolved.path, *runs, *(run.path for run in inputs)]
    _guard_outputs(out, recipe_out, read, dry_run=dry_run, force=force)
    # settings and the output directory are checked before any view is built
    data, _ = build_recipe(str(resolved.path), [str(run.path) for run in inputs], settings)
    model_dirs = None
    if takes_statistics(settings.method):  # the recipe names statistics files, computed (or found) first
        placeholders = [{**entry, "parameters": {**(entry.get("parameters") or {}), "gram": ""}} for entry in data["models"]]
        validate_recipe({**data, "models": placeholders}, "recipe", statistics_files=False)  # settings first
        _refuse_foreign_output(out, dry_run=dry_run, force=force)
        model_dirs = [model_for_run(run, resolved, Path(views_dir) if views_dir else None) for run in inputs]
        data = _with_statistics(data, inputs, model_dirs, resolved, settings)
    config = validate_recipe(data, "recipe")
    _refuse_foreign_output(out, dry_run=dry_run, force=force)
    if dry_run:  # the recipe to edit and run elsewhere: the portable form, naming the runs (no views are built for it)
        target = Path(recipe_out) if recipe_out else out.with_name(out.name + ".yml")
        described = {str(run.path): {"kind": run.kind, "path": str(run.path)} for run in inputs}
        atomic_write_text(target, portable_recipe(data, described, resolved.describe()))
        return target
    if model_dirs is None:
        model_dirs = [model_for_run(run, resolved, Path(views_dir) if views_dir else None) for run in inputs]
    data, config = _pointed_at(data, config, model_dirs)
    text = recipe_text(data, _view_comments(inputs))
    if recipe_out:
        atomic_write_text(recipe_out, text)
    return _execute(config, text, out, base=resolved, cuda=cuda, force=force, seed=seed, shard_size=shard_size,
                    progress=progress, source="recipe",
                    method_descriptions=method_descriptions)


def _settings_given(settings: MergeSettings | None, values: dict[str, Any]) -> MergeSettings:
    """The merge's settings: `settings` as given, or built from the keyword `values`; both at once is a caller's bug."""
    if settings is None:
        return merge_settings(**{**values, "parameters": dict(values["parameters"] or {})})
    if any(value is not None for value in values.values()):
        given = ", ".join(name for name, value in values.items() if value is not None)
        raise TypeError(f"merge_runs: give `settings` or the settings as keywords ({given}), not both")
    return settings


def _guard_outputs(out: Path, recipe_out: str | Path | None, read: list, *, dry_run: bool, force: bool) -> None:
    """Refuse, before any work, an output that would overwrite or lie inside what the merge reads: the recipe
    file alone with `dry_run`, else the output directory and the `--recipe-out` copy."""
    if dry_run:
        guard_output(Path(recipe_out) if recipe_out else out.with_name(out.name + ".yml"), inputs=read, option="--recipe-out",
                     directory=False)
    else:
        guard_output(out, inputs=read, force=force)
        if recipe_out:
            guard_output(recipe_out, inputs=read, option="--recipe-out", directory=False)


def _refuse_foreign_output(out: Path, *, dry_run: bool, force: bool) -> None:
    """A non-empty `out` is replaced only with `force`, or when it holds an earlier spunge merge."""
    if not dry_run and not force and is_nonempty_dir(out) and (read_provenance(out) or {}).get("kind") != MERGED_KIND:
        raise SpungeError(f"output directory {out} is not empty; pass --force to replace it, or choose another --out")


def _with_statistics(data: dict, inputs: list, model_dirs: list[Path], base: ResolvedModel, settings: MergeSettings) -> dict:
    """The recipe with each run's forget statistics file (`gram`) and the retain one (`retain_gram`) named in it."""
    from spunge_merge.merge.gram import statistics_for_runs
    from spunge_merge.merge.settings import StatisticsSettings

    parameters = dict(data.get("parameters") or {})
    rho = parameters.get("rho", 1.0)
    need_retain = not isinstance(rho, int | float) or rho > 0
    forget, retain = statistics_for_runs(inputs, model_dirs, base, settings.statistics or StatisticsSettings(),
                                         need_retain=need_retain)
    if retain is not None and "retain_gram" not in parameters:
        parameters["retain_gram"] = str(retain)
    models = [{**entry, "parameters": {**(entry.get("parameters") or {}), "gram": str(file)}}
              for entry, file in zip(data["models"], forget, strict=True)]
    return {**data, "parameters": parameters, "models": models}


def _pointed_at(data: dict, config, model_dirs: list[Path]) -> tuple[dict, Any]:
    """The checked recipe (data and mergekit's `MergeConfiguration`) with its models, in order, replaced by
    `model_dirs` (the runs' views): only the paths change, so nothing is checked again."""
    from mergekit.common import ModelReference

    entries = [{**entry, "model": str(path)} for entry, path in zip(data["models"], model_dirs, strict=True)]
    models = [entry.model_copy(update={"model": ModelReference.model_validate(str(path))})
              for entry, path in zip(config.models, model_dirs, strict=True)]
    return {**data, "models": entries}, config.model_copy(update={"models": models})


def _view_comments(inputs: list) -> list[str]:
    """The recipe's header: what each of its models (a view in a cache) is a view of."""
    comments = ["The models below are merge views in a cache (safe to delete, rebuilt by spunge merge); once they are",
                f"gone, run {PORTABLE_RECIPE_FILE} from the merged model instead: it names the runs themselves.",
                "models (each a per-attribute run; a view = the tensors it changed + links to the base's):"]
    for i, run in enumerate(inputs):
        described = run.describe()
        attribute = described["attribute"] or {}
        label = f"{attribute.get('column')}={attribute.get('value')}" if attribute.get("column") else run.name
        comments.append(f"  [{i}] {label}: {run.kind} {run.path}" + (f" ({described['rows']} rows)" if described["rows"] else ""))
    return comments


def merge_recipe(
    recipe: str | Path,
    out: str | Path,
    *,
    cuda: bool = False,
    force: bool = False,
    seed: int | None = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    views_dir: str | Path | None = None,
    progress: bool = True,
    method_descriptions: Mapping[str, str] | None = None,
) -> Path:
    """Run a mergekit recipe file into `out`; returns `out`.

    Besides plain model directories, the recipe's models may name spunge run directories (a TVN
    adapter, an RMU delta) or use mergekit's `BASE+ADAPTER` syntax: they are replaced by model views
    over the recipe's `base_model` (the rewritten recipe is what `mergekit_config.yml` records).
    `base_model` may be a spunge alias such as `smollm2-135m`.
    """
    recipe = Path(recipe)
    guard_output(out, inputs=[recipe], force=force)
    text, data = load_recipe(recipe)
    data, notes = _prepare_user_recipe(data, str(recipe), Path(views_dir) if views_dir else None)
    if notes:
        text = recipe_text(data, [f"rewritten by spunge from {recipe}:", *notes])
    config = validate_recipe(data, str(recipe))
    check_recipe_ranges(config, str(recipe))
    base = None
    if config.base_model is not None and Path(config.base_model.model.path).is_dir():
        base = ResolvedModel(str(config.base_model), Path(config.base_model.model.path).resolve())
    return _execute(config, text, Path(out), base=base, cuda=cuda, force=force, seed=seed, shard_size=shard_size,
                    progress=progress, source=str(recipe), method_descriptions=method_descriptions)


def _weights_dtype(slots) -> str:
    """The dtype most of the base's floating-point weights are stored in."""
    counts: dict[str, int] = {}
    for slot in slots.values():
        if slot.dtype in _DTYPE_NAMES:
            counts[slot.dtype] = counts.get(slot.dtype, 0) + slot.nbytes
    return _DTYPE_NAMES[max(counts, key=counts.get)] if counts else "float32"


def _prepare_user_recipe(data: dict, source: str, views_dir: Path | None) -> tuple[dict, list[str]]:
    """Resolve a base alias and turn run directories (or BASE+ADAPTER) into views; notes say what changed."""
    data = dict(data)
    notes: list[str] = []
    base_text = data.get("base_model")
    alias = _alias_of(base_text)
    if alias is not None:
        data["base_model"] = str(resolve_model(alias, tokenizer=False).path)
        notes.append(f"  base_model {base_text} -> {data['base_model']}")
    models = data.get("models")
    if not isinstance(models, list):
        return data, notes
    rewritten = []
    for i, entry in enumerate(models):
        entry = dict(entry) if isinstance(entry, dict) else entry
        model = entry.get("model") if isinstance(entry, dict) else None
        if isinstance(model, str) and alias is not None and model == base_text:
            entry["model"] = data["base_model"]
        if not isinstance(model, str) or entry["model"] == data.get("base_model"):
            rewritten.append(entry)
            continue
        base_text_i, _, adapter = model.partition("+") if "+" in model else (data.get("base_model"), "", model)
        if _alias_of(base_text_i) is not None:
            base_text_i = _alias_of(base_text_i)
        adapter = strip_adapter_tag(adapter)  # BASE+ADAPTER@TAG of a portable recipe: the tag keys mergekit's cache only
        path = Path(adapter).expanduser()
        if not path.exists() and (path.is_absolute() or adapter.startswith(("./", "../"))):
            raise SpungeError(_missing_model_hint(source, i, path))
        if not path.is_dir() or is_model_dir(path):
            rewritten.append(entry)
            continue
        runs = expand_runs([path])
        if len(runs) != 1:
            raise SpungeError(f"{source}: models[{i}] {path} holds {len(runs)} runs; list each run directory as its own model")
        if not isinstance(base_text_i, str):
            raise SpungeError(f"{source}: models[{i}] {path} is a run directory, which needs the recipe's base_model")
        base = resolve_model(base_text_i, tokenizer=False)
        view = model_for_run(runs[0], base, views_dir)
        entry["model"] = str(view)
        notes.append(f"  models[{i}] {model} -> view {view}")
        rewritten.append(entry)
    data["models"] = rewritten
    return data, notes


def _alias_of(text: Any) -> str | None:
    """The spunge alias a recipe's base names: the alias itself, or (a portable recipe) `./ALIAS/` when no such folder
    was copied there; None otherwise."""
    if not isinstance(text, str):
        return None
    if text in ALIASES:
        return text
    name = Path(text).name
    return name if name in ALIASES and text.startswith(("./", "../")) and not Path(text).expanduser().exists() else None


def _missing_model_hint(source: str, index: int, path: Path) -> str:
    """One line for a recipe model that is gone: a deleted merge view names the portable recipe to run instead."""
    portable = Path(source).parent / PORTABLE_RECIPE_FILE
    view = path.name.split("-")[-1] if "-" in path.name else ""
    if portable.is_file() or "merge-views" in path.parts or ".views" in path.parts or re.fullmatch(r"[0-9a-f]{12}", view):
        instead = str(portable.resolve()) if portable.is_file() else f"the {PORTABLE_RECIPE_FILE} beside the merged model"
        record = read_provenance(Path(source).parent) or {}
        runs = [Path(run["path"]) for run in record.get("runs") or [] if isinstance(run, dict) and isinstance(run.get("path"), str)]
        folder = portable_root(runs, record.get("base_model") if isinstance(record.get("base_model"), dict) else None)
        where = f"cd {folder} && " if folder is not None and folder.is_dir() else "from the folder that holds the runs: "
        return (f"{source}: models[{index}] {path} is a merge view that no longer exists (views are a cache); "
                f"run the recipe that names the runs instead: {where}spunge merge --recipe {instead} --out DIR")
    if not path.is_absolute():
        made_by = " (an RMU run made into a model by `spunge materialize`, see the recipe's comments)" \
            if path.name.endswith("-materialized") else ""
        return (f"{source}: models[{index}] {path}: no such directory{made_by}; relative paths are read from the current "
                f"directory ({Path.cwd().name}): run from the folder that holds the runs")
    return f"{source}: models[{index}] {path}: no such directory"


def _local_dir(ref) -> Path:
    path = Path(ref.model.path).expanduser()
    if path.is_dir():
        return path.resolve()
    return resolve_model(ref.model.path, tokenizer=False).path  # a Hub id (SpungeError when it cannot be fetched)


def _execute(config, text: str, out: Path, *, base: ResolvedModel | None, cuda: bool, force: bool, seed: int | None,
             shard_size: int, progress: bool, source: str, method_descriptions: Mapping[str, str] | None = None) -> Path:
    local_dirs = {ref: _local_dir(ref) for ref in config.referenced_models()}
    guard_output(out, inputs=local_dirs.values(), force=force)  # every model the recipe reads, views included
    slots = {ref: model_slots(path) for ref, path in local_dirs.items()}  # every input readable and intact before any work
    key = fingerprint(format=MERGE_FORMAT, recipe=config.model_dump(mode="json", exclude_none=True),
                      inputs={str(ref): model_identity(path) for ref, path in sorted(local_dirs.items(), key=lambda kv: str(kv[0]))},
                      seed=seed, shard_size=shard_size, device="cuda" if cuda else "cpu")
    if check_output(out, key, force=force):
        log.info("%s already holds this merge (same fingerprint); nothing to do", out)
        return out
    options = merge_options(cuda=cuda, seed=seed, shard_size=shard_size)
    models = [entry.model for entry in config.models or []]
    runs = [describe_model_dir(local_dirs[ref]) for ref in models if ref != config.base_model]
    base_record = _base_record(config, local_dirs, base, runs)
    size = max((sum(slot.nbytes for slot in model.values()) for model in slots.values()), default=None)
    with atomic_output_dir(out, force=True, expected_bytes=size) as tmp:
        stats = run_recipe_into(tmp, config, text, local_dirs, options=options, source=source, progress=progress, slots=slots)
        atomic_write_text(tmp / RECIPE_FILE, text)
        _write_portable(tmp, text, local_dirs, base_record)
        _write_record(tmp, config, text, key, base_record, runs, stats, seed=seed, shard_size=shard_size, cuda=cuda)
        _write_card(tmp, out, method_descriptions)
    log.info("merged %d tensors (%d computed, %d copied from the base) in %.1f s into %s",
             stats.tensors, stats.computed, stats.copied, stats.seconds, out)
    return out


def _write_portable(tmp: Path, text: str, local_dirs: dict, base_record: dict | None) -> None:
    """`mergekit_config.portable.yml`: the same merge, naming the runs instead of this machine's views."""
    import yaml

    described = {str(ref): describe_model_dir(path) for ref, path in local_dirs.items()}
    atomic_write_text(tmp / PORTABLE_RECIPE_FILE, portable_recipe(yaml.safe_load(text), described, base_record))


def _base_record(config, local_dirs, base: ResolvedModel | None, runs: list[dict]) -> dict | None:
    if base is not None:
        return base.describe()
    if config.base_model is not None:
        return ResolvedModel(str(config.base_model), local_dirs[config.base_model]).describe()
    for run in runs:  # a method without a base model: name the base the views stand on
        view_base = run.get("base_model")
        if isinstance(view_base, dict):
            return view_base
    return None


def _write_record(tmp: Path, config, text: str, key: str, base_record, runs: list[dict], stats: MergeStats, *,
                  seed, shard_size: int, cuda: bool) -> None:
    columns = {(run.get("attribute") or {}).get("column") for run in runs} - {None}
    parameters = config.parameters or {}
    per_model = [{"model": str(entry.model), **(entry.parameters or {})} for entry in config.models or []]
    write_provenance(
        tmp, kind=MERGED_KIND, fingerprint=key, method=config.merge_method,
        base_model=base_record,
        config={"merge_method": config.merge_method, "parameters": parameters, "models": per_model, "dtype": config.dtype,
                "out_dtype": config.out_dtype, "seed": seed, "shard_size": shard_size, "device": "cuda" if cuda else "cpu"},
        merge={"method": config.merge_method, "parameters": parameters, "dtype": config.dtype, "recipe": text},
        recipe=text,
        runs=runs,
        attribute={"column": columns.pop(), "values": [run.get("value") for run in runs]} if len(columns) == 1 else None,
        data=[run.get("data") for run in runs],
        result={"tensors": stats.tensors, "computed": stats.computed, "copied_from_base": stats.copied,
                "seconds": round(stats.seconds, 3), "seconds_planning": round(stats.seconds_planning, 3),
                "seconds_tensors": round(stats.seconds_tensors, 3), "seconds_copying": round(stats.seconds_copying, 3),
                "seconds_computing": round(stats.seconds_computing, 3), "bytes": stats.bytes_written, "engine": stats.path},
    )


def _write_card(tmp: Path, out: Path, method_descriptions: Mapping[str, str] | None) -> None:
    """README.md from the card builder of `spunge push` (so the local and the Hub card are one)."""
    from spunge_merge.card import build_model_card

    card = build_model_card(tmp, repo_id=out.name, method_descriptions=method_descriptions)
    card.save(tmp / "README.md")  # no local absolute path in a card


__all__ = ["DEFAULT_SHARD_SIZE", "merge_recipe", "merge_runs"]
