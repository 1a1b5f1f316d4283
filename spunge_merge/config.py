"""Settings as frozen pydantic models, loaded from YAML and overridden by CLI options.

Each stage defines its own settings class next to its code (a subclass of `FrozenConfig`);
this module holds what they share: strictness, YAML loading, and error messages that
name the offending key.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from spunge_merge.errors import SpungeError

ConfigT = TypeVar("ConfigT", bound="FrozenConfig")


class FrozenConfig(BaseModel):
    """Immutable, typo-proof settings: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the key path (`unlearn.lr: ...`)."""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"{location}: {error['msg']}")
    return f"{source}: " + "; ".join(problems)


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


def apply_overrides(data: Any, assignments: list[str], source: str) -> Any:
    """`KEY.PATH=VALUE` assignments applied to a parsed YAML mapping (VALUE is read as YAML: `2e-5`,
    `[baseline]`, `true`). Lets one file serve several runs (a sweep, the paper's setting) without copies."""
    if not assignments:
        return data
    if not isinstance(data, dict):
        raise SpungeError(f"{source}: --set needs a mapping at the top level")
    data = copy.deepcopy(data)
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
    return data


def build_config(
    cls: type[ConfigT],
    *,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> ConfigT:
    """Settings from an optional YAML file, then CLI overrides (None means "not given")."""
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
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise SpungeError(format_validation_error(exc, source)) from exc
