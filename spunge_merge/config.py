"""Settings as frozen pydantic models, loaded from YAML and overridden by CLI options.

Each stage defines its own settings class next to its code (a subclass of `FrozenConfig`);
this module holds what they share: strictness, YAML loading, and error messages that
name the offending key.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from spunge_merge.errors import SpungeError

ConfigT = TypeVar("ConfigT", bound="FrozenConfig")


class FrozenConfig(BaseModel):
    """Immutable, typo-proof settings: unknown keys are errors, not silently ignored.

    No float setting of spunge takes NaN or ±inf (a NaN λ or density would write NaN weights and
    report success), so every settings class refuses them; a field's constraints are the one
    definition of its valid range, read by the CLI, the library and the pipeline file alike.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    # Settings added after runs were recorded, with the value that means "as before": at that value they stay out
    # of the run's fingerprint, so finished runs still resume after an upgrade (any other value is in it).
    added_settings: ClassVar[dict[str, Any]] = {}

    def settings_fingerprint(self, exclude: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
        """The settings that determine a result: all but `exclude`, and added settings left at their old meaning."""
        return {k: v for k, v in self.model_dump(mode="json").items()
                if k not in exclude and not (k in self.added_settings and v == self.added_settings[k])}


# λ, the scale of a task vector wherever one is applied (TVN negation, a merge, a baseline): one range.
Lambda = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def check_lambda(value: float, option: str = "--lambda") -> float:
    """`value` as a valid λ (finite, >= 0), or SpungeError naming `option`."""
    try:
        return TypeAdapter(Lambda).validate_python(value)
    except ValidationError as exc:
        raise SpungeError(f"{option} {value!r}: λ must be a finite number >= 0 ({exc.errors()[0]['msg'].lower()}); "
                          "0 keeps the base model, 1 applies the whole task vector") from exc


class Overridden(dict):
    """A parsed YAML mapping after `--set`: remembers which key path each `--set` changed,
    so an error in a value given on the command line names the `--set`, not the file."""

    assignments: dict[tuple[str, ...], str]


yaml.add_representer(Overridden, yaml.representer.SafeRepresenter.represent_dict, Dumper=yaml.SafeDumper)


def reattribute(message: str, source: str, data: Any) -> str:
    """A `SOURCE: KEY.PATH: problem` message re-addressed to the `--set` that gave KEY.PATH, if one did."""
    head = f"{source}: "
    if not message.startswith(head) or not getattr(data, "assignments", None):
        return message
    rest = message[len(head):]
    key = rest.split(":", 1)[0].strip()
    if not key or " " in key:
        return message
    return f"{blame(key.split('.'), source, data)}: {rest}"


def blame(location: tuple | list, source: str, data: Any = None) -> str:
    """`--set KEY=VALUE` when the key path at `location` (or a key under it) came from a `--set` in `data`, else `source`."""
    assignments = getattr(data, "assignments", None) or {}
    path = tuple(str(part) for part in location)
    for keys, assignment in reversed(list(assignments.items())):
        shared = min(len(keys), len(path))
        if shared and keys[:shared] == path[:shared]:
            return f"--set {assignment}"
    return source


# pydantic names the member of a `float | list[float]` union that failed (`density.constrained-float`,
# `alpha.list[float]`); a user reads the key alone.
_UNION_TAG = re.compile(r"^(constrained-)?(float|int|str|bool|list|dict|tuple|function-\w+)(\[.*\])?$")
_OTHER_MEMBER = ("list_type", "dict_type", "tuple_type", "string_type", "float_type", "int_type")


def validation_problems(exc: ValidationError) -> list[dict]:
    """pydantic's errors without union-member noise: the tags leave the key path, and a member that
    failed only because the value had another shape ("should be a valid list") is dropped."""
    errors = []
    for error in exc.errors():
        loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and _UNION_TAG.match(part)))
        errors.append({**error, "loc": loc})
    kept = [e for e in errors if not (e["type"] in _OTHER_MEMBER and
                                      any(o is not e and o["loc"][:len(e["loc"])] == e["loc"] and o["type"] not in _OTHER_MEMBER
                                          for o in errors))]
    unique = {}
    for error in kept:
        unique.setdefault((error["loc"], error["msg"]), error)
    return list(unique.values())


def format_validation_error(exc: ValidationError, source: str, data: Any = None, prefix: tuple = ()) -> str:
    """One line for all problems, each naming the key path (`unlearn.lr: ...`) and where it was written
    (the file, or the `--set` that gave it when `data` came from `apply_overrides`)."""
    problems = []
    blamed = []
    for error in validation_problems(exc):
        loc = (*prefix, *error["loc"])
        location = ".".join(str(part) for part in loc) or "(top level)"
        problems.append(f"{location}: {error['msg'].removeprefix('Value error, ')}")
        blamed.append(blame(loc, source, data))
    where = blamed[0] if len(set(blamed)) == 1 and blamed else source
    return f"{where}: " + "; ".join(problems)


