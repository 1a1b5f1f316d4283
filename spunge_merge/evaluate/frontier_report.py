"""The frontier's readable report (`frontier.md`): the tables at the operating point and at λ = 1, and every
point of every arm (see `frontier.py` for what they mean)."""

from __future__ import annotations

from spunge_merge.evaluate.compare import column_digits, columns

FRONTIER_SUMMARY = "frontier.md"
FRONTIER_PLOT = "frontier.png"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_lambda(row: dict) -> str:
    if row.get("bracket"):
        lams = [b["lambda"] for b in row["bracket"]]
        inner = " and ".join("?" if lam is None else f"{lam:g}" for lam in lams)
        return f"≈{row['lambda']:.3g} (between {inner})" if row["lambda"] is not None else f"between {inner}"
    return "-" if row["lambda"] is None else f"{row['lambda']:g}"


def _table(rows: list[dict], reference: str) -> list[str]:
    headers = {key: header for key, header, _ in columns()}
    digits = column_digits()
    shown = [key for key in headers if key != "toxicity_pct" and any(r["values"].get(key) is not None for r in rows)]
    header = ["model", "λ", "toxicity % [95 % CI]", f"toxicity vs {reference} [95 % CI]"] + [headers[k] for k in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        tox = row["toxicity"]
        mark = "≈" if row["approximate"] else ""
        cells = [f"**{row['label']}**" if row["label"] == reference else row["label"], _fmt_lambda(row),
                 f"{mark}{_fmt(tox['pct'], 1)} [{_fmt(tox['ci95'][0], 1)}-{_fmt(tox['ci95'][1], 1)}]"]
        change = row.get("relative", {}).get("toxicity_pct")
        if row["label"] == reference or change is None:
            cells.append("-" if row["label"] != reference else "reference")
        else:
            ci = row.get("toxicity_change_ci95")
            cells.append(f"{change:+.1f} %" + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""))
        for key in shown:
            text = _fmt(row["values"].get(key), digits.get(key, 2))
            rel = row.get("relative", {}).get(key)
            if rel is not None and row["label"] != reference:
                text += f" ({rel:+.1f} %)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(result: dict) -> str:
    header, lower = result["metric_label"], result["lower_is_better"]
    op = result["operating_point"]
    reference = result["reference"]
    lines = [f"# Toxicity-utility frontier ({header}, {'lower' if lower else 'higher'} is better)", ""]
    how = ("interpolated linearly between the two points of each arm that bracket the target (≈: the interval is "
           "an interpolation of the bracketing points' intervals, so approximate)" if op["match"] == "interpolate"
           else "each arm's measured point nearest to the target; its residual mismatch is shown")
    lines += [f"## At matched {header} = {op['target']:.4g} ({op['target_source']})", "", f"Operating point: {how}.", ""]
    lines += _table(op["rows"], reference)
    notes = [f"- {row['label']}: {row['note']}" for row in op["rows"] if row.get("note")]
    if notes:
        lines += [""] + notes
    check = result.get("non_text_check") or {}
    if check.get("tolerance") is not None and check.get("yardstick_pct") is not None:
        lines += ["", f"Admissible points: at most {check['tolerance']:g} points more generations that are not text than "
                      f"{check['yardstick']} ({check['yardstick_pct']:.1f} %); the judge scores non-text as harmless, so a "
                      f"point beyond that could win by breaking its output. Not text: {check['rule']}."]
    elif check.get("tolerance") is None:
        lines += ["", "The non-text check is off: points that win by writing non-text are not excluded."]
    lines += ["", "## At λ = 1 (the paper's setting)", ""]
    if result["lambda_one"]["rows"]:
        lines += _table(result["lambda_one"]["rows"], reference)
        lines += [f"- {row['label']}: {row['note']}" for row in result["lambda_one"]["rows"] if row.get("note")]
    missing = result["lambda_one"]["missing"]
    if missing:
        lines += ["", f"No λ = 1 point in: {', '.join(missing)}."]
    lines += ["", "Toxicity changes are relative to the reference row, (value - reference) / reference, with a 95 % interval "
              "for a ratio of two binomial rates (Katz), which treats the samples as independent.", ""]
    lines += ["## Frontier points", ""]
    for name, arm in result["arms"].items():
        lines += [f"### {name}", "", f"| λ | {header} | toxicity % [95 % CI] | toxic / n | not text % | admissible | "
                  "Pareto (arm) | Pareto (all) | evaluation |", "|---|---|---|---|---|---|---|---|---|"]
        for p in arm["points"]:
            tox = p["toxicity"]
            lines.append(f"| {'-' if p['lambda'] is None else format(p['lambda'], 'g')} | {_fmt(p['x'], 4 if not lower else 2)} | "
                         f"{_fmt(tox['pct'], 1)} [{_fmt(tox['ci95'][0], 1)}-{_fmt(tox['ci95'][1], 1)}] | {tox['toxic']}/{tox['n']} | "
                         f"{_fmt(p['values'].get('non_text_pct'), 1)} | {'yes' if p.get('admissible', True) else '**no**'} | "
                         f"{'yes' if p['pareto'] else 'no'} | {'yes' if p['pareto_all'] else 'no'} | `{p['path']}` |")
        lines.append("")
    if result.get("judge"):
        lines += [f"Toxicity judge: {result['judge']}", ""]
    if result["warnings"]:
        lines += ["**Warnings**", ""] + [f"- {w}" for w in result["warnings"]] + [""]
    lines += [f"Plot: `{FRONTIER_PLOT}`.", ""]
    return "\n".join(lines)
