"""Two-stage evaluation of a λ sweep: the cheap utility evaluation on every point, the costly ones only where the
read-out at matched utility will look.

A frontier read at matched utility uses at most two points of each arm: the pair whose utility brackets the
target, or the nearest point when the target lies outside the arm's range (`frontier.reading_points`). Which
points those are depends only on the utility figure (retain perplexity: teacher-forced, seconds per model) and on
admissibility (a point whose output is not text is never read; that is known only once its generations are
judged). So the sweep is evaluated in two stages:

1. the screen: the evaluation holding the utility metric, on every model;
2. the full evaluation (every chosen evaluation: generations, judges) on the base, on the points each target
   needs, and on any λ named in `lambdas`; a point the full evaluation finds inadmissible is set aside and the
   needs are worked out again, until every needed point has been evaluated and is admissible.

The figures at the operating points are then those of the full sweep: the same rule picks the same points, whose
evaluations are the same. The screen's figures only say where to look; they are never read into a toxicity
figure. What the two-stage sweep lacks is the frontier away from the targets (fewer points on the plot and in
the Pareto flags). `bench/toxigen_eval_speed.py --grid` measures the saving on a real sweep and checks the
operating-point figures against the full sweep's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, field_validator

from spunge_merge.config import FrozenConfig
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.compare import NON_TEXT_TOLERANCE, column_reader, load_result, non_text_check
from spunge_merge.evaluate.frontier import metrics, reading_points
from spunge_merge.evaluate.frontier_arms import provenance_lambda


class ScreenConfig(FrozenConfig):
    """`eval.screen` of a pipeline file: evaluate the utility metric on every model, everything else only at the
    points that the matched-utility read-out uses."""

    metric: str = Field("retain_ppl", description="The utility metric the operating points are matched on; its evaluation "
                                                  "is the screen and runs on every model (retain_ppl: perplexity).")
    targets: list[PositiveFloat] = Field(min_length=1, description="Operating points, as multiples of the base model's "
                                                                   "metric (1.05: 5 % above the base's retain perplexity).")
    lambdas: list[float] = Field(default_factory=list, description="λ points evaluated in full whatever their utility "
                                                                   "(e.g. [1] for the paper's λ = 1 table).")
    match: Literal["interpolate", "nearest"] = Field("interpolate", description="How the read-out takes an arm at a target "
                                                                                "(as `spunge eval frontier --match`).")
    non_text_tolerance: float | None = Field(NON_TEXT_TOLERANCE, ge=0, description=(
        "Percentage points of non-text generations a point may have above the base's and still be read (as the "
        "frontier's); null: no check."))

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in metrics():
            raise ValueError(f"unknown metric '{value}' (known: {', '.join(sorted(metrics()))})")
        return value

    def evaluation(self) -> str:
        """The evaluation that holds the metric (the screen)."""
        return metrics()[self.metric][1]


def screened_point(label: str, eval_dir: Path, metric: str) -> dict:
    """`{label, x, lambda}` of one screened model: its utility figure and the λ its model records."""
    found = load_result(eval_dir)
    value = column_reader(metric)(found)
    if value is None or not math.isfinite(value):
        raise SpungeError(f"{eval_dir}: no finite {metrics()[metric][0]} to screen on")
    lam, _ = provenance_lambda(found)
    return {"label": label, "x": float(value), "lambda": lam}


def needed_points(arms: dict[str, list[dict]], base_value: float, config: ScreenConfig, excluded: Iterable[str] = ()) -> set[str]:
    """Labels to evaluate in full: for each arm and target, the points the read-out takes (among the points not
    `excluded`), and every point at one of `config.lambdas`."""
    excluded = set(excluded)
    needed: set[str] = set()
    for points in arms.values():
        needed |= {p["label"] for p in points if p["lambda"] is not None
                   and any(math.isclose(p["lambda"], lam, rel_tol=1e-9) for lam in config.lambdas)}
        candidates = sorted((p for p in points if p["label"] not in excluded), key=lambda p: p["x"])
        if not candidates:
            continue
        for ratio in config.targets:
            chosen, _ = reading_points(candidates, base_value * ratio, config.match)
            needed |= {p["label"] for p in chosen}
    return needed


def inadmissible(eval_dirs: dict[str, Path], base_label: str, tolerance: float | None) -> set[str]:
    """Labels whose generations are not text beyond `tolerance` points above the base's (`frontier`'s rule)."""
    read = column_reader("non_text_pct")
    shares = {label: read(load_result(path)) for label, path in eval_dirs.items()}
    _, _, admissible = non_text_check(shares, tolerance, yardstick=base_label)
    return {label for label, ok in admissible.items() if not ok}