class _Loader(yaml.SafeLoader):
    """YAML as people write it: `2e-5` is a float (PyYAML follows YAML 1.1, which wants `2.0e-5`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load` with the float rule above."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpungeError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise SpungeError(f"{path}: not UTF-8 text") from exc
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise SpungeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc


EXTENDS = "extends"


def load_pipeline_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> Any:
    """A pipeline file with its `extends: OTHER.yaml` resolved: OTHER's settings, deep-merged with this file's.

    Lets a variant (the paper's learning rate, a discovered split) name only what it changes, so each
    experiment is defined once. Mappings merge key by key; lists and scalars replace (`null` restores a
    setting's default). OTHER must sit in the same folder, so the relative paths in both files mean the
    same thing; chains are allowed, cycles are refused.
    """
    path = Path(path)
    data = load_yaml(path)
    if not isinstance(data, dict) or EXTENDS not in data:
        return data
    target = data[EXTENDS]
    if not isinstance(target, str) or not target.strip():
        raise SpungeError(f"{path}: `{EXTENDS}` must name a pipeline file in the same folder")
    parent = (path.parent / target).resolve()
    if parent.parent != path.resolve().parent:
        raise SpungeError(f"{path}: `{EXTENDS}: {target}` must be in the same folder as the file "
                          "(relative paths in both files must mean the same thing)")
    if parent in _seen or parent == path.resolve():
        raise SpungeError(f"{path}: `{EXTENDS}: {target}` forms a cycle")
    base = load_pipeline_yaml(parent, (*_seen, path.resolve()))
    if not isinstance(base, dict):
        raise SpungeError(f"{parent}: expected a mapping of sections (it is extended by {path})")
    return deep_merge(base, {k: v for k, v in data.items() if k != EXTENDS})


def as_run_text(path: Path, data: Any, overrides: list[str] | None = None) -> str:
    """The text a run directory records as its pipeline file: the file itself, or, when `--set` or
    `extends` changed what it says, the settings as run (so the record stands on its own)."""
    text = Path(path).read_text(encoding="utf-8")
    written = parse_yaml(text)
    if not overrides and not (isinstance(written, dict) and EXTENDS in written):
        return text
    notes = [f"extends {written[EXTENDS]}"] if isinstance(written, dict) and EXTENDS in written else []
    notes += [f"--set {assignment}" for assignment in overrides or []]
    settings = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return f"# {path} with {' '.join(notes)}\n{settings}"


def deep_merge(base: dict, changes: dict) -> dict:
    """`base` with `changes` applied: nested mappings merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: Any, assignments: list[str], source: str) -> Any:
    """`KEY.PATH=VALUE` assignments applied to a parsed YAML mapping (VALUE is read as YAML: `2e-5`,
    `[baseline]`, `true`). Lets one file serve several runs (a sweep, the paper's setting) without copies."""
    if not assignments:
        return data
    if not isinstance(data, dict):
        raise SpungeError(f"{source}: --set needs a mapping at the top level")
    data = Overridden(copy.deepcopy(data))
    data.assignments = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpungeError(f"--set '{assignment}': expected KEY.PATH=VALUE (e.g. baseline.config.lr=2e-5)")
        try:
            value = parse_yaml(text)
        except yaml.YAMLError as exc:
            raise SpungeError(f"--set {key}: value is not valid YAML ({str(exc).splitlines()[0]})") from exc
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpungeError(f"--set {key}: {'.'.join(parts[:depth + 1])} is not a mapping in {source}")
            node = child
        node[parts[-1]] = value
        data.assignments[tuple(parts)] = assignment.strip()
    return data


def build_config(
    cls: type[ConfigT],
    *,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    option_names: dict[str, str] | None = None,
) -> ConfigT:
    """Settings from an optional YAML file, then CLI overrides (None means "not given").

    An invalid value names where it came from: the option (`--lr 0: ...`; `option_names` maps a
    key to its option when they differ, default `--lambda` for `lam`) or the file and key."""
    option_names = {"lam": "--lambda", **(option_names or {})}
    values: dict[str, Any] = {}
    source = "settings"
    if config_file is not None:
        loaded = load_yaml(config_file)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SpungeError(f"{config_file}: expected a mapping of settings at the top level")
        values.update(loaded)
        source = str(config_file)
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    values.update(given)
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in validation_problems(exc):
            key = str(error["loc"][0]) if error["loc"] else ""
            location = ".".join(str(part) for part in error["loc"]) or "(top level)"
            if key in given:  # a command-line option: name it as typed
                option = (option_names or {}).get(key, f"--{key.replace('_', '-')}")
                problems.append(f"{option} {_shown(given[key])}: {error['msg']}")
            else:
                problems.append(f"{source}: {location}: {error['msg']}")
        raise SpungeError("; ".join(problems)) from exc


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)
