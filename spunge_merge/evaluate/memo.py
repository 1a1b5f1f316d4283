"""Results computed once per machine: generations and fluency figures kept under the spunge cache by what decides them.

A grid evaluates the same weights many times: the base model in every run directory (each arm, each
seed, each recipe), and any merge whose weights coincide. An evaluation directory already skips a
stored result with the same fingerprint; this store does it across directories. An entry's key is
everything that decides the value (the model's content fingerprint, the inputs' hash, the settings,
device type, dtype and the torch / transformers versions), so a different model or setting never reads
another's value. Entries are JSON files under `$SPUNGE_CACHE/evaluations/<kind>/`, written atomically;
deleting the folder only costs recomputation.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

from spunge_merge.fsutil import atomic_write_text, sha256_json
from spunge_merge.models import cache_root


def remembered(kind: str, key: dict[str, Any], compute: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, reused): the stored value for (`kind`, `key`), else `compute()` stored for next time."""
    import torch
    import transformers

    digest = sha256_json({**key, "torch": torch.__version__, "transformers": transformers.__version__})
    path = cache_root() / "evaluations" / kind / f"{digest}.json"
    if path.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            return json.loads(path.read_text(encoding="utf-8"))["value"], True
    value = compute()
    with contextlib.suppress(OSError):  # a read-only cache only costs a recomputation next time
        atomic_write_text(path, json.dumps({"kind": kind, "key": key, "value": value}, ensure_ascii=False))
    return value, False
