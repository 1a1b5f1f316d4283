"""mergekit recipes: written from `spunge merge` options, read from YAML, checked before any tensor is read.

The recipe is plain mergekit YAML (`merge_method`, `base_model`, `models` with per-model `density`
and `weight`, shared `parameters` such as `normalize`, `lambda`, `int8_mask`, and `dtype`), so
`mergekit-yaml recipe.yml OUT` runs it unchanged. Checks use mergekit's own `MergeConfiguration`
and the parameter specs of its merge methods, so every mergekit method is accepted with exactly
the parameters it takes, and mistakes are reported before any work, in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from spunge_merge import __version__
from spunge_merge.config import format_validation_error, load_yaml
from spunge_merge.errors import SpungeError
from spunge_merge.merge.inputs import PEFT_ADAPTER, TENSOR_DELTA
from spunge_merge.merge.settings import DEFAULT_METHOD, MergeSettings  # noqa: F401 - re-exported

DEFAULT_DENSITY = 0.2  # TIES paper (Yadav et al. 2023): keep the top k = 20 % of each task vector
DEFAULT_WEIGHT = 1.0
DEFAULT_LAMBDA = 1.0  # TIES paper's default scaling of the merged task vector
ISSUE_213 = "https://github.com/arcee-ai/mergekit/issues/213"


def merge_method(name: str, source: str = "--method"):
    """mergekit's merge method object by name; SpungeError listing the known ones otherwise."""
    from mergekit import merge_methods

    from spunge_merge.merge.methods import register_methods

    register_methods()
    try:
        return merge_methods.get(name)
    except RuntimeError as exc:
        known = ", ".join(sorted(m.spec.name for m in merge_methods.registered_methods()))
        raise SpungeError(f"{source}: unknown merge method '{name}' (mergekit: {exc}); mergekit's methods: {known}") from exc


def _per_run(values: float | list[float] | None, option: str, count: int) -> list[float] | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        return [float(values)] * count
    values = [float(v) for v in values]
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise SpungeError(f"--{option} is given {len(values)} times for {count} runs: give it once, or once per run in order")
    return values


def build_recipe(base_model: str, models: list[str], settings: MergeSettings, comments: list[str] | None = None) -> tuple[dict, str]:
    """The recipe for `models` over `base_model`, as data and as commented YAML text."""
    method = merge_method(settings.method)
    accepted = {p.name for p in method.spec.parameters}
    count = len(models)
    per_model: list[dict[str, Any]] = [{} for _ in models]
    for option, values, default in (("density", settings.density, DEFAULT_DENSITY), ("weight", settings.weight, DEFAULT_WEIGHT)):
        if option not in accepted:
            if values is not None:
                raise SpungeError(f"--{option}: merge method '{settings.method}' takes no {option} "
                                  f"(its parameters: {', '.join(sorted(accepted)) or 'none'})")
            continue
        for entry, value in zip(per_model, _per_run(values, option, count) or [default] * count, strict=True):
            entry[option] = value
    shared: dict[str, Any] = {}
    specs = {p.name: p for p in method.spec.parameters}
    normalize_default = specs["normalize"].default if "normalize" in specs else None  # written out, for the reader
    for key, value, default in (("lambda", settings.lam, DEFAULT_LAMBDA), ("normalize", settings.normalize, normalize_default)):
        if key not in accepted:
            if value is not None:
                raise SpungeError(f"--{key}: merge method '{settings.method}' takes no {key}")
            continue
        if value is not None or default is not None:
            shared[key] = value if value is not None else default
    shared.update(settings.parameters)
    data: dict[str, Any] = {"merge_method": settings.method}
    if _takes_base(method):
        data["base_model"] = base_model
    if settings.dtype:
        data["dtype"] = settings.dtype
    if shared:
        data["parameters"] = shared
    data["models"] = [{"model": model, "parameters": params} if params else {"model": model}
                      for model, params in zip(models, per_model, strict=True)]
    return data, recipe_text(data, comments)


def _takes_base(method) -> bool:
    from mergekit.merge_methods import BasePolicy

    return method.spec.contract.base in (BasePolicy.REQUIRED, BasePolicy.OPTIONAL)


def recipe_text(data: dict, comments: list[str] | None = None) -> str:
    header = [f"mergekit recipe written by spunge {__version__}. Plain mergekit YAML: run it with",
              "  spunge merge --recipe THIS_FILE --out DIR     or     mergekit-yaml THIS_FILE DIR",
              *(comments or [])]
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return "".join(f"# {line}".rstrip() + "\n" for line in header) + body


