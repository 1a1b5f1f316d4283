"""The card's tables: run settings, results and evaluation JSON as rows of markdown cells.

Kept apart from the card's assembly (`card/__init__.py`) because it is all formatting: which values
are scalars, how a cell is written, when a JSON list or mapping becomes a grid.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SKIP_KEYS = {"kind", "model", "fingerprint", "spunge_version", "versions", "config", "settings", "created", "timestamp", "timing", "files"}
MAX_TABLE_ROWS = 40  # longer lists and mappings stay out of the card (their file is linked instead)


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def cell(value: Any) -> str:
    """A markdown table cell: short numbers, `|` escaped, no line breaks."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = "nan" if math.isnan(value) else f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(cell(v) for v in value)
    elif isinstance(value, dict):
        text = ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    elif value is None:
        text = "–"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def scalar_rows(mapping: dict) -> list[list[str]]:
    return [[cell(k), cell(v)] for k, v in mapping.items()]


def runs_table(runs: list[dict]) -> dict:
    with_results = [k for k in ("lambda", "steps", "final_loss", "loss") if any(k in run["result"] for run in runs)]
    columns = {run["column"] for run in runs if run["column"]}
    header = ["subset", f"`{columns.pop()}`" if len(columns) == 1 else "attribute value", "rows", "method", *with_results]
    rows = [[cell(run["name"]), cell(run["value"]), cell(run["rows"]), cell(run["method"]),
             *(cell(run["result"].get(k)) for k in with_results)] for run in runs]
    return {"header": header, "rows": rows}


def setting(run: dict, key: str) -> str:
    """A run's setting; an unset one (None = the library's default) shows the value the run recorded using."""
    value = run["config"].get(key)
    if value is None and run["result"].get(key) is not None:
        return f"{cell(run['result'][key])} (default)"
    return cell(value)


def config_tables(runs: list[dict]) -> list[dict]:
    """Hyperparameters per method: one column when every run shares them, else one column per run."""
    tables = []
    for method in sorted({run["method"] or "?" for run in runs}):
        group = [run for run in runs if (run["method"] or "?") == method]
        keys = list(dict.fromkeys(k for run in group for k in run["config"]))
        if not keys:
            continue
        shared = all([setting(run, k) for k in keys] == [setting(group[0], k) for k in keys] for run in group)
        if shared:
            header = ["hyperparameter", f"value (all {len(group)} runs)" if len(group) > 1 else "value"]
            rows = [[cell(k), setting(group[0], k)] for k in keys]
        else:
            header = ["hyperparameter", *(cell(run["name"]) for run in group)]
            rows = [[cell(k), *(setting(run, k) for run in group)] for k in keys]
        tables.append({"method": method, "header": header, "rows": rows})
    return tables


def json_tables(data: Any) -> list[dict]:
    """Markdown tables from an eval JSON of unknown layout: top-level scalars as metric/value,
    nested dicts of scalars as metric/value (dotted keys), dicts of dicts (per group, per task)
    and short lists of records as 2-D tables."""
    if not isinstance(data, dict):
        return []
    metrics: list[list[str]] = []
    tables: list[dict] = []

    def walk(prefix: str, value: Any) -> None:
        if prefix.endswith("sha256"):
            return  # hashes belong to the JSON, not the card
        if isinstance(value, str) and prefix.split(".")[-1] in {"path", "source"}:
            value = Path(value).name  # no local paths in the card
        if is_scalar(value):
            metrics.append([cell(prefix), cell(value)])
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            table = grid(prefix, list(value.items()))
            if table:
                tables.append(table)
        elif isinstance(value, dict):
            for key, sub in value.items():
                if str(key) not in SKIP_KEYS:
                    walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value) and len(value) <= MAX_TABLE_ROWS:
            table = grid(prefix, [(str(i), v) for i, v in enumerate(value)], index=False)
            if table:
                tables.append(table)
        elif isinstance(value, list) and value and all(is_scalar(v) for v in value) and len(value) <= 12:
            metrics.append([cell(prefix), cell(value)])

    walk("", data)
    if metrics:
        tables.insert(0, {"title": None, "header": ["metric", "value"], "rows": metrics})
    return tables


def grid(title: str, items: list[tuple[str, dict]], index: bool = True) -> dict | None:
    columns = list(dict.fromkeys(k for _, row in items for k, v in row.items() if is_scalar(v)))
    if not columns or len(items) > MAX_TABLE_ROWS:
        return None
    header = ([title.split(".")[-1] or "key"] if index else []) + [cell(c) for c in columns]
    rows = [([cell(name)] if index else []) + [cell(row.get(c, "")) for c in columns] for name, row in items]
    return {"title": title or None, "header": header, "rows": rows}
