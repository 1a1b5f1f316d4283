"""The *split* stage: one subset file per attribute value, after filtering.

Output: `DIR/<name>.jsonl` (or `.parquet`) per value and `DIR/manifest.json` recording the
source and its sha256, the column, the filters, the values and their row counts. The whole
directory is written to a temporary sibling and renamed, so a failure leaves nothing.
An attribute derived from row position (`block:N`) is numbered before the filters; one
discovered by clusters or a classifier is computed on the rows the filters leave.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spunge_merge import __version__
from spunge_merge.data.discovery import BlockBy, By, discover, is_discovery
from spunge_merge.data.discovery.blocks import number_blocks
from spunge_merge.data.loading import SPLIT_MANIFEST, load_table, source_sha256
from spunge_merge.data.where import Condition, parse_condition
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, check_output_dir, guard_output, write_json

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NUMERIC_DTYPES = ("int", "uint", "float", "double", "decimal")


_NAME_MAX = 120  # characters of a subset's file stem (well under the 255-byte file-name limit)
_KEEP = 80  # characters of the sanitised value kept before the hash
_HASH = 8  # hex characters of sha256(value), as before (names of existing splits stay the same)


def _value_hash(value: str, length: int = _HASH) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]


def safe_name(value: Any) -> str:
    """A file-system name for an attribute value that can never leave the output directory.

    A value that is a safe name already is kept as it is; any value whose name had to be changed
    (characters replaced, a leading dot dropped, or cut to length) gets a hash of the *full* value,
    so two values never share a name (e.g. 300 x's and 300 x's + 'y', or `a/b` and `a_b`).
    """
    text = str(value)
    name = _UNSAFE.sub("_", text).lstrip(".") or "_"
    if name != text or len(name) > _NAME_MAX:
        name = f"{name[:_KEEP]}-{_value_hash(text)}"
    return name


def subset_names(values: list[Any]) -> dict[Any, str]:
    """`safe_name` of each value, made distinct even on a case-insensitive file system (macOS,
    Windows): names equal but for case get the value's hash too (`Women`, `women`)."""
    names = {value: safe_name(value) for value in values}
    for length in (_HASH, 64, None):
        groups: dict[str, list[Any]] = {}
        for value, name in names.items():
            groups.setdefault(name.casefold(), []).append(value)
        clashing = [value for group in groups.values() if len(group) > 1 for value in group]
        if not clashing:
            return names
        if length is None:
            break
        for value in clashing:
            stem = _UNSAFE.sub("_", str(value)).lstrip(".") or "_"
            names[value] = f"{stem[:_KEEP]}-{_value_hash(str(value), length)}"
    raise SpungeError(f"cannot give distinct file names to the values {sorted(map(str, names))[:3]}...")


def _is_numeric(feature: Any) -> bool:
    dtype = getattr(feature, "dtype", "")
    return isinstance(dtype, str) and dtype.startswith(_NUMERIC_DTYPES)


@dataclass(frozen=True)
class SplitResult:
    out: Path
    column: str
    counts: dict[str, int]  # value -> rows
    rows_in: int
    rows_after_filter: int
    discovery: Any = None  # the `Discovery` when the attribute was discovered (clusters, classifier)
    blocks: dict[str, Any] | None = None  # manifest["discovery"] when the attribute is the row's block (block:N)


def apply_filters(table, conditions: list[Condition], source: str):
    """Keep the rows for which every condition holds (AND)."""
    for condition in conditions:
        if condition.column not in table.column_names:
            raise SpungeError(
                f"{source}: filter '{condition.source}' names unknown column '{condition.column}' "
                f"(columns: {', '.join(table.column_names)})"
            )
        keep = condition.predicate(_is_numeric(table.features[condition.column]))
        column_values = table[condition.column]
        indices = [i for i, value in enumerate(column_values) if keep(value)]
        table = table.select(indices)
    return table


