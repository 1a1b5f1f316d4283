"""Data named in a pipeline file: its identity (for fingerprints) and its rows (written into the run dir).

A local file is identified by its sha256, a saved `datasets` directory by the sha256 of its
files, a Hub dataset by its id, configuration and split (the Hub's own versioning is trusted).
Filtered or Hub data is written once into the run directory as JSON lines, so every later stage
reads a fixed local file whose hash it can record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_write_text, sha256_file, sha256_json
from spunge_merge.pipeline.schema import DataRef, resolve_path


def identity(ref: DataRef, base_dir: Path) -> dict[str, Any]:
    """What determines the rows a `DataRef` gives: its settings and its source's content."""
    location = resolve_path(ref.path, base_dir)
    path = Path(location)
    if path.is_file():
        content = sha256_file(path)
    elif path.is_dir():
        content = sha256_json({str(f.relative_to(path)): sha256_file(f) for f in sorted(path.rglob("*")) if f.is_file()})
    else:
        content = None  # a Hub dataset: id, config and split identify it
    return {"settings": ref.model_dump(mode="json"), "location": location if content is None else None, "sha256": content}


def load_ref(ref: DataRef, base_dir: Path):
    """The filtered (and limited) rows of a `DataRef` as a `datasets.Dataset`."""
    from spunge_merge.data.loading import load_table
    from spunge_merge.data.split import apply_filters
    from spunge_merge.data.where import parse_condition

    location = resolve_path(ref.path, base_dir)
    if ref.config is not None and not Path(location).exists():
        import datasets

        datasets.disable_progress_bars()
        try:
            table = datasets.load_dataset(location, ref.config, split=ref.hub_split)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SpungeError(f"cannot load Hub dataset '{location}' (config {ref.config}, split {ref.hub_split}): {reason}") from exc
    else:
        table = load_table(location, split=ref.hub_split)
    table = apply_filters(table, [parse_condition(expr) for expr in ref.where], location)
    if ref.limit is not None and len(table) > ref.limit:
        table = table.select(range(ref.limit))
    if len(table) == 0:
        raise SpungeError(f"{location}: no rows left after the filters {' AND '.join(ref.where)}")
    return table


def write_rows(ref: DataRef, base_dir: Path, out_file: Path, *, texts_only: bool = False) -> int:
    """Write the rows of `ref` as JSON lines (all columns, or only {"text": ...}); returns the row count."""
    table = load_ref(ref, base_dir)
    if ref.text_column not in table.column_names:
        raise SpungeError(f"{ref.path}: no column '{ref.text_column}' (columns: {', '.join(table.column_names)})")
    lines = []
    for row in table:
        text = row[ref.text_column]
        if not isinstance(text, str) or not text.strip():
            continue
        record = {"text": text} if texts_only else {**row, "text": text}
        lines.append(json.dumps(record, ensure_ascii=False, default=str))
    if not lines:
        raise SpungeError(f"{ref.path}: column '{ref.text_column}' has no non-empty text")
    atomic_write_text(out_file, "\n".join(lines) + "\n")
    return len(lines)


_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


def check_local_inputs(pipeline, base_dir: Path) -> None:
    """Every data file the file names (split data, subsets, retain) exists, checked before the base model is
    resolved (which may download or convert it). A name that is no file and no data file name is left to the
    stage that reads it (a Hub dataset id)."""
    refs: list[tuple[str, DataRef]] = []
    if pipeline.split.data is not None:
        refs.append(("split.data", pipeline.split.data))
    refs += [(f"split.subsets.{name}", ref) for name, ref in (pipeline.split.subsets or {}).items()]
    refs += [(f"unlearn.retain.{i}", ref) for i, ref in enumerate(pipeline.unlearn.retain or [])]
    for key, ref in refs:
        location = Path(resolve_path(ref.path, base_dir))
        if not location.exists() and (location.suffix.lower() in _DATA_SUFFIXES or ref.path.startswith(("./", "../", "/"))):
            raise SpungeError(f"{key}: {ref.path}: no such file (looked for {location})")
