"""The card's evaluation figures: one readable table, and the same figures as the Hub's `model-index` metadata.

The figures come from the evaluations' own result JSONs through a reader the caller gives (the
evaluation registry sits above the card: `evaluate.registry.card_metrics`), so the card never lists
evaluation names or result layouts. Only results of this model go into `model-index` (the Hub shows
them as the model's scores): those stored in the model directory, or whose `model` names it; a base
model's or a comparison's figures stay in the readable sections.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from spunge_merge.card.tables import cell

# (metric key, header, value, lower is better: True/False/None unknown) for one result JSON.
MetricReader = Callable[[dict[str, Any]], list[tuple[str, str, float, bool | None]]]
_DATA_KEYS = ("facts", "prompts", "data", "source", "dataset")


def is_own_result(data: dict[str, Any], model_dir: Path, in_model_dir: bool) -> bool:
    """A result of this model: kept in its directory, or naming it as its model."""
    if in_model_dir:
        return True
    model = data.get("model")
    path = model.get("path") if isinstance(model, dict) else model
    try:
        return isinstance(path, str) and Path(path).resolve() == Path(model_dir).resolve()
    except OSError:
        return False


def dataset_of(data: dict[str, Any], kind: str) -> tuple[str, str]:
    """(dataset id for the Hub, readable name): the file or Hub dataset the evaluation read, else its own name."""
    from spunge_merge.card import _is_hub_dataset_id  # the card's rule for Hub ids vs local files

    for key in _DATA_KEYS:
        entry = data.get(key)
        path = entry.get("path") if isinstance(entry, dict) else entry if isinstance(entry, str) else None
        if isinstance(path, str) and path:
            if _is_hub_dataset_id(path):
                return path, path
            name = Path(path).name
            return Path(name).stem or kind, name
    return kind, kind


def collect(results: list[dict[str, Any]], reader: MetricReader | None) -> dict[str, Any]:
    """`results`: [{kind, data, file, own}] found under the model directory and the --eval folders.

    Returns the readable table (this model's figures, with the file each came from) and the
    `EvalResult`s for the metadata."""
    from huggingface_hub import EvalResult

    rows: list[list[str]] = []
    eval_results: list[EvalResult] = []
    if reader is None:
        return {"table": None, "eval_results": []}
    for entry in results:
        if not entry["own"]:
            continue
        try:
            figures = reader(entry["data"])
        except (KeyError, TypeError, ValueError):  # a result of another layout or version: shown in its section instead
            figures = []
        dataset_type, dataset_name = dataset_of(entry["data"], entry["kind"])
        for key, header, value, lower in figures:
            better = "lower" if lower is True else "higher" if lower is False else "–"
            rows.append([cell(entry["kind"]), cell(header), cell(value), better, cell(dataset_name), f"`{entry['file']}`"])
            eval_results.append(EvalResult(task_type="text-generation", task_name=entry["kind"], dataset_type=dataset_type,
                                           dataset_name=dataset_name, metric_type=key, metric_name=header,
                                           metric_value=float(value)))
    table = {"header": ["evaluation", "metric", "value", "better", "data", "file"], "rows": rows} if rows else None
    return {"table": table, "eval_results": eval_results}