def load_recipe(path: str | Path) -> tuple[str, dict]:
    """(text, data) of a recipe file; SpungeError naming the file when it is not a YAML mapping."""
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise SpungeError(f"{path}: not a mergekit recipe (expected a YAML mapping with merge_method and models)")
    return path.read_text(encoding="utf-8"), data


def validate_recipe(data: dict, source: str, *, statistics_files: bool = True):
    """mergekit's `MergeConfiguration` for the recipe, after spunge's checks (see module docstring); with
    `statistics_files` False, the statistics files a data-dependent method names are not looked for yet."""
    from mergekit.config import MergeConfiguration

    from spunge_merge.merge.methods import check_statistics, register_methods

    register_methods()
    try:
        config = MergeConfiguration.model_validate(data)
    except ValidationError as exc:
        raise SpungeError(format_validation_error(exc, f"{source}: not a valid mergekit recipe")) from exc
    except (RuntimeError, ValueError, TypeError) as exc:
        raise SpungeError(f"{source}: not a valid mergekit recipe: {exc}") from exc
    method = merge_method(config.merge_method, source)
    _check_parameters(config, method, source)
    _check_negative_weights(config, method, source)
    if statistics_files:
        check_statistics(config, source)
    if config.models:
        ids = [entry.model for entry in config.models]
        base = config.base_model
        if base is not None and _takes_base(method) and base not in ids:
            ids.append(base)
        try:
            method.validate_inputs(ids, base if _takes_base(method) else None, group_name="models")
        except (ValueError, TypeError) as exc:
            raise SpungeError(f"{source}: {exc} (merge method '{config.merge_method}')") from exc
        for ref in ids:
            if ref.lora is not None:
                raise SpungeError(f"{source}: model '{ref}' uses mergekit's base+LoRA syntax; give the adapter's run "
                                  "directory instead (spunge merge --recipe rewrites run directories into model views)")
    return config


def _parameter_scopes(config) -> list[tuple[str, dict | None, bool]]:
    """(where, parameters, per-model?) for every place a recipe can set parameters."""
    scopes = [("parameters", config.parameters, False)]
    for i, entry in enumerate(config.models or []):
        scopes.append((f"models[{i}].parameters", entry.parameters, True))
    for i, out_slice in enumerate(config.slices or []):
        scopes.append((f"slices[{i}].parameters", out_slice.parameters, False))
        for j, src in enumerate(out_slice.sources):
            scopes.append((f"slices[{i}].sources[{j}].parameters", src.parameters, True))
    for name, module in (config.modules or {}).items():
        scopes.append((f"modules.{name}.parameters", module.parameters, False))
        for i, entry in enumerate(module.models or []):
            scopes.append((f"modules.{name}.models[{i}].parameters", entry.parameters, True))
    return scopes


def _leaves(setting: Any) -> list[Any]:
    """The scalar values of a parameter setting (scalar, gradient list, or conditional {value, filter})."""
    if hasattr(setting, "value"):  # ConditionalParameter
        return _leaves(setting.value)
    if isinstance(setting, dict):
        return _leaves(setting.get("value"))
    if isinstance(setting, list):
        return [leaf for item in setting for leaf in _leaves(item)]
    return [setting]


def _check_parameters(config, method, source: str) -> None:
    from mergekit.merge_methods import ParameterScope

    specs = {p.name: p for p in method.spec.parameters}
    for where, parameters, per_model in _parameter_scopes(config):
        for name, setting in (parameters or {}).items():
            if name not in specs:
                raise SpungeError(f"{source}: {where}: Unknown parameter(s) for {method.spec.name}: {name} "
                                  f"(mergekit's {method.spec.name} takes: {', '.join(sorted(specs)) or 'no parameters'})")
            if per_model and specs[name].scope == ParameterScope.SHARED:
                raise SpungeError(f"{source}: {where}: '{name}' is shared by all models in {method.spec.name}; "
                                  "set it under the top-level parameters (mergekit ignores it per model)")
            for leaf in _leaves(setting):
                try:
                    specs[name].validate(leaf)
                except ValidationError as exc:
                    raise SpungeError(f"{source}: {where}.{name}: {exc.errors()[0]['msg']} (got {leaf!r})") from exc
    if config.models:
        top = config.parameters or {}
        for spec in method.spec.parameters:
            if spec.required and spec.scope == ParameterScope.SHARED and spec.name not in top:
                raise SpungeError(f"{source}: {method.spec.name} requires the parameter '{spec.name}' under parameters "
                                  f"(spunge merge: --param {spec.name}=VALUE)")
        required = [p.name for p in method.spec.parameters if p.required and p.scope != ParameterScope.SHARED]
        base = config.base_model
        for i, entry in enumerate(config.models):
            if base is not None and entry.model == base:
                continue
            for name in required:
                if name not in (entry.parameters or {}) and name not in top:
                    raise SpungeError(f"{source}: models[{i}] ({entry.model}) has no '{name}', which "
                                      f"{method.spec.name} requires (set it per model or under parameters)")


