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


def _hub_layout(path: Path) -> bool:
    """A local copy of a Hub dataset repository (data files and a README declaring its configurations), which
    `datasets.load_dataset` reads by configuration as it reads the Hub; not a `save_to_disk` directory."""
    return path.is_dir() and (path / "README.md").is_file() and not any(
        (path / marker).is_file() for marker in ("dataset_dict.json", "state.json", "dataset_info.json"))


def load_ref(ref: DataRef, base_dir: Path):
    """The filtered (and limited) rows of a `DataRef` as a `datasets.Dataset`."""
    from spunge_merge.data.loading import load_table
    from spunge_merge.data.split import apply_filters
    from spunge_merge.data.where import parse_condition

    location = resolve_path(ref.path, base_dir)
    if ref.config is not None and (not Path(location).exists() or _hub_layout(Path(location))):
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


def write_rows(ref: DataRef, base_dir: Path, out_file: Path, *, texts_only: bool = False, keep: tuple[str, ...] = ()) -> int:
    """Write the rows of `ref` that have text as JSON lines (all columns, or only {"text": ...} plus the `keep`
    columns when the table holds all of them); returns the row count."""
    table = load_ref(ref, base_dir)
    if ref.text_column not in table.column_names:
        raise SpungeError(f"{ref.path}: no column '{ref.text_column}' (columns: {', '.join(table.column_names)})")
    kept = list(keep) if all(column in table.column_names for column in keep) else []
    lines = []
    for row in table:
        text = row[ref.text_column]
        if not isinstance(text, str) or not text.strip():
            continue
        record = {"text": text, **{column: row[column] for column in kept}} if texts_only else {**row, "text": text}
        lines.append(json.dumps(record, ensure_ascii=False, default=str))
    if not lines:
        raise SpungeError(f"{ref.path}: column '{ref.text_column}' has no non-empty text")
    atomic_write_text(out_file, "\n".join(lines) + "\n")
    return len(lines)


def write_table(ref: DataRef, base_dir: Path, out_file: Path, *, filtered: bool = True) -> int:
    """Write every row of `ref` with all its columns as JSON lines, text or not (facts whose answers are lists,
    a source numbered by row position); `filtered=False`: before its `where` and `limit`. Returns the row count."""
    if not filtered:
        ref = ref.model_copy(update={"where": [], "limit": None})
    table = load_ref(ref, base_dir)
    atomic_write_text(out_file, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in table))
    return len(table)
