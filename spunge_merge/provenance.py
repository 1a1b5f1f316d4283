"""`spunge.json`: what made an output directory, and whether it is already done.

Every stage writes one into its output. `fingerprint` is a hash of everything that
determines the result (settings, input hashes, base model); a later run with the same
fingerprint finds the directory complete and skips the work.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import Any

from spunge_merge import __version__
from spunge_merge.fsutil import read_json, sha256_json, write_json

PROVENANCE_FILE = "spunge.json"

_TRACKED_PACKAGES = ("torch", "transformers", "peft", "mergekit", "safetensors", "datasets")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "spunge-merge": __version__}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def fingerprint(**parts: Any) -> str:
    """Hash of the parts that determine a result (JSON-serialisable values)."""
    return sha256_json(parts)


def write_provenance(directory: str | Path, *, kind: str, fingerprint: str, **fields: Any) -> dict[str, Any]:
    """Write `spunge.json` into `directory` and return the record."""
    record = {
        "kind": kind,
        "fingerprint": fingerprint,
        "spunge_version": __version__,
        "versions": library_versions(),
        **fields,
    }
    write_json(Path(directory) / PROVENANCE_FILE, record)
    return record


def read_provenance(directory: str | Path) -> dict[str, Any] | None:
    """The directory's `spunge.json`, or None when there is none."""
    path = Path(directory) / PROVENANCE_FILE
    if not path.is_file():
        return None
    return read_json(path)


def is_complete(directory: str | Path, expected_fingerprint: str) -> bool:
    """True when `directory` holds a finished output with this fingerprint."""
    record = read_provenance(directory)
    return record is not None and record.get("fingerprint") == expected_fingerprint
