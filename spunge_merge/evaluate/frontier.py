"""The toxicity-utility frontier: unlearning arms compared over a sweep of the scale λ.

One operating point cannot compare Spunge with its un-split baseline fairly: the scale λ (how much
of the task vector is subtracted or merged) sets a model's strength, and the two arms reach a
given utility at different λ. Each arm is therefore a list of evaluated models, one evaluation
directory per λ (toxicity.json for the y axis, perplexity.json / fluency.json / harness.json for
the x axis), and the arms are compared along their curves:

- every point with its toxicity % and Wilson 95 % interval, sorted by the utility metric, and
  marked Pareto-efficient when no other point of its arm (`pareto`) or of any arm (`pareto_all`)
  is at least as good on both axes and better on one;
- a Table-1-shaped table at one operating point, a target value of the utility metric (default:
  the reference arm's λ = 1 point). `match="interpolate"` (default) reads each arm's curve at the
  target: toxicity, its interval bounds and the other columns are linear interpolations between
  the two points that bracket the target, so those intervals are approximate; an arm whose points
  do not bracket the target falls back to its nearest point. `match="nearest"` takes each arm's
  measured point closest to the target and reports the residual mismatch;
- the same table at λ = 1 (the paper's setting), and a PNG of the curves.

An arm must not win by breaking its output: the toxicity judge scores generations that are not
text (`evaluate/degenerate.py`) as harmless, and perplexity does not see them. A point whose
non-text share exceeds the yardstick's (the base model's with `base`, else the lowest share of all
points) by more than `non_text_tolerance` percentage points (default 5) is inadmissible: it is
listed and plotted, but never Pareto-efficient, never read at the operating point, and flagged in
the λ = 1 table and the warnings. An arm with no admissible point gets its nearest point at the
operating point, flagged. `non_text_tolerance=None` turns the check off.

λ of a point is read from the evaluated model's provenance (`spunge.json` of the directory the
evaluation's `model.path` names: `merge.parameters.lambda` of a merged model, `result.lambda` of
a negated TVN run or its materialised model; an RMU run materialised as is has λ = 1) or given
explicitly (`NAME@LAMBDA=DIR` on the command line, `{"path": DIR, "lambda": X}` here).

Relative changes are (value - reference) / reference. The toxicity change carries a 95 % interval
for a ratio of two binomial rates (Katz's log method); it treats the two samples as independent,
which is conservative when both models answered the same prompts.

Output (into `out/`, through `results.py`): `frontier.json` (kind "frontier"), `frontier.md`,
`frontier.png`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.evaluate import registry
from spunge_merge.evaluate.compare import (
    NON_TEXT_TOLERANCE,
    RESULT_FILES,
    columns,
    consistency_warnings,
    load_result,
    non_text_check,
    relative_change,
)
from spunge_merge.evaluate.degenerate import RULE as NON_TEXT_RULE
from spunge_merge.evaluate.frontier_arms import ArmPoint, as_point, lambda_from_record, model_dirs, parse_arm, provenance_lambda
from spunge_merge.evaluate.frontier_report import FRONTIER_PLOT, FRONTIER_SUMMARY, render_markdown
from spunge_merge.evaluate.plots import frontier_plot
from spunge_merge.evaluate.registry import Computed, Planned, finish
from spunge_merge.evaluate.stats import Z_95
from spunge_merge.evaluate.toxicity import judge_line
from spunge_merge.fsutil import atomic_write_text
from spunge_merge.provenance import fingerprint as make_fingerprint

FRONTIER_FILE = "frontier.json"
BASE_LABEL = "base"
MATCH_MODES = ("interpolate", "nearest")


def metrics() -> dict[str, tuple[str, str, bool]]:
    """metric -> (header, evaluation holding it, lower is better): every registered utility column
    (retain_ppl from perplexity.json, fluency_ppl from fluency.json, utility from harness.json, ...)."""
    return {column.key: (column.header, evaluation.name, column.lower_is_better)
            for evaluation, column in registry.columns() if column.utility}


def _readers() -> dict[str, Any]:
    return {key: read for key, _, read in columns()}


def _rate(found: dict[str, dict]) -> dict[str, Any]:
    overall = found["toxicity"]["overall"]
    return {"pct": overall["pct"], "ci95": list(overall["ci95"]), "toxic": overall["toxic"], "n": overall["n"]}


def _load_point(label: str, source: ArmPoint, metric: str, warnings: list[str]) -> tuple[dict[str, Any], dict[str, dict]]:
    found = load_result(source.path)
    header, kind, _ = metrics()[metric]
    read = _readers()
    if "toxicity" not in found:
        raise SpungeError(f"{source.path}: no {RESULT_FILES['toxicity']} (the frontier's y axis); run "
                          f"`spunge eval toxicity --out {source.path}` first")
    if kind not in found or read[metric](found) is None:
        raise SpungeError(f"{source.path}: no {header} ({RESULT_FILES[kind]}); evaluate it there, or choose another --metric")
    fingerprints = {model.get("fingerprint") for _, model in model_dirs(found)} - {None}
    if len(fingerprints) > 1:
        warnings.append(f"{source.path}: its evaluations are of different models ({', '.join(sorted(found))})")
    recorded, recorded_source = provenance_lambda(found)
    lam, lam_source = recorded, recorded_source
    if source.lam is not None:
        if recorded is not None and not math.isclose(recorded, source.lam, rel_tol=1e-9, abs_tol=1e-12):
            warnings.append(f"{label}: λ {source.lam:g} given for {source.path}, but its model records λ {recorded:g} "
                            f"({recorded_source}); using {source.lam:g}")
        lam, lam_source = source.lam, "given"
    model = next((m for _, m in model_dirs(found) if m.get("ref")), {})
    point = {
        "lambda": lam,
        "lambda_source": lam_source,
        "path": str(source.path),
        "model": model.get("ref"),
        "x": read[metric](found),
        "values": {key: reader(found) for key, reader in read.items()},
        "toxicity": _rate(found),
        "groups": {group: summary["pct"] for group, summary in found["toxicity"].get("groups", {}).items()},
    }
    return point, found


def _dominates(a: dict, b: dict, lower_is_better: bool) -> bool:
    sign = 1.0 if lower_is_better else -1.0
    ax, bx = sign * a["x"], sign * b["x"]
    ay, by = a["toxicity"]["pct"], b["toxicity"]["pct"]
    return ax <= bx and ay <= by and (ax < bx or ay < by)


def pareto_flags(points: list[dict], lower_is_better: bool = True) -> list[bool]:
    """True for each point that no other point dominates (lower toxicity, better utility)."""
    return [not any(_dominates(other, point, lower_is_better) for j, other in enumerate(points) if j != i)
            for i, point in enumerate(points)]


def relative_change_interval(toxic: float, n: float, ref_toxic: float, ref_n: float, z: float = Z_95) -> list[float] | None:
    """95 % interval of the relative change of a rate, 100 (p / p_ref - 1), by Katz's log method.

    Counts may be fractional (an interpolated operating point); undefined (None) when either
    count is 0 or a sample is empty.
    """
    if min(toxic, ref_toxic) <= 0 or min(n, ref_n) <= 0:
        return None
    ratio = (toxic / n) / (ref_toxic / ref_n)
    se = math.sqrt(max(0.0, 1 / toxic - 1 / n + 1 / ref_toxic - 1 / ref_n))
    return [100.0 * (ratio * math.exp(-z * se) - 1), 100.0 * (ratio * math.exp(z * se) - 1)]


def _row_from_point(label: str, point: dict) -> dict[str, Any]:
    return {"label": label, "lambda": point["lambda"], "x": point["x"], "values": dict(point["values"]),
            "toxicity": dict(point["toxicity"]), "groups": dict(point["groups"]), "path": point["path"],
            "approximate": False, "bracket": None, "mismatch": None, "note": None,
            "admissible": point.get("admissible", True)}


def _mix(a: float | None, b: float | None, w: float) -> float | None:
    return None if a is None or b is None else (1.0 - w) * a + w * b


def interpolation_weight(lo: dict, hi: dict, target: float) -> float:
    """The weight of `hi` when the read-out interpolates between two points at `target` (that of `lo` is 1 − it)."""
    return (target - lo["x"]) / (hi["x"] - lo["x"])


def _interpolated_row(label: str, lo: dict, hi: dict, target: float) -> dict[str, Any]:
    w = interpolation_weight(lo, hi, target)
    tox = {"pct": _mix(lo["toxicity"]["pct"], hi["toxicity"]["pct"], w),
           "ci95": [_mix(lo["toxicity"]["ci95"][k], hi["toxicity"]["ci95"][k], w) for k in (0, 1)],
           "toxic": _mix(lo["toxicity"]["toxic"], hi["toxicity"]["toxic"], w),
           "n": _mix(lo["toxicity"]["n"], hi["toxicity"]["n"], w)}
    groups = {g: _mix(lo["groups"][g], hi["groups"][g], w) for g in lo["groups"] if g in hi["groups"]}
    lam = _mix(lo["lambda"], hi["lambda"], w)
    return {"label": label, "lambda": lam, "x": target,
            "values": {key: _mix(lo["values"].get(key), hi["values"].get(key), w) for key in lo["values"]},
            "toxicity": tox, "groups": groups, "path": None, "approximate": True,
            "bracket": [{"lambda": lo["lambda"], "x": lo["x"], "weight": 1.0 - w, "path": lo["path"]},
                        {"lambda": hi["lambda"], "x": hi["x"], "weight": w, "path": hi["path"]}],
            "mismatch": 0.0, "note": None, "admissible": True}


def reading_points(points: list[dict], target: float, match: str) -> tuple[list[dict], str | None]:
    """The points an arm is read from at `target` (its admissible points, sorted by x), and a note: the point at the
    target exactly, the two that bracket it (`interpolate`), else the nearest one. The one rule for the read-out
    (`operating_row`) and for choosing which points to evaluate in full (`evaluate/screen.py`)."""
    exact = [p for p in points if math.isclose(p["x"], target, rel_tol=1e-12, abs_tol=1e-12)]
    if exact:
        return exact[:1], None
    note = None
    if match == "interpolate" and len(points) > 1:
        for lo, hi in zip(points, points[1:], strict=False):
            if min(lo["x"], hi["x"]) < target < max(lo["x"], hi["x"]) and lo["x"] != hi["x"]:
                return [lo, hi], None
        low, high = min(p["x"] for p in points), max(p["x"] for p in points)
        note = f"target outside this arm's range {low:.4g}-{high:.4g}: nearest point used"
    return [min(points, key=lambda p: (abs(p["x"] - target), p["x"]))], note


def operating_row(label: str, points: list[dict], target: float, match: str) -> dict[str, Any]:
    """The arm read at `target` (points sorted by x): interpolated between its bracketing points, or its nearest point.

    Only admissible points (see the module docstring) are read; an arm without one gets its nearest point, flagged.
    """
    admissible = [p for p in points if p.get("admissible", True)]
    if not admissible:
        nearest = min(points, key=lambda p: (abs(p["x"] - target), p["x"]))
        row = _row_from_point(label, nearest)
        row["mismatch"] = nearest["x"] - target
        row["note"] = "no admissible point: every point's output is not text beyond the tolerance; not comparable"
        return row
    chosen, note = reading_points(admissible, target, match)
    if len(chosen) == 2:
        return _interpolated_row(label, chosen[0], chosen[1], target)
    row = _row_from_point(label, chosen[0])
    row["mismatch"] = 0.0 if math.isclose(chosen[0]["x"], target, rel_tol=1e-12, abs_tol=1e-12) else chosen[0]["x"] - target
    row["note"] = note
    return row


def _add_relative(rows: list[dict], reference: str) -> None:
    ref = next((row for row in rows if row["label"] == reference), None)
    for row in rows:
        if ref is None:
            row["relative"], row["toxicity_change_ci95"] = {}, None
            continue
        row["relative"] = {key: relative_change(value, ref["values"].get(key)) for key, value in row["values"].items()}
        row["toxicity_change_ci95"] = None if row is ref else relative_change_interval(
            row["toxicity"]["toxic"], row["toxicity"]["n"], ref["toxicity"]["toxic"], ref["toxicity"]["n"])


def _at_lambda(points: list[dict], lam: float) -> dict | None:
    return next((p for p in points if p["lambda"] is not None and math.isclose(p["lambda"], lam, rel_tol=1e-9)), None)


def _default_target(arms: dict[str, list[dict]], reference: str, metric: str) -> tuple[float, str]:
    name = reference if reference in arms else next(iter(arms))
    points = arms[name]
    at_one = _at_lambda(points, 1.0)
    if at_one is not None:
        return at_one["x"], f"{name} at λ = 1"
    known = [p for p in points if p["lambda"] is not None]
    if not known:
        raise SpungeError(f"arm '{name}' records no λ for its points, so there is no λ = 1 point to match; "
                          f"give the operating point with --target (a {metrics()[metric][0]} value)")
    closest = min(known, key=lambda p: abs(p["lambda"] - 1.0))
    return closest["x"], f"{name} at λ = {closest['lambda']:g} (its point closest to λ = 1)"


# ------------------------------------------------------------------------------------------------ markdown


# ------------------------------------------------------------------------------------------------ entry point


def frontier_results(arms: dict[str, list], out: str | Path, *, base: str | Path | None = None, metric: str = "retain_ppl",
                     target: float | None = None, match: str = "interpolate", reference: str | None = None,
                     non_text_tolerance: float | None = NON_TEXT_TOLERANCE, force: bool = False) -> dict[str, Any]:
    """Toxicity-utility frontier of `arms` (name -> evaluation dirs, one per λ); returns what `frontier.json` holds.

    Items of an arm are directories or `{"path": DIR, "lambda": X}` / `ArmPoint` (explicit λ).
    `base`: the base model's evaluation dir (a star on the plot, a row in the tables). `metric`:
    the x axis and the matched quantity (retain_ppl, fluency_ppl, utility). `target`: the
    operating point (default: the reference arm's λ = 1 point). `match`: interpolate or nearest.
    `reference`: label relative changes refer to (default: the first arm; "base" allowed).
    `non_text_tolerance`: percentage points of non-text generations a point may have above the
    yardstick (base, else the lowest share) and still be admissible; None turns the check off.
    """
    reference = _checked_request(arms, base, metric, match, reference, non_text_tolerance)
    lower = metrics()[metric][2]
    warnings: list[str] = []
    loaded: dict[str, dict[str, dict]] = {}
    inputs: dict[str, list[dict]] = {}
    arm_points = {name: _arm(name, items, metric, lower, loaded, inputs, warnings) for name, items in arms.items()}
    base_point = None
    if base is not None:
        base_point, found = _load_point(BASE_LABEL, ArmPoint(Path(base).expanduser()), metric, warnings)
        loaded[BASE_LABEL] = found
    check = _mark_points(arm_points, base_point, non_text_tolerance, lower, warnings)
    warnings.extend(consistency_warnings(loaded))
    if target is None:
        target_value, target_source = _default_target(arm_points, reference, metric)
    else:
        target_value, target_source = float(target), "given"
    fingerprint = make_fingerprint(kind="frontier", metric=metric, target=target_value, match=match, reference=reference,
                                   non_text_tolerance=non_text_tolerance,
                                   order=list(arm_points), inputs={name: sorted(entries, key=repr) for name, entries in inputs.items()},
                                   base={k: v.get("fingerprint") for k, v in loaded.get(BASE_LABEL, {}).items()})

    def compute() -> Computed:
        base_rows = [_row_from_point(BASE_LABEL, base_point)] if base_point else []
        op_rows = _operating_rows(base_rows, arm_points, metric, target_value, match, reference)
        one_rows, missing = _lambda_one_rows(base_rows, arm_points, reference, warnings)
        for row in op_rows:
            if row["label"] != BASE_LABEL and not row["admissible"]:
                warnings.append(f"{row['label']}: {row['note']}")
            if row.get("note") and row["label"] != BASE_LABEL and "outside" in row["note"]:
                warnings.append(f"{row['label']}: {row['note']} (λ {row['lambda']}, off by {row['mismatch']:+.4g})")
        judge = next((judge_line(found["toxicity"]["judge"]) for found in loaded.values() if found["toxicity"].get("judge")), None)
        result = {
            "kind": "frontier",
            "fingerprint": fingerprint,
            "model": {**({BASE_LABEL: base_point["model"]} if base_point else {}),
                      **{name: [p["model"] for p in points] for name, points in arm_points.items()}},
            "metric": metric,
            "metric_label": metrics()[metric][0],
            "lower_is_better": lower,
            "reference": reference,
            "judge": judge,
            "base": base_point,
            "arms": {name: {"points": points} for name, points in arm_points.items()},
            "operating_point": {"metric": metric, "target": target_value, "target_source": target_source, "match": match,
                                "rows": op_rows},
            "lambda_one": {"rows": one_rows, "missing": missing},
            "non_text_check": check,
            "warnings": warnings,
            "files": {"summary": FRONTIER_SUMMARY, "plot": FRONTIER_PLOT},
        }
        return Computed(result, {FRONTIER_SUMMARY: lambda path: atomic_write_text(path, render_markdown(result)),
                                 FRONTIER_PLOT: lambda path: frontier_plot(result, path)})

    read = [base, *(as_point(item).path for items in arms.values() for item in items)]
    return finish(Path(out), "frontier", FRONTIER_FILE, Planned(fingerprint, compute), force=force, inputs=read)


def _checked_request(arms: dict[str, list], base: str | Path | None, metric: str, match: str, reference: str | None,
                     non_text_tolerance: float | None) -> str:
    """The reference label, once the request is known to make sense (else SpungeError naming the option)."""
    if non_text_tolerance is not None and not (math.isfinite(non_text_tolerance) and non_text_tolerance >= 0):
        raise SpungeError(f"--non-text-tolerance must be >= 0 percentage points, got {non_text_tolerance}")
    if metric not in metrics():
        raise SpungeError(f"--metric '{metric}' is not one of {', '.join(metrics())}")
    if match not in MATCH_MODES:
        raise SpungeError(f"--match '{match}' is not one of {', '.join(MATCH_MODES)}")
    if not arms:
        raise SpungeError("no arms to draw: give --arm NAME=DIR[,DIR...] at least once")
    if BASE_LABEL in arms:
        raise SpungeError(f"--arm name '{BASE_LABEL}' is reserved for --base; name the arm otherwise")
    reference = reference if reference is not None else next(iter(arms))
    if reference not in arms and not (reference == BASE_LABEL and base is not None):
        raise SpungeError(f"--reference '{reference}' is not one of the arms ({', '.join(arms)})"
                          + (" or base" if base is not None else ""))
    return reference


def _arm(name: str, items: Any, metric: str, lower: bool, loaded: dict[str, dict], inputs: dict[str, list],
         warnings: list[str]) -> list[dict]:
    """An arm's points sorted along the x axis (their results go into `loaded`, their fingerprints into `inputs`)."""
    sources = [as_point(item) for item in (items if isinstance(items, list | tuple) else [items])]
    if not sources:
        raise SpungeError(f"--arm {name}: no evaluation directories")
    points = []
    for index, source in enumerate(sources):
        point, found = _load_point(name, source, metric, warnings)
        loaded[f"{name}[{index}]"] = found
        inputs.setdefault(name, []).append({"lambda": point["lambda"],
                                            "results": {k: v.get("fingerprint") for k, v in sorted(found.items())}})
        points.append(point)
    points.sort(key=lambda p: (p["x"] if lower else -p["x"], p["lambda"] if p["lambda"] is not None else math.inf))
    unknown = [p["path"] for p in points if p["lambda"] is None]
    if unknown:
        warnings.append(f"{name}: λ unknown for {', '.join(unknown)} (its model records none); give it as {name}@LAMBDA=DIR")
    lams = [p["lambda"] for p in points if p["lambda"] is not None]
    if len(set(lams)) < len(lams):
        warnings.append(f"{name}: several points share a λ ({', '.join(sorted({f'{v:g}' for v in lams if lams.count(v) > 1}))})")
    return points


def _mark_points(arm_points: dict[str, list[dict]], base_point: dict | None, non_text_tolerance: float | None, lower: bool,
                 warnings: list[str]) -> dict[str, Any]:
    """Mark every point admissible or not (non-text check) and Pareto-efficient within its arm and overall;
    returns the check's record for frontier.json."""
    everything = [p for points in arm_points.values() for p in points] + ([base_point] if base_point else [])
    shares = {index: point["values"].get("non_text_pct") for index, point in enumerate(everything)}
    limit, limit_index, admissible = non_text_check(shares, non_text_tolerance,
                                                    yardstick=len(everything) - 1 if base_point else None)
    limit_label = None if limit_index is None else (BASE_LABEL if base_point and limit_index == len(everything) - 1
                                                    else f"`{everything[limit_index]['path']}`")
    for index, point in enumerate(everything):
        point["admissible"] = admissible[index]
        if point is not base_point and not point["admissible"]:
            warnings.append(f"{point['path']}: {point['values']['non_text_pct']:.1f} % of its generations are not text, more "
                            f"than {non_text_tolerance:g} points above {limit_label} ({limit:.1f} %): inadmissible (it could "
                            "win on toxicity by breaking its output)")
    unknown_share = [p["path"] for index, p in enumerate(everything) if shares[index] is None]
    if unknown_share and non_text_tolerance is not None:
        warnings.append(f"non-text share unknown (no non_text in toxicity.json, no generations.jsonl) for {', '.join(unknown_share)}: "
                        "not checked")
    for points in arm_points.values():
        ok = [p for p in points if p["admissible"]]
        flags = dict(zip(map(id, ok), pareto_flags(ok, lower), strict=True))
        for point in points:
            point["pareto"] = flags.get(id(point), False)
    ok = [p for p in everything if p["admissible"] or p is base_point]
    flags = dict(zip(map(id, ok), pareto_flags(ok, lower), strict=True))
    for point in everything:
        point["pareto_all"] = flags.get(id(point), False)
    return {"tolerance": non_text_tolerance, "yardstick": limit_label, "yardstick_pct": limit, "rule": NON_TEXT_RULE}


def _operating_rows(base_rows: list[dict], arm_points: dict[str, list[dict]], metric: str, target_value: float, match: str,
                    reference: str) -> list[dict]:
    """The table at the operating point: base (if any), then each arm read at the target."""
    op_rows = base_rows + [operating_row(name, points, target_value, match) for name, points in arm_points.items()]
    _add_relative(op_rows, reference)
    for row in op_rows:
        if row["label"] != BASE_LABEL and row["mismatch"] and match == "nearest":
            row["note"] = row["note"] or (f"{metrics()[metric][0]} {row['x']:.4g} vs target {target_value:.4g} "
                                          f"({100 * row['mismatch'] / target_value:+.1f} %)" if target_value else None)
    return op_rows


def _lambda_one_rows(base_rows: list[dict], arm_points: dict[str, list[dict]], reference: str,
                     warnings: list[str]) -> tuple[list[dict], list[str]]:
    """(the table at λ = 1, the arms without a λ = 1 point)."""
    one_rows = [dict(row) for row in base_rows]
    missing = []
    for name, points in arm_points.items():
        point = _at_lambda(points, 1.0)
        if point is None:
            missing.append(name)
        else:
            row = _row_from_point(name, point)
            if not row["admissible"]:
                row["note"] = (f"not admissible: {row['values']['non_text_pct']:.1f} % of its generations are not text; "
                               "its toxicity is not comparable")
            one_rows.append(row)
    _add_relative(one_rows, reference)
    if missing:
        warnings.append(f"no λ = 1 point in {', '.join(missing)}: the λ = 1 table leaves {'it' if len(missing) == 1 else 'them'} out")
    return one_rows, missing


__all__ = ["ArmPoint", "FRONTIER_PLOT", "FRONTIER_SUMMARY", "frontier_results", "lambda_from_record", "metrics", "interpolation_weight",
           "operating_row", "pareto_flags", "parse_arm", "reading_points", "relative_change_interval"]