def _check_negative_weights(config, method, source: str) -> None:
    specs = {p.name: p for p in method.spec.parameters}
    if "normalize" not in specs or "weight" not in specs:
        return
    normalize_settings = [leaf for where, params, _ in _parameter_scopes(config) for leaf in _leaves((params or {}).get("normalize"))
                          if leaf is not None]
    normalized = any(specs["normalize"].validate(v) for v in normalize_settings) if normalize_settings else bool(specs["normalize"].default)
    if not normalized:
        return
    for where, params, _ in _parameter_scopes(config):
        for leaf in _leaves((params or {}).get("weight")):
            if leaf is not None and float(leaf) < 0:
                raise SpungeError(
                    f"{source}: {where}.weight is {leaf} with normalize: true. mergekit divides the merged task vector by "
                    "the sum of the weights (of the models agreeing with the elected sign), which divides a negative weight's "
                    f"sign away: the task vector is added, not subtracted (mergekit issue #213, {ISSUE_213}). Use positive "
                    "weights (spunge's TVN adapters and RMU deltas already carry the unlearning direction), or set "
                    "normalize: false to subtract a task vector with a negative weight"
                )


# --------------------------------------------------------------------------------------------
# The portable recipe: the runs, not this machine's files

PORTABLE_RECIPE_FILE = "mergekit_config.portable.yml"


def _local_ref(relative: str) -> str:
    """A relative path mergekit reads as local: `./` in front, and at least two slashes, since mergekit's
    model card looks a one-slash name up on the Hub (which fails offline) before it reads the disk."""
    ref = relative if relative.startswith(("./", "../")) else f"./{relative}"
    return ref if ref.count("/") >= 2 else ref + "/"


def _aliases() -> set[str]:
    from spunge_merge.models import ALIASES

    return set(ALIASES)


