"""Radar plots of toxicity per group, the paper's Figures 2-4: one polygon per model.

Drawn with matplotlib's object API on an Agg canvas (no display, no global backend switch),
and written atomically. With fewer than three groups a radar has no area, so a grouped bar
chart is drawn instead.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from spunge_merge.fsutil import atomic_write_bytes


def _groups_in_order(series: dict[str, dict[str, float]]) -> list[str]:
    groups: list[str] = []
    for values in series.values():
        groups.extend(g for g in values if g not in groups)
    return groups


def radar_plot(series: dict[str, dict[str, float]], path: str | Path, *, title: str = "Toxicity per group (%)",
               subtitle: str | None = None) -> Path:
    """Write a PNG with one polygon per entry of `series` (label -> group -> percent)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = _groups_in_order(series)
    if not groups:
        raise ValueError("radar_plot needs at least one group")
    top = max([v for values in series.values() for v in values.values() if v is not None] + [1.0])
    limit = min(100.0, max(10.0, math.ceil(top * 1.15 / 10.0) * 10.0))
    figure = Figure(figsize=(7.5, 7.5), dpi=110)
    FigureCanvasAgg(figure)
    if len(groups) >= 3:
        axes = figure.add_subplot(111, projection="polar")
        angles = [2 * math.pi * i / len(groups) for i in range(len(groups))]
        for label, values in series.items():
            radii = [values.get(g) or 0.0 for g in groups]
            axes.plot(angles + angles[:1], radii + radii[:1], linewidth=2, marker="o", label=label)
            axes.fill(angles + angles[:1], radii + radii[:1], alpha=0.12)
        axes.set_xticks(angles)
        axes.set_xticklabels([g.replace("_", " ") for g in groups], fontsize=10)
        axes.set_ylim(0, limit)
        axes.set_rlabel_position(90)
        axes.tick_params(axis="y", labelsize=8)
    else:
        axes = figure.add_subplot(111)
        width = 0.8 / max(1, len(series))
        for k, (label, values) in enumerate(series.items()):
            axes.bar([i + k * width for i in range(len(groups))], [values.get(g) or 0.0 for g in groups], width=width,
                     label=label)
        axes.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))])
        axes.set_xticklabels(groups)
        axes.set_ylim(0, limit)
        axes.set_ylabel("toxic generations (%)")
    axes.set_title(title, fontsize=13, pad=22)
    figure.subplots_adjust(bottom=0.16, top=0.88)
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.045), ncol=min(3, len(labels)), fontsize=9,
                  frameon=False)
    if subtitle:
        figure.text(0.5, 0.015, subtitle, ha="center", fontsize=8, wrap=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
