"""The report a person reads after a discovered split: `report.md` and a 2-D map `map.png`.

Per subset: its size, its most distinctive terms and three example rows; the silhouette score of
every K tried; and, when a column of true labels is named, the agreement of the discovered
subsets with it: adjusted Rand index (chance-corrected, 1 = the same partition) and purity (the
share of rows that belong to their subset's majority true label).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from spunge_merge.fsutil import atomic_write_text

REPORT_FILE = "report.md"
MAP_FILE = "map.png"
_EXAMPLE_CHARS = 300


def agreement(predicted: list[str | None], truth: list[Any]) -> dict[str, Any]:
    """ARI and purity of `predicted` against `truth`, over the rows that have both."""
    from sklearn.metrics import adjusted_rand_score

    pairs = [(p, str(t)) for p, t in zip(predicted, truth, strict=True) if p is not None and t is not None]
    if not pairs:
        return {"rows": 0, "ari": None, "purity": None, "majority": {}}
    pred, true = zip(*pairs, strict=True)
    by_subset: dict[str, Counter] = {}
    for p, t in pairs:
        by_subset.setdefault(p, Counter())[t] += 1
    majority = {p: counts.most_common(1)[0] for p, counts in by_subset.items()}
    purity = sum(n for _, n in majority.values()) / len(pairs)
    return {"rows": len(pairs), "ari": round(float(adjusted_rand_score(true, pred)), 4), "purity": round(purity, 4),
            "majority": {p: {"value": v, "share": round(n / sum(by_subset[p].values()), 4)} for p, (v, n) in majority.items()}}


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _EXAMPLE_CHARS else text[:_EXAMPLE_CHARS - 1] + "…"


def render_markdown(record: dict[str, Any], subsets: list[dict[str, Any]], *, with_map: bool) -> str:
    """The report text: settings, silhouette scores, agreement, then one section per subset."""
    lines = [f"# Discovered split: `{record['method']}` on column `{record['text_column']}`", ""]
    model = record.get("model", {})
    lines.append(f"- model: `{model.get('ref')}`; label column: `{record['column']}`; rows labelled: {record['rows_labelled']}")
    if record["method"] == "cluster":
        lines.append(f"- K = {record['k']} ({'given' if record['k_given'] else 'chosen by silhouette'}), seed {record['seed']}")
        lines += ["", "| K | silhouette |", "|---:|---:|"]
        lines += [f"| {k}{' (chosen)' if int(k) == record['k'] else ''} | {s} |" for k, s in record["silhouette"].items()]
    else:
        lines.append(f"- {'zero-shot over ' + ', '.join(record['labels']) if record['labels'] else 'the model’s own classes'}; "
                     f"threshold {record['threshold']}, unsure rows: {record['unsure_rows']} ({record['unsure']})")
    agree = record.get("agreement")
    if agree:
        lines += ["", f"## Agreement with `{record['truth']}`", "",
                  f"Adjusted Rand index **{agree['ari']}**, purity **{agree['purity']}** over {agree['rows']} rows."]
    if with_map:
        lines += ["", f"![2-D map of the rows, coloured by subset]({MAP_FILE})"]
    for subset in subsets:
        lines += ["", f"## {subset['value']} ({subset['rows']} rows)", ""]
        lines.append(f"Top terms: {', '.join(subset['terms']) or '(none)'}")
        if agree and subset["value"] in agree["majority"]:
            major = agree["majority"][subset["value"]]
            lines.append(f"Majority `{record['truth']}`: {major['value']} ({major['share']:.0%})")
        lines += ["", *[f"- {_clip(example)}" for example in subset["examples"]]]
    return "\n".join(lines) + "\n"


def plot_map(path: Path, features: np.ndarray, labels: list[str | None], order: list[str], seed: int) -> None:
    """PCA of the features to two dimensions, one colour per subset (unlabelled rows left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    keep = [i for i, label in enumerate(labels) if label is not None]
    points = features[keep]
    if points.shape[1] >= 2 and len(points) >= 2:
        points = PCA(n_components=2, random_state=seed).fit_transform(points)
    else:
        points = np.column_stack([points[:, 0] if points.shape[1] else np.zeros(len(points)), np.zeros(len(points))])
    kept_labels = [labels[i] for i in keep]
    figure, axes = plt.subplots(figsize=(7, 5.5), dpi=110)
    colours = plt.get_cmap("tab10" if len(order) <= 10 else "tab20")
    for j, value in enumerate(order):
        rows = [i for i, label in enumerate(kept_labels) if label == value]
        axes.scatter(points[rows, 0], points[rows, 1], s=9, alpha=0.7, color=colours(j % colours.N), label=f"{value} ({len(rows)})")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title("Rows by discovered subset (PCA of the features)")
    axes.legend(fontsize=7, markerscale=2, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(directory: Path, record: dict[str, Any], subsets: list[dict[str, Any]], features: np.ndarray,
                 labels: list[str | None], seed: int) -> None:
    """Write `report.md` and `map.png` into `directory` (the split's temporary output)."""
    order = [s["value"] for s in subsets]
    plot_map(directory / MAP_FILE, features, labels, order, seed)
    atomic_write_text(directory / REPORT_FILE, render_markdown(record, subsets, with_map=True))
