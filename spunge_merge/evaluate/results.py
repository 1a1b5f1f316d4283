"""One evaluation directory, several evaluations: how each one writes its files safely.

A model's evaluation folder collects `toxicity.json`, `perplexity.json`, `fluency.json`,
`harness.json` (and their companions) side by side, so that `spunge eval compare DIR...` finds
everything in one place. Each evaluation therefore owns a few files rather than the whole
directory. Its files are written into a staging folder first and moved into place at the end,
its main JSON last, so an interrupted run leaves no result that looks complete. The main JSON
carries the evaluation's fingerprint: the same evaluation asked again is skipped; a different
one over an existing result needs `force`. `spunge.json` (kind "evaluation") lists what the
directory holds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import read_json, sha256_json
from spunge_merge.provenance import read_provenance, write_provenance

EVALUATION_KIND = "evaluation"


def existing_result(out: Path, main_file: str, fingerprint: str, *, force: bool) -> dict | None:
    """The stored result when `out/main_file` already holds this evaluation (and not `force`)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SpungeError(f"output path {out} exists and is not a directory")
    path = out / main_file
    if not path.is_file() or force:
        return None
    stored = read_json(path)
    if isinstance(stored, dict) and stored.get("fingerprint") == fingerprint:
        return stored
    raise SpungeError(f"{path} holds a result with different settings, model or data; pass --force to replace it, "
                      "or choose another --out")


@contextlib.contextmanager
def staged_files(out: Path, name: str) -> Iterator[Path]:
    """A staging folder beside the results; its files move into `out` when the block succeeds.

    The caller writes the main JSON last into the staging folder; files move in sorted order
    with the `.json` files last, so a reader never sees the main JSON before its companions.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=out))
    except OSError as exc:
        raise SpungeError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    try:
        yield stage
        files = sorted(stage.iterdir(), key=lambda p: (p.suffix == ".json", p.name))
        for file in files:
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def record_evaluation(out: Path, *, name: str, result: dict[str, Any], files: list[str]) -> None:
    """Add this evaluation to `out/spunge.json` (kind "evaluation"), keeping the others listed."""
    out = Path(out)
    previous = read_provenance(out)
    if previous is not None and previous.get("kind") != EVALUATION_KIND:
        return  # results written into a directory owned by another stage: leave its spunge.json alone
    evaluations = dict((previous or {}).get("evaluations", {}))
    evaluations[name] = {"fingerprint": result["fingerprint"], "files": files, "model": result.get("model")}
    write_provenance(out, kind=EVALUATION_KIND, fingerprint=sha256_json({k: v["fingerprint"] for k, v in evaluations.items()}),
                     method=EVALUATION_KIND, evaluations=evaluations)
