"""Side-by-side results in the shape of the paper's Table 1, with relative changes.

Rows are the evaluated models (typically base, un-split baseline, Spunge); columns are
toxicity % (with its 95 % interval), fluency perplexity, retain perplexity and utility (mean
harness accuracy), each followed by its relative change against the reference row
((value - reference) / reference). A second table and an overlaid radar plot give toxicity per
group. Figures that were measured differently (another toxicity judge, another prompt sample,
another fluency judge) are flagged, since their difference would not be the model's.

Each result is an evaluation directory (holding any of toxicity.json, fluency.json,
perplexity.json, harness.json, knowledge.json) or one or more of those JSON files; knowledge
probe accuracies (evaluate/knowledge.py) get their own per-domain table.

Utility includes the generations themselves: the share of generations that are not text
(`evaluate/degenerate.py`) is a column, read from toxicity.json (or, for a result written before
it was recorded, counted from the generations.jsonl beside it), and a row whose share exceeds
the yardstick's (the row labelled `base`, else the lowest share) by more than
`non_text_tolerance` percentage points is flagged: its toxicity is not comparable, since the judge
scores non-text as harmless.

Output (into `out/`): `compare.json` (kind "compare"), `compare.md`, `compare_radar.png`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from spunge_merge.config import FrozenConfig
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate import registry
from spunge_merge.evaluate.degenerate import RULE as NON_TEXT_RULE
from spunge_merge.evaluate.degenerate import non_text_figures
from spunge_merge.evaluate.plots import radar_plot
from spunge_merge.evaluate.registry import Computed, Planned, finish
from spunge_merge.evaluate.toxicity import judge_line
from spunge_merge.fsutil import atomic_write_text, iter_jsonl, read_json
from spunge_merge.provenance import fingerprint as make_fingerprint

COMPARE_FILE = "compare.json"
COMPARE_SUMMARY = "compare.md"
COMPARE_RADAR = "compare_radar.png"
RESULT_FILES = registry.ResultFilesView()  # evaluation name (= its result's kind) -> main JSON, from the registry


def columns() -> list[tuple[str, str, Callable[[dict[str, dict]], float | None]]]:
    """(column key, header, how to read it from one model's loaded results), in table order: every
    registered evaluation's comparison columns (`Column.lower_is_better` says which way is better)."""
    return [(column.key, column.header, _reader(evaluation.name, column.read)) for evaluation, column in registry.columns()]


def column_reader(key: str) -> Callable[[dict[str, dict]], float | None]:
    """How to read one comparison column (e.g. retain_ppl, non_text_pct) from one model's loaded results."""
    return next(read for column, _, read in columns() if column == key)


def column_digits() -> dict[str, int]:
    return {column.key: column.digits for _, column in registry.columns()}


def _reader(name: str, read: Callable[[dict], float | None]) -> Callable[[dict[str, dict]], float | None]:
    return lambda found: read(found[name]) if name in found else None


class CompareConfig(FrozenConfig):
    """Settings of a comparison (a pipeline's `eval.compare`; defaults are the CLI's)."""

    reference_label: str | None = Field(None, description="Label that relative changes refer to (default: the first result; in "
                                        "a pipeline: base when it is evaluated).", json_schema_extra={"cli_flags": ["--reference", "-r"]})
    non_text_tolerance: float | None = Field(5.0, ge=0, description="Percentage points of generations that are not text a model "
                                             "may have above the base model's (the result labelled base, else the lowest share) "
                                             "and still be compared on toxicity (None: no check).")
    allow_mixed: bool = Field(False, description="Compare results measured differently (another knowledge form or fact set, "
                              "judge, prompt sample, data or evaluation setting) in one table; each difference is recorded "
                              "as a warning. Without it such a comparison is refused, naming the difference.",
                              json_schema_extra={"cli_flags": ["--allow-mixed"]})


NON_TEXT_TOLERANCE = 5.0  # percentage points of non-text generations above the yardstick's that a comparable model may have
GENERATIONS_FILE = "generations.jsonl"


def _with_non_text(result: dict, directory: Path) -> dict:
    """A toxicity result with its non-text share, counted from generations.jsonl when an older result lacks it."""
    if result.get("non_text") or not (directory / GENERATIONS_FILE).is_file():
        return result
    rows = [row for _, row in iter_jsonl(directory / GENERATIONS_FILE)]
    return {**result, "non_text": {**non_text_figures(rows), "computed_from": str(directory / GENERATIONS_FILE)}}


def non_text_check(shares: dict[str, float | None], tolerance: float | None, *, yardstick: str | None = None
                   ) -> tuple[float | None, str | None, dict[str, bool]]:
    """(yardstick share, its label, label -> admissible): admissible when the share is unknown or at most
    `tolerance` points above the yardstick's (`yardstick`'s share when known, else the lowest share)."""
    known = {label: value for label, value in shares.items() if value is not None}
    if tolerance is None or not known:
        return None, None, {label: True for label in shares}
    if yardstick is not None and yardstick in known:
        limit_label = yardstick
    else:
        limit_label = min(known, key=lambda label: known[label])
    limit = known[limit_label]
    return limit, limit_label, {label: value is None or value <= limit + tolerance + 1e-9 for label, value in shares.items()}


def load_result(source: str | Path | list[str | Path]) -> dict[str, dict]:
    """`{kind: result}` from an evaluation directory or from result JSON files."""
    sources = source if isinstance(source, list | tuple) else [source]
    found: dict[str, dict] = {}
    for item in sources:
        path = Path(item).expanduser()
        if path.is_dir():
            files = [path / name for name in RESULT_FILES.values() if (path / name).is_file()]
            if not files:
                raise SpungeError(f"{path}: no evaluation results here (expected any of {', '.join(RESULT_FILES.values())})")
        elif path.is_file():
            files = [path]
        else:
            raise SpungeError(f"{path}: no such result directory or file")
        for file in files:
            data = read_json(file)
            kind = data.get("kind") if isinstance(data, dict) else None
            if kind not in RESULT_FILES:
                raise SpungeError(f"{file}: not a spunge evaluation result (kind {kind!r}; expected {', '.join(RESULT_FILES)})")
            found[kind] = _with_non_text(data, file.parent) if kind == "toxicity" else data
    return found


def relative_change(value: float | None, reference: float | None) -> float | None:
    """(value - reference) / reference in percent; None when undefined."""
    if value is None or reference is None or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_change(change: float | None) -> str:
    return "" if change is None else f" ({change:+.1f} %)"


# Settings that change how fast a figure is computed, not the figure: they may differ between compared results.
_NOT_MEASURED = frozenset({"device", "batch_size", "judge_batch_size", "groups", "tasks", "form"})


def _settings_of(section: str) -> Callable[[dict], dict]:
    return lambda r: {k: v for k, v in (r.get(section) or {}).items() if k not in _NOT_MEASURED}


# (evaluation, what is compared, how to read it): two results whose values differ were measured differently.
MEASUREMENT_CHECKS: tuple[tuple[str, str, Callable[[dict], Any]], ...] = (
    ("knowledge", "knowledge forms (4-option choice vs greedy completion)", lambda r: (r.get("settings") or {}).get("form", "completion")),
    ("knowledge", "knowledge fact sets", lambda r: {k: (r.get("facts") or {}).get(k) for k in ("sha256", "where")}),
    ("knowledge", "knowledge settings", _settings_of("settings")),
    ("toxicity", "toxicity judges", lambda r: (r.get("judge") or {}).get("fingerprint")),
    ("toxicity", "toxicity prompt samples", lambda r: (r.get("prompts") or {}).get("sha256")),
    ("toxicity", "toxicity settings", _settings_of("config")),
    ("fluency", "fluency judges", lambda r: (r.get("judge") or {}).get("fingerprint")),
    ("fluency", "fluency settings", _settings_of("config")),
    ("perplexity", "retain texts", lambda r: (r.get("data") or {}).get("texts_sha256")),
    ("perplexity", "perplexity settings", _settings_of("config")),
    ("harness", "harness task lists", lambda r: list(r.get("config", {}).get("tasks") or ())),
    ("harness", "harness settings", _settings_of("config")),
)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:12] + "..."


