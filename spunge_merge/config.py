"""Settings as frozen pydantic models, loaded from YAML and overridden by CLI options.

Each stage defines its own settings class next to its code (a subclass of `FrozenConfig`);
this module holds what they share: strictness, YAML loading, and error messages that
name the offending key.
"""

from __future__ import annotations

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


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpungeError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise SpungeError(f"{path}: not UTF-8 text") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpungeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc


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
