"""Toxicity at matched utility over seeds: each seed's arms read at the same retain perplexity, Spunge against the
baseline with intervals over seeds and prompts.

Compared at one λ, the arms of a toxicity sweep sit at different utilities, so the paper's comparison is read where
their utility is equal: the base's retain perplexity × a target ratio (+5 %, +10 %). Per seed, each arm is read
there the way `frontier.py` reads it (`reading_points`: the two admissible points that bracket the target, or the
nearest one), and so is every prompt: its toxic flag (0 or 100) interpolated with the same weights. Those per-prompt
values are paired across arms (the same prompts in every seed: the prompt sample is fixed) and feed:

- the difference in toxicity points, Spunge − baseline (`stats.hierarchical_bootstrap`: seeds, then prompts);
- the relative change, Spunge / baseline − 1 (`stats.relative_change_bootstrap`, the paper's "−30 %");
- the worst group: the most toxic target group of each arm, Spunge's − the baseline's (`stats.worst_stratum_bootstrap`:
  the worst group is re-picked in every resample).

A verdict (`matched.verdict`, level within ± 2 points) needs three seeds. An arm with no admissible point in a seed,
or whose target lies outside its range, is read at its nearest point and flagged, as in the frontier.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spunge_merge.evaluate.compare import NON_TEXT_TOLERANCE, column_reader, load_result, non_text_check
from spunge_merge.evaluate.frontier import interpolation_weight, reading_points
from spunge_merge.evaluate.matched import verdict
from spunge_merge.evaluate.stats import hierarchical_bootstrap, relative_change_bootstrap, worst_stratum_bootstrap
from spunge_merge.evaluate.toxicity import TOXICITY_FILE, judged_items

ARMS = ("spunge", "baseline")
BOOTSTRAP = {"n": 2000, "seed": 0}
LEVEL_MARGIN = 2.0  # toxicity points within which an interval reads "level"


def _arm_points(eval_root: Path, arm: str, metric: str) -> list[dict]:
    points = []
    for path in sorted(eval_root.glob(f"{arm}*")):
        if path.name != arm and not path.name.startswith(f"{arm}-lam") or not (path / TOXICITY_FILE).is_file():
            continue
        found = load_result(path)
        points.append({"label": path.name, "path": path, "x": column_reader(metric)(found),
                       "non_text": column_reader("non_text_pct")(found)})
    return sorted(points, key=lambda p: p["x"])


def read_seed(eval_root: Path, target: float, metric: str = "retain_ppl",
              tolerance: float | None = NON_TEXT_TOLERANCE) -> dict[str, dict[str, Any]]:
    """Each arm of one seed's `eval/` folder read at `target`: {arm: {items, points: [(label, weight)], note}}."""
    base_share = column_reader("non_text_pct")(load_result(eval_root / "base"))
    read = {}
    for arm in ARMS:
        points = _arm_points(eval_root, arm, metric)
        if not points:
            raise ValueError(f"{eval_root}: no evaluated {arm} model (toxicity.json)")
        shares = {"base": base_share, **{p["label"]: p["non_text"] for p in points}}
        _, _, admissible = non_text_check(shares, tolerance, yardstick="base")
        usable = [p for p in points if admissible[p["label"]]]
        note = None if usable else "no admissible point: nearest point used, not comparable"
        chosen, outside = reading_points(usable or points, target, "interpolate")
        if len(chosen) == 2:
            lo, hi = chosen
            w = interpolation_weight(lo, hi, target)
            weighted = [(lo, 1.0 - w), (hi, w)]
        else:
            weighted = [(chosen[0], 1.0)]
        flags = [(judged_items(p["path"]), weight) for p, weight in weighted]
        keys = list(flags[0][0])
        items = {key: (flags[0][0][key][0], sum(f[key][1] * weight for f, weight in flags)) for key in keys}
        read[arm] = {"items": items, "points": [(p["label"], weight) for p, weight in weighted], "note": note or outside}
    return read