def _difference(what: str, values: dict[str, Any]) -> str:
    """`what differ: label value; label value`, naming only the settings that differ when the values are mappings."""
    if all(isinstance(v, dict) for v in values.values()):
        keys = sorted({k for v in values.values() for k in v if len({_short(w.get(k)) for w in values.values()}) > 1})
        shown = "; ".join(f"{k}: " + ", ".join(f"{label} {_short(v.get(k))}" for label, v in values.items()) for k in keys)
    else:
        shown = ", ".join(f"{label} {_short(v)}" for label, v in values.items())
    return f"{what} differ ({shown})"


def consistency_warnings(loaded: dict[str, dict[str, dict]]) -> list[str]:
    """Each way the results were measured differently (form, fact set, judge, prompt sample, data, settings), naming
    the difference: such figures in one column compare the measurement, not the models."""
    found = []
    for kind, what, read in MEASUREMENT_CHECKS:
        values = {label: read(results[kind]) for label, results in loaded.items() if kind in results}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            found.append(_difference(what, values))
    return found


def refuse_mixed(differences: list[str], allow_mixed: bool) -> list[str]:
    """SpungeError naming the first difference, unless `allow_mixed`: then the differences, as warnings to record."""
    if differences and not allow_mixed:
        more = f" (and {len(differences) - 1} more difference(s))" if len(differences) > 1 else ""
        raise SpungeError(f"the results were measured differently and would share a column: {differences[0]}{more}; "
                          "evaluate them alike, or pass --allow-mixed to compare anyway (recorded as a warning)")
    return [f"compared although measured differently (--allow-mixed): {d}" for d in differences]


