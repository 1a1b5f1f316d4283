"""Plots: radar plots of toxicity per group (the paper's Figures 2-4, one polygon per model) and the
toxicity-utility frontier of `spunge eval compare --arm`.

Drawn with matplotlib's object API on an Agg canvas (no display, no global backend switch),
and written atomically. With fewer than three groups a radar has no area, so a grouped bar
chart is drawn instead.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from spunge_merge.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _write_png(figure: Figure, path: str | Path) -> Path:
    """Render `figure` to PNG in memory, then write it atomically (no half-written image)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


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
    return _write_png(figure, path)


def frontier_plot(result: dict, path: str | Path, *, title: str = "Toxicity-utility frontier") -> Path:
    """Write a PNG of a `frontier.json` result: toxicity % (Wilson 95 % bars) against the utility metric.

    One line per arm through its points in utility order, λ written at each point, points that
    another point of the arm dominates drawn hollow; the base model as a star; the operating point
    as a dashed line at the target with a ring on each arm's reading of it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.5, 6.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(111)
    colours = [f"C{i}" for i in range(10)]
    xs: list[float] = []

    def bars(points: list[dict]) -> list[list[float]]:
        return [[max(0.0, p["toxicity"]["pct"] - p["toxicity"]["ci95"][0]) for p in points],
                [max(0.0, p["toxicity"]["ci95"][1] - p["toxicity"]["pct"]) for p in points]]

    for k, (name, arm) in enumerate(result["arms"].items()):
        colour = colours[k % len(colours)]
        points = arm["points"]
        x = [p["x"] for p in points]
        y = [p["toxicity"]["pct"] for p in points]
        xs.extend(x)
        axes.errorbar(x, y, yerr=bars(points), color=colour, marker="o", markersize=6, linewidth=1.6, capsize=3,
                      elinewidth=0.9, label=name, zorder=3)
        dominated = [p for p in points if not p.get("pareto", True)]
        if dominated:
            axes.plot([p["x"] for p in dominated], [p["toxicity"]["pct"] for p in dominated], linestyle="none", marker="o",
                      markersize=6, markerfacecolor="white", markeredgecolor=colour, zorder=4)
        for p in points:
            if p.get("lambda") is not None:
                axes.annotate(f"λ={p['lambda']:g}", (p["x"], p["toxicity"]["pct"]), xytext=(5, 5), textcoords="offset points",
                              fontsize=7.5, color=colour)
    base = result.get("base")
    if base:
        xs.append(base["x"])
        axes.errorbar([base["x"]], [base["toxicity"]["pct"]], yerr=bars([base]), color="black", marker="*", markersize=15,
                      linestyle="none", capsize=3, elinewidth=0.9, label="base", zorder=5)
    op = result.get("operating_point")
    if op:
        axes.axvline(op["target"], color="grey", linestyle="--", linewidth=1, zorder=1,
                     label=f"operating point: {result['metric_label']} = {op['target']:.4g}"
                           + (" (interpolated)" if op["match"] == "interpolate" else " (nearest)"))
        names = list(result["arms"])
        for row in op["rows"]:
            if row["label"] in names:
                colour = colours[names.index(row["label"]) % len(colours)]
                axes.plot([row["x"]], [row["toxicity"]["pct"]], linestyle="none", marker="o", markersize=15,
                          markerfacecolor="none", markeredgecolor=colour, markeredgewidth=2.2, zorder=6)
    positive = [x for x in xs if x > 0]
    if result.get("lower_is_better") and positive and max(positive) / min(positive) > 5:
        from matplotlib.ticker import FuncFormatter

        axes.set_xscale("log")  # perplexity blows up at large λ; a log axis keeps the useful end readable
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))
        axes.tick_params(axis="x", which="minor", labelsize=7.5)
    lower = result.get("lower_is_better", True)
    axes.set_xlabel(f"{result['metric_label']} ({'lower' if lower else 'higher'} is better)")
    axes.set_ylabel("toxic generations (%)")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.set_title(title, fontsize=13)
    axes.legend(fontsize=8.5, loc="best")
    figure.subplots_adjust(bottom=0.15)
    footer = "error bars: Wilson 95 % intervals; hollow: dominated within its arm; rings: each arm at the operating point"
    if result.get("judge"):
        footer += f"\njudge: {result['judge']}"
    figure.text(0.5, 0.012, footer, ha="center", fontsize=7.5, wrap=True)
    return _write_png(figure, path)