def split_dataset(
    source: str | Path,
    *,
    by: By,
    out: str | Path,
    where: list[str] | tuple[str, ...] = (),
    values: list[str] | None = None,
    text_column: str | None = None,
    fmt: str = "jsonl",
    force: bool = False,
    hub_split: str = "train",
    progress: bool = True,
    report: bool = True,
) -> SplitResult:
    """Filter `source`, then write one file per value of column `by` (see module docstring).

    `by` may instead say how to discover the attribute (`ClusterBy`, `ClassifierBy`): the rows
    left after filtering are labelled into a new column, which is then split on like any other;
    the manifest records how (`discovery`), and `report` adds report.md and map.png. `BlockBy`
    labels every row of the source by its position before filtering (see `discovery.blocks`).
    """
    if fmt not in ("jsonl", "parquet"):
        raise SpungeError(f"unknown format '{fmt}' (use jsonl or parquet)")
    guard_output(out, inputs=[source], force=force)
    conditions = [parse_condition(expr) for expr in where]
    table = load_table(source, split=hub_split)
    text_column = _check_columns(source, table.column_names, by, text_column)
    rows_in = len(table)
    blocks = None
    if isinstance(by, BlockBy):  # numbered before filtering: a row's block does not depend on the filters
        table, blocks = number_blocks(table, by, str(source))
        by = by.block.column
    table = apply_filters(table, conditions, str(source))
    if len(table) == 0:
        raise SpungeError(f"{source}: no rows left after the filters {' AND '.join(c.source for c in conditions)}")
    discovery = None
    if is_discovery(by):
        check_output_dir(Path(out), force=force)  # before the costly part, not after
        discovery = discover(table, by, text_column=text_column, source=str(source), progress=progress, report=report)
        table = table.add_column(discovery.column, discovery.labels)
        by = discovery.column
        values = values if values is not None else discovery.order

    attribute = [None if v is None else str(v) for v in table[by]]
    counts = Counter(v for v in attribute if v is not None)
    chosen = _chosen_values(source, by, counts, values)
    names = subset_names(chosen)  # may refuse the values: before the output exists
    with atomic_output_dir(out, force=force) as tmp:
        subsets = _write_subsets(tmp, Path(out), table, attribute, chosen, names, fmt)
        write_json(tmp / SPLIT_MANIFEST, {
            "kind": "split",
            "spunge_version": __version__,
            "source": {"path": str(source), "sha256": source_sha256(source)},
            "column": by,
            "filters": [c.to_json() for c in conditions],
            "text_column": text_column,
            "format": fmt,
            "rows_in": rows_in,
            "rows_after_filter": len(table),
            "rows_without_value": sum(v is None for v in attribute),
            "values": chosen,
            "subsets": subsets,
            **({"discovery": discovery.record} if discovery is not None else {}),
            **({"discovery": blocks} if blocks is not None else {}),
        })
        if discovery is not None and report:
            discovery.write_report(tmp)
    return SplitResult(out=Path(out), column=by, counts={v: counts[v] for v in chosen},
                       rows_in=rows_in, rows_after_filter=len(table), discovery=discovery, blocks=blocks)


def _check_columns(source: str | Path, columns: list[str], by: By, text_column: str | None) -> str | None:
    """The text column to record (`text` when present and none was named); SpungeError naming a missing column."""
    if isinstance(by, str) and by not in columns:
        raise SpungeError(f"{source}: no column '{by}' (columns: {', '.join(columns)})")
    if text_column is None:
        return "text" if "text" in columns else None
    if text_column not in columns:
        raise SpungeError(f"{source}: no text column '{text_column}' (columns: {', '.join(columns)})")
    return text_column


def _chosen_values(source: str | Path, by: str, counts: Counter, values: list[str] | None) -> list[str]:
    """The values to write a subset for: those asked for (each must occur after filtering), else every one, sorted."""
    if values is not None:
        missing = [v for v in values if v not in counts]
        if missing:
            raise SpungeError(
                f"{source}: value(s) {', '.join(repr(m) for m in missing)} of column '{by}' do not occur "
                f"after filtering (values present: {', '.join(sorted(counts))})"
            )
        chosen = list(dict.fromkeys(values))
    else:
        chosen = sorted(counts)
    if not chosen:
        raise SpungeError(f"{source}: column '{by}' has no values after filtering")
    return chosen


def _write_subsets(tmp: Path, out: Path, table, attribute: list[str | None], chosen: list[str], names: dict[str, str],
                   fmt: str) -> list[dict]:
    """One file per chosen value, named `names[value]`, in `tmp` (the output being assembled); the manifest's `subsets`."""
    subsets = []
    for value in chosen:
        indices = [i for i, v in enumerate(attribute) if v == value]
        subset = table.select(indices)
        file_name = f"{names[value]}.{fmt}"
        target = tmp / file_name
        try:
            if fmt == "jsonl":
                subset.to_json(str(target), lines=True, force_ascii=False)
            else:
                subset.to_parquet(str(target))
        except OSError as exc:  # the output's fault (full disk, permissions), never the input's
            raise SpungeError(f"cannot write {out / file_name}: {exc.strerror or exc}") from exc
        subsets.append({"value": value, "name": names[value], "file": file_name, "rows": len(indices)})
    return subsets