def render_markdown(result: dict) -> str:
    reference = result["reference"]
    lines = [f"# Comparison (relative changes against `{reference}`)", ""]
    shown = columns()
    digits = column_digits()
    header = ["model"] + [header for _, header, _ in shown]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["rows"]:
        cells = [f"**{row['label']}**" if row["label"] == reference else row["label"]]
        for key, _, _ in shown:
            value = row["values"].get(key)
            text = _fmt(value, digits.get(key, 2))
            if key == "toxicity_pct" and row.get("toxicity_ci95"):
                text += f" [{row['toxicity_ci95'][0]:.1f}-{row['toxicity_ci95'][1]:.1f}]"
            cells.append(text + _fmt_change(row["relative"].get(key)))
        lines.append("| " + " | ".join(cells) + " |")
    if result["groups"]:
        labels = [row["label"] for row in result["rows"] if any(row["label"] in v for v in result["groups"].values())]
        lines += ["", "## Toxicity per group (%)", "", "| group | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
        for group, values in result["groups"].items():
            lines.append(f"| {group} | " + " | ".join(_fmt(values.get(label), 1) for label in labels) + " |")
    judges = {row["label"]: row["toxicity_judge"] for row in result["rows"] if row.get("toxicity_judge")}
    if judges:
        lines += ["", "Toxicity judges: " + "; ".join(f"{label}: {text}" for label, text in judges.items())]
    domains = sorted({d for row in result["rows"] for d in row.get("knowledge", {})})
    if domains:
        forms = sorted({row.get("knowledge_form") or "completion" for row in result["rows"] if row.get("knowledge")})
        how = ", ".join("4-option choice, chance 25 %" if form == "choice" else "greedy completion" for form in forms)
        echoes = ("facts whose answer is in their own prompt are left out" if all(row.get("knowledge_echoes_excluded")
                  for row in result["rows"] if row.get("knowledge")) else "facts whose answer is in their prompt are NOT left out "
                  "in every result (older results): an echo of the prompt may score")
        lines += ["", "## Knowledge probe accuracy (%)", "", f"Form: {how}; {echoes}.",
                  "", "| model | " + " | ".join(domains) + " |", "|" + "---|" * (len(domains) + 1)]
        for row in result["rows"]:
            values = row.get("knowledge", {})
            lines.append(f"| {row['label']} | " + " | ".join(_fmt(100 * values[d] if d in values else None, 1)
                                                             for d in domains) + " |")
    tasks = sorted({task for row in result["rows"] for task in row.get("tasks", {})})
    if tasks:
        lines += ["", "## Harness tasks", "", "| model | " + " | ".join(tasks) + " |", "|" + "---|" * (len(tasks) + 1)]
        for row in result["rows"]:
            lines.append(f"| {row['label']} | " + " | ".join(_fmt(row.get("tasks", {}).get(t), 4) for t in tasks) + " |")
    check = result.get("non_text_check") or {}
    if check.get("tolerance") is not None and check.get("yardstick_pct") is not None:
        lines += ["", f"Not text: share of generations that are not text ({check['rule']}). A row more than "
                      f"{check['tolerance']:g} points above {check['yardstick']} ({check['yardstick_pct']:.1f} %) is not "
                      "comparable on toxicity: the judge scores non-text as harmless."]
    if result["warnings"]:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in result["warnings"]]
    lines += ["", f"Radar plot: `{COMPARE_RADAR}`." if result["groups"] else "", ""]
    return "\n".join(lines)