def _portable_base(base: dict | None, root: Path | None) -> tuple[str | None, list[str]]:
    """How the portable recipe names the base: a Hub id, a spunge alias, or a path relative to `root`."""
    import os
    import re

    from spunge_merge.models import ALIAS_HUB_IDS, ALIASES

    if not isinstance(base, dict):
        return None, []
    ref, path = str(base.get("ref") or ""), base.get("path")
    if ref in ALIASES:  # not a Hub id: a folder of that name beside the runs, which mergekit reads as it is
        upstream = f" (a dequantized GGUF of {ALIAS_HUB_IDS[ref]}, not byte-identical to it)" if ref in ALIAS_HUB_IDS else ""
        return _local_ref(ref), [
            f"base_model {_local_ref(ref)} is spunge's built-in base {ref}{upstream}; `spunge merge --recipe` finds it by",
            "itself. For mergekit-yaml, first copy it into this folder once (spunge merge --recipe needs no copy):",
            f"  cp -r \"$(python -c \"from spunge_merge.models import resolve_model; print(resolve_model('{ref}').path)\")\" {ref}"]
    looks_hub = bool(re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", ref)) and not Path(ref).expanduser().exists()
    if looks_hub or (ref and not path):
        return ref, []
    target = Path(path or ref).expanduser().resolve()
    if root is not None and os.path.commonpath([str(target), str(root)]) != os.sep:
        return _local_ref(os.path.relpath(target, root)), []
    return target.name, [f"base_model {target.name}: the base model's directory; put it in the folder you run this recipe from."]


ADAPTER_TAG_LENGTH = 12


def adapter_tag(run: Path, base: dict | None) -> str:
    """A hash of an adapter run's weights and of its base, written after the adapter (`BASE+ADAPTER@TAG`): mergekit keys
    its LoRA cache by that text, and the same relative path holds other adapters in other runs (another method, λ)."""
    from spunge_merge.fsutil import sha256_file, sha256_json
    from spunge_merge.merge.inputs import ADAPTER_WEIGHTS

    weights = Path(run) / ADAPTER_WEIGHTS
    digest = sha256_file(weights) if weights.is_file() else None
    return sha256_json({"adapter": digest, "base": (base or {}).get("fingerprint")})[:ADAPTER_TAG_LENGTH]


def strip_adapter_tag(adapter: str) -> str:
    """The adapter's path without the `@TAG` of `adapter_tag` (spunge reads the folder; the tag is for mergekit's cache)."""
    import re

    return re.sub(rf"@[0-9a-f]{{{ADAPTER_TAG_LENGTH}}}$", "", adapter)


def portable_root(runs: list[Path], base: dict | None) -> Path | None:
    """The folder the portable recipe's paths are relative to: the one holding the runs (and a local base,
    neither a Hub model nor a spunge alias, which travels with them); None for the filesystem root."""
    import os

    folders = [Path(run).resolve().parent for run in runs]
    name, notes = _portable_base(base, None)
    if isinstance(base, dict) and base.get("path") and notes and str(base.get("ref")) not in _aliases():
        folders.append(Path(base["path"]).resolve().parent)  # a local base beside the runs travels with them
    if not folders:
        return None
    root = Path(os.path.commonpath([str(folder) for folder in folders]))
    return None if root == Path(root.anchor) else root


def portable_recipe(data: dict, described: dict[str, dict], base: dict | None) -> str:
    """The recipe `data` (whose models name this machine's views and checkpoints) rewritten so that
    mergekit-yaml runs it on another machine from the runs alone.

    `described` maps each model reference of `data` to what it stands for (`merge.views.describe_model_dir`:
    its `kind` and run `path`); `base` is the merged model's base record (`ref`, `path`). Model paths are
    written relative to the folder that holds the runs (e.g. a pipeline's `unlearn/`); a TVN adapter becomes
    mergekit's own `BASE+ADAPTER`; an RMU delta, which mergekit cannot read, becomes the directory
    `spunge materialize` writes, with the command to make it.
    """
    import os

    base_ref = str(data.get("base_model")) if data.get("base_model") is not None else None
    runs = [Path(entry["path"]).resolve() for ref, entry in described.items()
            if ref != base_ref and isinstance(entry, dict) and entry.get("path")]
    root = portable_root(runs, base if base_ref else None)

    def relative(path: str | Path) -> str:
        target = Path(path).resolve()
        return _local_ref(target.name if root is None else os.path.relpath(target, root))

    base_name, notes = _portable_base(base, root)
    materialize_lines: list[str] = []
    adapters = False
    out = {key: value for key, value in data.items() if key not in ("models", "base_model")}
    if "base_model" in data:
        out = {"merge_method": data.get("merge_method"), "base_model": base_name or data["base_model"],
               **{k: v for k, v in out.items() if k != "merge_method"}}
    models = []
    for entry in data.get("models") or []:
        entry = dict(entry)
        ref = str(entry.get("model"))
        info = described.get(ref) or {}
        kind, run_path = info.get("kind"), info.get("path")
        if ref == str(data.get("base_model")):
            entry["model"] = base_name or ref
        elif kind == PEFT_ADAPTER and run_path and base_name:
            entry["model"] = f"{base_name}+{relative(run_path)}@{adapter_tag(Path(run_path), base)}"
            adapters = True
        elif kind == TENSOR_DELTA and run_path:
            target = relative(run_path).rstrip("/") + "-materialized/"
            entry["model"] = target
            materialize_lines.append(f"  spunge materialize {relative(run_path)} --out {target}"
                                     + (f" --model {base_name}" if base_name else ""))
        elif run_path:
            entry["model"] = relative(run_path)
        else:
            entry["model"] = Path(ref).name
        models.append(entry)
    out["models"] = models
    where = f"the folder that holds them (it was named '{root.name}')" if root is not None else "the runs' folder"
    command = "mergekit-yaml THIS_FILE OUT" + (" --lora-merge-cache LORA_CACHE_DIR" if adapters else "")
    comments = ["Portable recipe: names the runs, not this machine's files (mergekit_config.yml names merge views,",
                "which live in a cache and are rebuilt on demand). Model paths are relative to the folder the runs",
                f"are in: copy them with the same layout and run from {where}:",
                f"  {command}     or     spunge merge --recipe THIS_FILE --out OUT"]
    if adapters:
        comments += ["Adapter runs use mergekit's BASE+ADAPTER@TAG syntax (the adapter is the run folder; TVN's holds its negation).",
                     "mergekit needs --lora-merge-cache to merge an adapter into the base (any folder; it may be shared",
                     "between recipes). It keys that cache by the text of BASE+ADAPTER@TAG: TAG is a hash of the adapter's",
                     "weights and of the base, so two runs at the same relative path never share an entry (mergekit reads",
                     "TAG as a revision, which a local folder ignores)."]
    if materialize_lines:
        comments += ["Tensor-delta runs (RMU, --full: delta.safetensors) are not a format mergekit reads: make each one a full model",
                     "first, from the same folder (needs spunge):", *materialize_lines]
    return recipe_text(out, comments + notes)