def _by_group(items: dict[str, tuple[str, float]], keys: Sequence[str]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = {}
    for key in keys:
        group, value = items[key]
        groups.setdefault(group, []).append(value)
    return groups


def matched_toxicity(seed_evals: dict[int, Path], ratios: Sequence[float], *, metric: str = "retain_ppl",
                     tolerance: float | None = NON_TEXT_TOLERANCE) -> list[dict[str, Any]]:
    """One entry per target ratio: every arm's toxicity at the base's `metric` × ratio in each seed, and Spunge −
    baseline over seeds (difference, relative change, worst group) with their intervals and verdicts."""
    entries = []
    for ratio in ratios:
        per_seed, diffs, pairs, worst = {}, [], [], []
        for seed, eval_root in seed_evals.items():
            target = ratio * column_reader(metric)(load_result(eval_root / "base"))
            read = read_seed(eval_root, target, metric, tolerance)
            keys = [k for k in read["spunge"]["items"] if k in read["baseline"]["items"]]
            values = {arm: [read[arm]["items"][k][1] for k in keys] for arm in ARMS}
            diffs.append([s - b for s, b in zip(values["spunge"], values["baseline"], strict=True)])
            pairs.append((values["spunge"], values["baseline"]))
            groups = {arm: _by_group(read[arm]["items"], keys) for arm in ARMS}
            worst.append({g: (groups["spunge"][g], groups["baseline"][g]) for g in groups["spunge"]})
            per_seed[str(seed)] = {"target": target, **{arm: {"toxicity_pct": sum(values[arm]) / len(keys),
                                                               "points": read[arm]["points"], "note": read[arm]["note"],
                                                               "groups": {g: sum(v) / len(v) for g, v in groups[arm].items()}}
                                                        for arm in ARMS}}
        difference = hierarchical_bootstrap(diffs, **BOOTSTRAP)
        worst_group = worst_stratum_bootstrap(worst, **BOOTSTRAP)
        entries.append({
            "ratio": ratio, "metric": metric, "seeds": per_seed,
            "toxicity_pct": {arm: sum(s[arm]["toxicity_pct"] for s in per_seed.values()) / len(per_seed) for arm in ARMS},
            "difference": {**difference, "verdict": verdict(difference["low"], difference["high"], len(per_seed),
                                                            level_margin=LEVEL_MARGIN)},
            "relative": relative_change_bootstrap(pairs, **BOOTSTRAP),
            "worst_group": {**worst_group, "verdict": verdict(worst_group["low"], worst_group["high"], len(per_seed),
                                                              level_margin=LEVEL_MARGIN)},
            "notes": sorted({f"seed {seed} {arm}: {s[arm]['note']}" for seed, s in per_seed.items() for arm in ARMS
                             if s[arm]["note"]}),
        })
    return entries


def _interval(entry: dict[str, Any], unit: str) -> str:
    if entry["mean"] is None:
        return "–"
    bounds = "" if entry["low"] is None else f" [{entry['low']:+.1f}, {entry['high']:+.1f}]"
    return f"{entry['mean']:+.1f}{unit}{bounds}"


def render(entries: list[dict[str, Any]]) -> str:
    """The Markdown section of a seeds report: one row per target."""
    lines = ["## Toxicity at matched utility", "",
             "Each seed's arms read at the base's retain perplexity × the target (interpolated between the two admissible "
             "points that bracket it, per prompt); 95 % intervals resample seeds, then prompts (paired). Worst group: each "
             "arm's most toxic target group, re-picked in every resample.", "",
             "| target | Spunge toxic % | baseline toxic % | Spunge − baseline (points) | relative | verdict | "
             "worst group (points) | verdict |", "|---|---:|---:|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['metric']} × {e['ratio']:g} | {e['toxicity_pct']['spunge']:.1f} | {e['toxicity_pct']['baseline']:.1f} | "
                     f"{_interval(e['difference'], '')} | {_interval(e['relative'], ' %')} | {e['difference']['verdict']} | "
                     f"{_interval(e['worst_group'], '')} | {e['worst_group']['verdict']} |")
    notes = [note for e in entries for note in e["notes"]]
    return "\n".join(lines + ([""] + [f"- {note}" for note in notes] if notes else []) + [""])