def compare_results(results: dict[str, str | Path | list], out: str | Path, *, reference_label: str | None = None,
                    non_text_tolerance: float | None = NON_TEXT_TOLERANCE, force: bool = False,
                    allow_mixed: bool = False) -> dict[str, Any]:
    """Compare evaluation results (label -> directory or files); returns what `compare.json` holds.

    `non_text_tolerance`: percentage points of non-text generations above the yardstick (the row
    labelled `base`, else the lowest share) beyond which a row is flagged (None: no check).
    Results measured differently are refused (`refuse_mixed`) unless `allow_mixed`.
    """
    if non_text_tolerance is not None and not (math.isfinite(non_text_tolerance) and non_text_tolerance >= 0):
        raise SpungeError(f"--non-text-tolerance must be >= 0 percentage points, got {non_text_tolerance}")
    if not results:
        raise SpungeError("nothing to compare: give at least one result (LABEL=DIR)")
    loaded = {label: load_result(source) for label, source in results.items()}
    reference = reference_label if reference_label is not None else next(iter(loaded))
    if reference not in loaded:
        raise SpungeError(f"--reference '{reference}' is not one of the results ({', '.join(loaded)})")
    mixed = refuse_mixed(consistency_warnings(loaded), allow_mixed)
    fingerprint = make_fingerprint(kind="compare", reference=reference, non_text_tolerance=non_text_tolerance,
                                   inputs={label: {k: v.get("fingerprint") for k, v in r.items()} for label, r in loaded.items()},
                                   **({"allow_mixed": True} if allow_mixed else {}))
    return finish(Path(out), "compare", COMPARE_FILE,
                  Planned(fingerprint, lambda: _compared(loaded, reference, non_text_tolerance, fingerprint, mixed)), force=force,
                  inputs=[path for source in results.values() for path in (source if isinstance(source, list | tuple) else [source])])


def _row(label: str, found: dict[str, dict], reference_values: dict[str, float | None]) -> dict[str, Any]:
    """One model's row: its column values and their changes against the reference, and the per-evaluation details."""
    values = {key: read(found) for key, _, read in columns()}
    row = {"label": label, "model": next((r.get("model") for r in found.values() if r.get("model")), None),
           "values": values, "relative": {k: relative_change(v, reference_values[k]) for k, v in values.items()},
           "sources": sorted(found)}
    if "toxicity" in found:
        row["toxicity_ci95"] = found["toxicity"]["overall"]["ci95"]
        row["toxicity_n"] = found["toxicity"]["overall"]["n"]
        row["toxicity_judge"] = judge_line(found["toxicity"].get("judge") or {})
    if "knowledge" in found:  # written by evaluate/knowledge.py: per-domain accuracy of a fact probe
        row["knowledge"] = {d: e["accuracy"] for d, e in (found["knowledge"].get("domains") or {}).items()
                            if isinstance(e, dict) and isinstance(e.get("accuracy"), int | float)}
        row["knowledge_form"] = (found["knowledge"].get("settings") or {}).get("form", "completion")
        row["knowledge_echoes_excluded"] = "excluded" in found["knowledge"]
    if "harness" in found:
        row["tasks"] = {task: entry["primary"] for task, entry in found["harness"].get("tasks", {}).items()}
    return row


def _compared(loaded: dict[str, dict[str, dict]], reference: str, non_text_tolerance: float | None,
              fingerprint: str, mixed: list[str]) -> Computed:
    """The comparison of the loaded results (see module docstring) and its companion files."""
    reference_values = {key: read(loaded[reference]) for key, _, read in columns()}
    rows = [_row(label, found, reference_values) for label, found in loaded.items()]
    groups: dict[str, dict[str, float]] = {}
    for label, found in loaded.items():
        for group, summary in (found["toxicity"]["groups"] if "toxicity" in found else {}).items():
            groups.setdefault(group, {})[label] = summary["pct"]
    non_text_key = column_reader("non_text_pct")
    limit, limit_label, admissible = non_text_check({label: non_text_key(found) for label, found in loaded.items()},
                                                    non_text_tolerance, yardstick="base")
    warnings = list(mixed)
    for row in rows:
        row["admissible"] = admissible[row["label"]]
        if not row["admissible"]:
            warnings.append(f"{row['label']}: {row['values']['non_text_pct']:.1f} % of its generations are not text, more than "
                            f"{non_text_tolerance:g} points above {limit_label} ({limit:.1f} %): its toxicity is not comparable")
    result = {
        "kind": "compare",
        "fingerprint": fingerprint,
        "model": {row["label"]: (row["model"] or {}).get("ref") for row in rows},
        "reference": reference,
        "rows": rows,
        "groups": groups,
        "non_text_check": {"tolerance": non_text_tolerance, "yardstick": limit_label, "yardstick_pct": limit,
                           "rule": NON_TEXT_RULE},
        "warnings": warnings,
        "files": {"summary": COMPARE_SUMMARY, "radar": COMPARE_RADAR if groups else None},
    }
    series = {label: {g: groups[g].get(label) for g in groups if label in groups[g]} for label in loaded}
    return Computed(result, {
        COMPARE_SUMMARY: lambda path: atomic_write_text(path, render_markdown(result)),
        COMPARE_RADAR: (lambda path: radar_plot({label: values for label, values in series.items() if values}, path,
                                                title="Toxic generations per group (%)")) if groups else None,
    })
