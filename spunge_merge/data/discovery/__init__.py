"""Discovering the attribute to split on when the data has none: clusters, a classifier's labels, row blocks.

`discover(table, by)` labels every row of an already filtered table, by k-means over sentence
embeddings (`ClusterBy`) or by a text-classification model (`ClassifierBy`); the split stage then
splits on the new label column exactly as on a column the data came with. Row blocks (`BlockBy`,
`blocks.number_blocks`) need no model and are numbered before the filters, so they are not a
"discovery" here (`is_discovery` is False for them). One module per step: `spec` (what `--by` may
say), `blocks`, `embeddings`, `clustering`, `classify`, `terms` (c-TF-IDF names), `report`
(report.md, map.png, agreement with a true label column).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spunge_merge.data.discovery.spec import UNSURE, BlockBy, By, ClassifierBy, ClusterBy, build_by, parse_by_text
from spunge_merge.errors import SpungeError

__all__ = ["BlockBy", "By", "ClassifierBy", "ClusterBy", "Discovery", "build_by", "discover", "is_discovery", "parse_by_text"]
EXAMPLES = 3
TOP_TERMS = 10


def is_discovery(by: Any) -> bool:
    return isinstance(by, ClusterBy | ClassifierBy)


@dataclass(frozen=True)
class Discovery:
    """Labels for every row of a table, and what the manifest and the report say about them."""

    column: str
    labels: list[str | None]  # per row; None: no text, or an unsure row that was dropped
    order: list[str]  # subset values, in the order they are written
    record: dict[str, Any]  # manifest["discovery"]
    subsets: list[dict[str, Any]]  # per value: rows, terms, example texts
    features: np.ndarray  # per labelled-or-not row (rows without text: zeros), for the 2-D map
    seed: int

    def write_report(self, directory: Path) -> None:
        from spunge_merge.data.discovery.report import write_report

        write_report(directory, self.record, self.subsets, self.features, self.labels, self.seed)


def require_packages(report: bool) -> None:
    """scikit-learn (and matplotlib for the map) come with the `discover` extra."""
    needed = ["sklearn"] + (["matplotlib"] if report else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise SpungeError(f"discovering subsets needs {', '.join(missing)}: pip install 'spunge-merge[discover]'")


def _texts(table, text_column: str | None, source: str) -> tuple[list[str], list[int]]:
    if text_column is None or text_column not in table.column_names:
        raise SpungeError(f"{source}: no text column '{text_column or 'text'}' to discover subsets from "
                          f"(columns: {', '.join(table.column_names)}); name it with --text-column")
    values = table[text_column]
    rows = [i for i, text in enumerate(values) if isinstance(text, str) and text.strip()]
    return [values[i] for i in rows], rows


def _check_columns(table, column: str, truth: str | None, source: str) -> None:
    if column in table.column_names:
        raise SpungeError(f"{source}: the data already has a column '{column}'; choose another name with --label-column")
    if truth is not None and truth not in table.column_names:
        raise SpungeError(f"{source}: no true-label column '{truth}' (columns: {', '.join(table.column_names)})")


def discover(table, by: ClusterBy | ClassifierBy, *, text_column: str | None, source: str,
             progress: bool = True, report: bool = True) -> Discovery:
    """Label every row of `table` (see module docstring); refuses bad input before any work."""
    require_packages(report)
    spec = by.cluster if isinstance(by, ClusterBy) else by.classifier
    _check_columns(table, spec.column, spec.truth, source)
    texts, rows = _texts(table, text_column, source)
    if isinstance(by, ClusterBy):
        values, features, examples, record, seed = _by_cluster(texts, by, source, progress)
    else:
        values, features, examples, record, seed = _by_classifier(texts, by, source, progress)
    labels: list[str | None] = [None] * len(table)
    full = np.zeros((len(table), features.shape[1]), dtype=np.float32)
    for position, row in enumerate(rows):
        labels[row] = values[position]
        full[row] = features[position]
    order = record.pop("order")
    present = {v for v in values if v is not None}
    order = [v for v in order if v in present]
    from spunge_merge.data.discovery.terms import class_tfidf_terms

    terms = record.get("terms")
    if terms is None:
        labelled = [(t, v) for t, v in zip(texts, values, strict=True) if v is not None]
        terms = class_tfidf_terms([t for t, _ in labelled], [v for _, v in labelled], top=TOP_TERMS) if labelled else {}
    subsets = [{"value": v, "rows": sum(1 for x in values if x == v), "terms": terms.get(v, []),
                "examples": [texts[i] for i in examples.get(v, [])]} for v in order]
    record.update({"text_column": text_column, "column": spec.column, "rows_labelled": sum(v is not None for v in values),
                   "truth": spec.truth, "terms": {s["value"]: s["terms"] for s in subsets}})
    if spec.truth is not None:
        from spunge_merge.data.discovery.report import agreement

        record["agreement"] = agreement(labels, table[spec.truth])
    return Discovery(column=spec.column, labels=labels, order=order, record=record, subsets=subsets, features=full, seed=seed)


def _by_cluster(texts: list[str], by: ClusterBy, source: str, progress: bool):
    from spunge_merge.data.discovery.clustering import check_k, cluster, representatives
    from spunge_merge.data.discovery.embeddings import embed_texts
    from spunge_merge.data.discovery.terms import class_tfidf_terms, name_from_terms

    spec = by.cluster
    k_values = check_k(spec.k, spec.k_range, len(texts), source)
    vectors, made = embed_texts(texts, spec.model, batch_size=spec.batch_size, progress=progress)
    result = cluster(vectors, k_values, spec.seed)
    index_names = [str(c) for c in result.labels]
    terms = class_tfidf_terms(texts, index_names, top=TOP_TERMS)
    names = [name_from_terms(c + 1, terms.get(str(c), [])) for c in range(result.k)]
    values = [names[c] for c in result.labels]
    examples = {names[c]: rows for c, rows in representatives(vectors, result.labels, result.centroids, EXAMPLES).items()}
    record = {"method": "cluster", "model": made["model"], "embeddings_cached": made["cached"], "seed": spec.seed,
              "k": result.k, "k_given": spec.k is not None, "k_range": list(spec.k_range) if spec.k is None else None,
              "silhouette": {str(k): v for k, v in result.silhouette.items()}, "order": names,
              "terms": {names[c]: terms.get(str(c), []) for c in range(result.k)}}
    return values, vectors, examples, record, spec.seed


def _by_classifier(texts: list[str], by: ClassifierBy, source: str, progress: bool):
    from spunge_merge.data.discovery.classify import classify_texts

    spec = by.classifier
    if not texts:
        raise SpungeError(f"{source}: no rows with text to classify")
    scores = classify_texts(texts, spec, progress=progress)
    if UNSURE in scores.classes:
        raise SpungeError(f"{spec.model}: a class is named '{UNSURE}', which is reserved for unsure rows")
    best = scores.values.argmax(axis=1)
    confidence = scores.values.max(axis=1)
    sure = confidence >= spec.threshold
    fallback = UNSURE if spec.unsure == "keep" else None
    values = [scores.classes[b] if ok else fallback for b, ok in zip(best, sure, strict=True)]
    examples: dict[str, list[int]] = {}
    for i in sorted(range(len(texts)), key=lambda i: (-float(confidence[i]), i)):  # most confident first
        if values[i] is not None and len(examples.setdefault(values[i], [])) < EXAMPLES:
            examples[values[i]].append(i)
    record = {"method": "classifier", **scores.record, "classes": scores.classes, "labels": spec.labels,
              "threshold": spec.threshold, "unsure": spec.unsure, "unsure_rows": int((~sure).sum()), "seed": None,
              "mean_confidence": round(float(confidence.mean()), 4), "order": [*scores.classes, UNSURE]}
    return values, scores.values, examples, record, 0
