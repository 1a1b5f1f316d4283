"""The arms of a frontier: where each point's evaluation directory is and what λ its model was made with
(see `frontier.py`): `NAME=DIR[,DIR...]` / `NAME@LAMBDA=DIR` on the command line, λ read from the
evaluated model's provenance when not given."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.provenance import read_provenance


@dataclass(frozen=True)
class ArmPoint:
    """One evaluated model of an arm: its evaluation directory and, optionally, its λ given explicitly."""

    path: Path
    lam: float | None = None


def parse_arm(text: str) -> tuple[str, list[ArmPoint]]:
    """`NAME=DIR[,DIR...]` (λ from provenance) or `NAME@LAMBDA=DIR`; DIR may be a glob pattern."""
    left, sep, right = text.partition("=")
    if not sep or not left.strip() or not right.strip():
        raise SpungeError(f"--arm '{text}': expected NAME=DIR[,DIR...] or NAME@LAMBDA=DIR")
    name, at, lam_text = left.partition("@")
    name = name.strip()
    if not name:
        raise SpungeError(f"--arm '{text}': the arm has no name (NAME=DIR)")
    lam = None
    if at:
        try:
            lam = float(lam_text)
        except ValueError:
            raise SpungeError(f"--arm '{text}': λ '{lam_text}' is not a number (NAME@LAMBDA=DIR)") from None
        items = [right.strip()]
    else:
        items = [item.strip() for item in right.split(",") if item.strip()]
    paths: list[Path] = []
    for item in items:
        if glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(str(Path(item).expanduser())) if Path(p).is_dir())
            if not matches:
                raise SpungeError(f"--arm {name}: no directory matches '{item}'")
            paths.extend(matches)
        else:
            paths.append(Path(item).expanduser())
    return name, [ArmPoint(path, lam) for path in paths]


def as_point(item: Any) -> ArmPoint:
    if isinstance(item, ArmPoint):
        return item
    if isinstance(item, dict):
        if "path" not in item:
            raise SpungeError(f"arm point {item!r}: needs a 'path' (and optionally 'lambda')")
        lam = item.get("lambda", item.get("lam"))
        return ArmPoint(Path(item["path"]).expanduser(), None if lam is None else float(lam))
    return ArmPoint(Path(item).expanduser())


def lambda_from_record(record: dict | None) -> tuple[float | None, str | None]:
    """λ of a model from its `spunge.json`, with where it was found (None when it records none)."""
    if not record:
        return None, None
    result_lam = (record.get("result") or {}).get("lambda")
    if isinstance(result_lam, int | float):
        return float(result_lam), f"{record.get('kind')} result.lambda"
    for section in ("merge", "config"):
        lam = ((record.get(section) or {}).get("parameters") or {}).get("lambda")
        if isinstance(lam, int | float):
            return float(lam), f"{record.get('kind')} {section}.parameters.lambda"
    if record.get("kind") == "materialized-model" and "updated_tensors" in (record.get("run") or {}):
        return 1.0, "materialized-model of a tensor-delta run (unscaled)"
    return None, None


def model_dirs(found: dict[str, dict]) -> list[tuple[str, dict]]:
    """(evaluation kind, model record) of every evaluation in one directory."""
    return [(kind, result.get("model") or {}) for kind, result in found.items() if isinstance(result.get("model"), dict)]


def provenance_lambda(found: dict[str, dict]) -> tuple[float | None, str | None]:
    for _, model in model_dirs(found):
        for candidate in (model.get("path"), model.get("ref")):
            if candidate and Path(candidate).expanduser().is_dir():
                lam, source = lambda_from_record(read_provenance(Path(candidate).expanduser()))
                if lam is not None:
                    return lam, source
    return None, None
