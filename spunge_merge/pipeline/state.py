"""What a run directory already holds: one small record per stage, job and task, keyed by fingerprint.

A record is written `started` before a piece of work begins and `done` after it ends (atomic
writes, so a `kill -9` leaves either the old record or the new one). On the next run:

- `done` with the same fingerprint, outputs present: nothing to do;
- `started` with the same fingerprint: the work was interrupted; it is resumed, and the stage
  functions' own checks reuse whatever finished output they find (they compare fingerprints);
- anything else (settings or inputs changed, or no record): the work is redone from scratch,
  replacing what its outputs hold.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from spunge_merge.fsutil import read_json, write_json

STATE_DIR = ".spunge-state"


class StateStore:
    """Records under `RUN_DIR/.spunge-state/`; outputs are stored relative to the run dir, so a moved
    or copied run directory stays resumable."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / STATE_DIR

    def _relative(self, path: str | Path) -> str:
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.run_dir.resolve()))
        except ValueError:
            return str(path)

    def _path(self, key: str) -> Path:
        return self.root / (re.sub(r"[^A-Za-z0-9._-]+", "__", key) + ".json")

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        return read_json(path) if path.is_file() else None

    def is_done(self, key: str, fingerprint: str) -> bool:
        record = self.get(key)
        if not record or record.get("status") != "done" or record.get("fingerprint") != fingerprint:
            return False
        return all((self.run_dir / p).exists() for p in record.get("outputs", []))

    def previous_parts(self, key: str) -> dict[str, str]:
        """The part fingerprints of the last attempt (done or interrupted), to tell what changed."""
        record = self.get(key) or {}
        return dict(record.get("parts") or {})

    def started(self, key: str, fingerprint: str, *, parts: dict[str, str] | None = None) -> None:
        write_json(self._path(key), {"status": "started", "fingerprint": fingerprint, "parts": parts or {}})

    def done(self, key: str, fingerprint: str, *, outputs: list[str] | None = None, parts: dict[str, str] | None = None,
             **info: Any) -> None:
        write_json(self._path(key), {"status": "done", "fingerprint": fingerprint, "parts": parts or {},
                                     "outputs": [self._relative(p) for p in outputs or []], **info})
