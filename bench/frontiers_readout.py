"""The frontier benchmark's read-out: Spunge against the baseline at matched utility, with honest intervals,
pooled over forget sets and per forget set, with cheap candidate predictors beside each set's verdict.

The rules (matched utility, the verdict, the bootstrap over (forget set, seed) units and facts, retain
perplexity as part of utility) are `spunge_merge.evaluate.matched`'s, shared with `spunge eval frontier`;
this module reads the driver's grid (`runs/frontiers/...`) into its units and writes the benchmark's summary.

Predictors, per forget set (a pair of domains), from what is stored without another model run:
- the subsets' size ratio: training rows of the larger domain over the smaller (the facts file);
- from any `bench/results/edit_interference/*/summary.json` that measured that (method, model, set) on a cell of
  the same facts file: the cosine and the sign agreement (share of changed entries whose signs agree) between the
  two domains' edits, the larger edit's norm over the smaller's, and each edit's selectivity (points of its own
  domain forgotten minus points of the other forgotten domain forgotten, alone, at that summary's λ), with the
  kept domains' loss beside it.
The embedding similarity of the subsets' texts needs an embedding model run: `bench/per_set.py` computes it, with
every study's sets side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from frontiers_domains import domain_lines, domain_readout  # bench/ is on sys.path (the driver's, the tests')
from frontiers_subsets import subset_comparisons, subset_lines

from spunge_merge.evaluate.matched import (  # noqa: F401 - the rules, re-exported for the bench and its tests
    MAX_FORGET_GAP,
    MAX_KEEP_GAP,
    TIE,
    Items,
    arm_curve,
    interpolate_at_keep,
    item_differences,
    mix_items,
    pick_matched_forgetting,
    plot_units,
    read_row,
    rows_by_set,
    set_name,
    unit_means,
    verdict,
)
from spunge_merge.evaluate.stats import signed_interval as _ci

INTERFERENCE = Path(__file__).resolve().parent / "results" / "edit_interference"


def _repo_relative(path) -> str:
    """A path as the repository names it (no machine's absolute path in a published summary)."""
    repo = Path(__file__).resolve().parents[1]
    path = Path(path)
    return str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)


# ------------------------------------------------------------------------------------------------
# Predictors


def size_ratio(facts: Path, pair: list[str]) -> dict[str, Any]:
    """Training rows of each forgotten domain and the larger over the smaller."""
    from spunge_merge.fsutil import iter_jsonl

    rows = dict.fromkeys(pair, 0)
    for _, row in iter_jsonl(facts):
        if row.get("part") == "train" and row["domain"] in rows:
            rows[row["domain"]] += 1
    return {"rows": rows, "ratio": larger_over_smaller(rows)}


def larger_over_smaller(rows: dict[str, int]) -> float:
    """Training rows of the largest subset over the smallest (inf where one has none)."""
    low = min(rows.values())
    return max(rows.values()) / low if low else math.inf


def edit_predictors(method: str, model: str, pair: list[str], folder: Path = INTERFERENCE, *,
                    facts_stem: str | None = None) -> dict[str, Any] | None:
    """Cosine, sign agreement and each edit's selectivity, averaged over the seeds an edit_interference summary holds
    for this (method, model, set), and, given `facts_stem`, for cells trained on that facts file (a cell whose
    training rows were capped has other edits than the whole file's); None where none was measured, and for a set
    of more than two domains (cos(A, B) is two edits' figure)."""
    from spunge_merge.fsutil import read_json

    if len(pair) != 2:
        return None
    first = next(((path, found) for path in sorted(folder.glob("*/summary.json"))
                  if _measures(found := read_json(path), method, model, pair, facts_stem)), None)
    if first is None:
        return None
    path, found = first
    rows = found["rows"]
    selectivity = {}
    for own in pair:
        other = next(d for d in pair if d != own)
        own_lost = [r["base"][own] - r["alone"][own][own] for r in rows]
        other_lost = [r["base"][other] - r["alone"][own][other] for r in rows]
        keep_lost = [r["base"]["keep"] - r["alone"][own]["keep"] for r in rows]
        selectivity[own] = {"own": _avg(own_lost), "other": _avg(other_lost), "keep": _avg(keep_lost),
                            "selectivity": _avg(own_lost) - _avg(other_lost)}
    return {"source": _repo_relative(path), "lambda": sorted({r["lambda"] for r in rows}), "seeds": len(rows),
            "cosine": _avg([r["geometry"]["cosine_a_b"] for r in rows]),
            "sign_agreement": 1.0 - _avg([r["geometry"]["sign_disagree"] for r in rows]), "selectivity": selectivity,
            "norm_ratio": _avg([max(g["norm_a"], g["norm_b"]) / min(g["norm_a"], g["norm_b"]) for g in (r["geometry"] for r in rows)
                                if "norm_a" in g and min(g["norm_a"], g["norm_b"]) > 0])}


def _measures(summary: dict, method: str, model: str, pair: list[str], facts_stem: str | None) -> bool:
    """Whether an edit_interference summary measured this (method, model, forget set), on a cell of that facts file
    where one is named (a cell is `<runs>/<facts stem>/<model>/<method>/<a--b>`)."""
    same_facts = facts_stem is None or Path(summary.get("cell", "")).parts[-4:-3] == (facts_stem,)
    return (summary.get("method") == method and summary.get("model") == model and same_facts
            and sorted(summary.get("forget", [])) == sorted(pair))


def set_predictors(method: str, model: str, pair: list[str], facts: Path) -> dict[str, Any]:
    return {"size": size_ratio(facts, pair), "edits": edit_predictors(method, model, pair, facts_stem=facts.stem)}


def _avg(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# Reading finished evaluations


def collect(plan: dict, cells: list, settings, cell_dir) -> dict[tuple[str, str, str], list[dict]]:
    """{(task, method, model): [unit]} with one unit per (pair, seed) whose every planned model is evaluated:
    {pair, seed, facts, fallback, excluded, points: {label: {"keep": (v, items), "forget": (v, items), "ppl": v}}}.
    λ points added beyond the plan's sweep (the driver's refinement) are read too."""
    from grid_points import label, seed_arms

    from spunge_merge.evaluate.knowledge import KNOWLEDGE_FILE
    from spunge_merge.evaluate.matched import arm_and_lambda, read_point

    def finished(d: Path) -> bool:
        return (d / KNOWLEDGE_FILE).is_file() and (d / "perplexity.json").is_file()

    rows: dict[tuple[str, str, str], list[dict]] = {}
    for cell in cells:
        forget = list(cell.pair)
        sweep = settings.for_method(cell.method, cell.model)
        if not sweep.merges:  # a slice of the merges (--only merge=) that leaves this method none
            continue
        wanted = seed_arms(sweep.lambdas, sweep.baseline_lambdas, sweep.merges, plan["merges"])
        arms = {arm for arm, _ in wanted}
        planned = [label(arm, x) for arm, x in wanted]
        root = cell_dir(plan, cell)
        for seed in settings.seeds:
            grid = root / "grid" / str(seed) / "eval"
            dirs = {"base": root / "grid" / "base", **{name: grid / name for name in planned}}
            if not all(finished(d) for d in dirs.values()):
                continue
            for extra in sorted(grid.iterdir()):
                refined = extra.is_dir() and extra.name not in dirs and "-lam" in extra.name
                if refined and arm_and_lambda(extra.name)[0] in arms and finished(extra):
                    dirs[extra.name] = extra
            points = {name: read_point(d, forget) for name, d in dirs.items()}
            rows.setdefault((cell.task, cell.method, cell.model), []).append(
                {"pair": list(cell.pair), "set": cell.set_name, "subsets": [list(g) for g in cell.subsets],
                 "seed": seed, "facts": str(cell.facts), "fallback": cell.fallback,
                 "excluded": points["base"]["excluded"], "points": points})
    return rows


# ------------------------------------------------------------------------------------------------
# Output


def _forgetting(entry: dict) -> str:
    """Δ keep at matched forgetting, marked where some arm never forgot enough (its most-forgetting point stood in)."""
    missing = entry["not_reached"]
    return _ci(entry) + (f" (forget ≤ target not reached by {missing} unit-arm{'s' if missing > 1 else ''})" if missing else "")


def _predictor_cells(predictors: dict) -> list[str]:
    size = predictors["size"]
    cells = [" / ".join(f"{d} {n}" for d, n in size["rows"].items()) + f" ({size['ratio']:.2f}×)"]
    edits = predictors.get("edits")
    if not edits:
        return cells + ["–", "–", "–"]
    lam = ", ".join(f"{x:g}" for x in edits["lambda"])
    cells += [f"{edits['cosine']:.3f}", f"{100 * edits['sign_agreement']:.1f} %",
              "; ".join(f"{d}: {e['own']:.0f} own − {e['other']:.0f} other = {e['selectivity']:+.0f} (keep −{e['keep']:.1f})"
                        for d, e in edits["selectivity"].items()) + f" at λ {lam}"]
    return cells


def render(summary: dict) -> str:
    readout = summary["readout"]
    lines = ["# Where does splitting pay? Spunge vs. the un-split baseline on knowledge frontiers", "",
             "| task | method | model | best Spunge merge | Δ forget at matched utility | verdict | units | not reached "
             "(Spunge/baseline) | Δ forget at λ = 1 | Δ keep at λ = 1 | Δ keep at matched forgetting |",
             "|---|---|---|---|---|---|---:|---|---|---|---|"]
    for row in summary["rows"]:
        best = row["merges"][row["best"]]
        m, one = best["matched_utility"], best["lambda_1"]
        lines.append(f"| {row['task']} | {row['method']} | {row['model']}{' †' if row['fallback_facts'] else ''} | {row['best']} | "
                     f"{_ci(m)} | **{m['verdict']}** | {row['units']} ({len(row['pairs'])} pair{'s' if len(row['pairs']) > 1 else ''}"
                     f" × {row['seeds']} seeds) | {m['spunge_not_reached']}/{m['baseline_not_reached']} | "
                     f"{_ci(one['forget']) if 'forget' in one else '–'} | {_ci(one['keep']) if 'keep' in one else '–'} | "
                     f"{_forgetting(best['matched_forgetting_keep'])} |")
    if any(row["fallback_facts"] for row in summary["rows"]):
        lines += ["", f"† scored on the fallback facts file ({Path(summary['fallback_facts']).name}), not the model's own."]
    lines += _anchored_lines(summary)
    lines += subset_lines(summary)  # a forget set split two ways: the finer Spunge arm against the coarser
    lines += ["", "## Per forget set, with candidate predictors", "",
              "The same read-out on each forget set's units alone (pooled above). Predictors: training rows of each "
              "forgotten domain (larger / smaller); from `bench/results/edit_interference/` where the set was measured "
              "there: cosine and sign agreement between the two domains' edits, and each edit alone's selectivity (points of "
              "its own domain forgotten minus points of the other forgotten domain, with the kept domains' loss).", "",
              "| method | model | forget set | best merge | Δ forget at matched utility | verdict | units | rows (ratio) | "
              "cos(A, B) | sign agreement | selectivity alone | frontier |", "|---|---|---|---|---|---|---:|---|---:|---:|---|---|"]
    for row in summary["rows"]:
        for name, entry in row["sets"].items():
            m = entry["merges"][entry["best"]]["matched_utility"]
            lines.append(f"| {row['method']} | {row['model']} | {name} | {entry['best']} | {_ci(m)} | **{m['verdict']}** | "
                         f"{entry['units']} | " + " | ".join(_predictor_cells(entry["predictors"])) + f" | `{entry['plot']}` |")
    lines += ["", f"Matched utility: each arm's forget avg at keep avg = base − {readout['keep_drop']:g} points (interpolated "
              "along λ; base = λ 0). A point whose retain perplexity exceeds the base's by more than "
              f"{_margin(readout)} is not a candidate (its utility is gone whatever its keep says). A unit counts as not "
              "reached where its arm never gets down to that keep avg, or "
              f"where the two λ points around it are more than {MAX_KEEP_GAP:g} points of keep avg (unless both forget the "
              f"same) or {MAX_FORGET_GAP:g} points of forget avg apart; a merge with such a unit has no verdict. "
              "Spunge − baseline in points (negative: Spunge forgets more at the same utility), 95 % "
              "hierarchical bootstrap over (pair, seed) units and held-out facts. Verdict only with ≥ "
              f"{readout['min_seeds']} seeds: helps / hurts when the interval excludes 0, level when it lies within ± "
              f"{readout['level_margin']:g} points, else no verdict. The best merge is the one with the lowest mean "
              "(chosen after looking: its interval is optimistic when several merges are close). Secondary: at λ = 1 "
              f"for both arms, and at matched forgetting (each arm's best keep avg among forget avg ≤ "
              f"{readout['forget_at_most']:g} %; Δ keep, higher is better; where an arm's sweep never forgets that much, "
              "its most-forgetting point stands in, the row says so and gives no verdict)."]
    for row in summary["rows"]:
        lines += ["", f"## {row['task']} · {row['method']} · {row['model']}", "",
                  f"Pairs: {', '.join(row['pairs'])}; seeds: {row['seeds']}. Base: keep avg {row['base_keep']:.1f} %, "
                  f"forget avg {row['base_forget']:.1f} %. {_facts_line(row)} Frontier: `{row['plot']}`.", ""]
        if row["why"]:
            lines += [f"Nothing helps; {row['why']}.", ""]
        lines += ["| Spunge merge | Δ forget at matched utility | verdict | Spunge λ there (per unit) | baseline λ there | "
                  "Δ forget at λ = 1 | Δ keep at λ = 1 | Δ keep at matched forgetting |", "|---|---|---|---|---|---|---|---|"]
        for merge, entry in row["merges"].items():
            m, one = entry["matched_utility"], entry["lambda_1"]
            lines.append(f"| {merge} | {_ci(m)} | {m['verdict']} | {', '.join(f'{x:g}' for x in m['spunge_lambda'])} | "
                         f"{', '.join(f'{x:g}' for x in m['baseline_lambda'])} | "
                         f"{_ci(one['forget']) + ' ' + one['forget']['verdict'] if 'forget' in one else '–'} | "
                         f"{_ci(one['keep']) + ' ' + one['keep']['verdict'] if 'keep' in one else '–'} | "
                         f"{_forgetting(entry['matched_forgetting_keep'])} {entry['matched_forgetting_keep']['verdict']} |")
        lines += ["", *domain_lines(row)]
        lines += ["Points (mean over units; forget avg / keep avg / retain PPL):", "",
                  "| model | forget avg % | keep avg % | retain PPL |", "|---|---:|---:|---:|"]
        for name, p in row["points"].items():
            lines.append(f"| {name} | {p['forget']:.1f} | {p['keep']:.1f} | {'–' if p['ppl'] is None else format(p['ppl'], '.2f')} |")
    lines += ["", f"Wall time of this invocation: {summary['seconds']:.0f} s ({summary['date']}, OMP_NUM_THREADS=1, "
              "2-core shared machine).", "", summary["plan_markdown"].replace("# Frontier", "## Frontier")]
    return "\n".join(lines) + "\n"


def _anchored_lines(summary: dict) -> list[str]:
    """The table of every Spunge merge against each anchored baseline (pooled, then per forget set), the fair
    comparison first (Spunge + anchor against baseline + anchor), then the anchor's own effect on the baseline."""
    rows = [row for row in summary["rows"] if row.get("against_anchored")]
    if not rows:
        return []
    lines = ["", "## Against the anchored baseline", "",
             "A data-dependent merge (`anchored_ls`) holds the base where the retain data's inputs act; the un-split "
             "baseline's one edit anchored the same way (`baseline-<merge>`: same retain data, same settings, the baseline's "
             "λ sweep) is its fair comparison: Spunge + anchor against baseline + anchor (**fair** below). Every Spunge merge "
             "is read against it as against the plain baseline (the tables above), by the same rules; the last rows of each "
             "block give the anchor's own effect on the baseline (anchored baseline − plain baseline).", "",
             "| method | model | forget set | Spunge merge | against | Δ forget at matched utility | verdict | units | "
             "not reached (Spunge/baseline) |", "|---|---|---|---|---|---|---|---:|---|"]
    for row in rows:
        for arm, entry in row["against_anchored"].items():
            anchor = arm.removeprefix("baseline-")
            scopes = [("pooled", entry)] + list(entry["sets"].items())
            for merge in sorted(entry["merges"], key=lambda m: m != anchor):
                tag = f"{merge} (**fair**)" if merge == anchor else merge
                for scope, found in scopes:
                    m = found["merges"][merge]["matched_utility"]
                    lines.append(f"| {row['method']} | {row['model']} | {scope} | {tag} | {arm} | {_ci(m)} | **{m['verdict']}** | "
                                 f"{found['units']} | {m['spunge_not_reached']}/{m['baseline_not_reached']} |")
            effects = [("pooled", entry["anchor_on_baseline"]["pooled"], row["units"])] + [
                (name, m, row["sets"][name]["units"]) for name, m in entry["anchor_on_baseline"]["sets"].items()]
            for scope, m, units in effects:
                lines.append(f"| {row['method']} | {row['model']} | {scope} | {arm} (anchor alone) | baseline | {_ci(m)} | "
                             f"**{m['verdict']}** | {units} | {m['spunge_not_reached']}/{m['baseline_not_reached']} |")
    return lines


def _margin(readout: dict) -> str:
    margin = readout.get("retain_ppl_margin_pct")
    return "(not checked)" if margin is None else f"{margin:g} %"


def _facts_line(row: dict) -> str:
    """Facts left out as echo-answerable, and the size of one fact in points."""
    per_domain = row.get("facts_per_domain") or {}
    sizes = sorted(set(per_domain.values()))
    size = "" if not sizes else (f"One held-out fact is {100 / sizes[0]:.3g} points of its domain's accuracy "
                                 f"({sizes[0]} facts per domain)." if len(sizes) == 1 else
                                 f"One held-out fact is {100 / sizes[-1]:.3g}–{100 / sizes[0]:.3g} points of its domain's accuracy.")
    return f"Facts left out as echo-answerable (their answer is in their prompt): {row.get('excluded', 0)}. {size}"


def against_anchored(units: list[dict], merges: list[str], anchored: list[str], readout: dict) -> dict[str, dict]:
    """{`baseline-<merge>`: every Spunge merge against that anchored baseline, pooled and per forget set, and the anchor's
    own effect on the baseline (`baseline-<merge>` against the plain baseline)}: Spunge + anchor against baseline +
    anchor is the fair comparison for a data-dependent merge; both also stand against the plain baseline (the row itself)."""
    found = {}
    for merge in anchored:
        arm = f"baseline-{merge}"
        pooled, sets = rows_by_set(units, merges, readout, baseline=arm)
        alone, alone_sets = rows_by_set(units, [merge], readout, arm_of="baseline-{}".format)
        found[arm] = {**pooled, "sets": sets, "anchor_on_baseline": {
            "pooled": alone["merges"][merge]["matched_utility"],
            "sets": {name: entry["merges"][merge]["matched_utility"] for name, entry in alone_sets.items()}}}
    return found


def write_outputs(rows: dict, plan: dict, settings, out: Path, *, plan_markdown: str, seconds: float, quick: bool) -> dict:
    """summary.json, summary.md, one frontier PNG per row (pooled) and one per forget set under `out`; returns the summary."""
    import datetime

    from grid_points import anchored_merges

    from spunge_merge.fsutil import atomic_write_text, write_json

    summary_rows = []
    keep_drop = float(plan["readout"]["keep_drop"])
    for (task, method, model), units in rows.items():
        merges = settings.for_method(method, model).merges
        anchored = anchored_merges(merges, plan["merges"])
        arms = ["baseline"] + [f"baseline-{m}" for m in anchored] + [f"spunge-{m}" for m in merges]
        pooled, sets = rows_by_set(units, merges, plan["readout"])
        pooled["against_anchored"] = against_anchored(units, merges, anchored, plan["readout"])
        pooled["domains"] = domain_readout(units, merges, plan["readout"])  # the worst forgotten domain, each domain
        pooled["more_subsets"] = subset_comparisons(units, merges, plan["readout"])
        pooled["fallback_facts"] = any(u["fallback"] for u in units)
        pooled["excluded"] = max(u.get("excluded", 0) for u in units)
        pooled["facts_per_domain"] = units[0]["points"]["base"].get("facts_per_domain", {})
        pooled["points"] = unit_means(units)
        plot = f"frontier-{task}-{method}-{model}.png"
        plot_units(units, arms, f"{task} · {method} · {model}: every forget set pooled, {len(units)} units",
                   pooled["base_keep"] - keep_drop, out / plot)
        for name, entry in sets.items():
            members = [u for u in units if set_name(u) == name]
            entry["plot"] = f"frontier-{task}-{method}-{model}-{name.replace('+', '--')}.png"
            entry["predictors"] = set_predictors(method, model, members[0]["pair"], Path(members[0]["facts"]))
            plot_units(members, arms, f"{task} · {method} · {model} · forget set {name}: {len(members)} units",
                       entry["base_keep"] - keep_drop, out / entry["plot"])
        summary_rows.append({"task": task, "method": method, "model": model, "plot": plot, **pooled, "sets": sets})
    summary = {"quick": quick, "rows": summary_rows, "readout": plan["readout"], "fallback_facts": _repo_relative(plan["fallback_facts"])
               if plan.get("fallback_facts") else None,
               "settings": {"seeds": settings.seeds, "merges": {m: plan["merges"][m] for m in settings.merges},
                            "method_merges": settings.method_merges,
                            "lambdas": settings.lambdas, "baseline_lambdas": settings.baseline_lambdas,
                            "method_lambdas": settings.method_lambdas, "model_lambdas": settings.model_lambdas},
               "seconds": round(seconds, 1), "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "plan_markdown": plan_markdown}
    out.mkdir(parents=True, exist_ok=True)
    # as summary.json stores it (keys sorted), so that summary.md is what its JSON renders to, whatever the merges' order
    summary = json.loads(json.dumps(summary, default=str, sort_keys=True))
    write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", render(summary))
    return summary


def stored_predictors(results: Path, facts_dir: Path) -> str:
    """The predictors of every forget set a stored summary.json names, beside the verdict where that set is its row's
    only one (the stored summary keeps pooled rows, not units: a pooled row's per-set verdicts need its runs)."""
    from spunge_merge.fsutil import read_json

    summary = read_json(results / "summary.json")
    lines = ["# Candidate predictors of each measured forget set (from stored files only)", "",
             f"Read from `{_repo_relative(results / 'summary.json')}` (the rows), the facts files and "
             "`bench/results/edit_interference/`; no model was run. A verdict is shown where the set is its row's only "
             "forget set; a pooled row's per-set verdicts need its runs (`python bench/frontiers.py --readout-only` where "
             "they are): the pooled rows rebuilt per set, with every other study's sets, are in "
             "`bench/results/per-set/README.md` (`python bench/per_set.py`).", "",
             "| method | model | forget set | verdict (Δ forget at matched utility) | rows (ratio) | cos(A, B) | sign agreement | "
             "selectivity alone |", "|---|---|---|---|---|---:|---:|---|"]
    for row in summary["rows"]:
        best = row["merges"][row["best"]]["matched_utility"]
        for pair in row["pairs"]:
            domains = pair.split("+")
            facts = facts_dir / f"facts-{row['model']}.jsonl"
            cells = _predictor_cells(set_predictors(row["method"], row["model"], domains, facts))
            said = f"**{best['verdict']}** ({row['best']} {_ci(best)})" if len(row["pairs"]) == 1 else \
                f"pooled over {len(row['pairs'])} sets"
            lines.append(f"| {row['method']} | {row['model']} | {pair} | {said} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from spunge_merge.fsutil import atomic_write_text

    results = Path(__file__).resolve().parent / "results" / "frontiers"
    text = stored_predictors(results, Path(__file__).resolve().parent / "knowledge")
    atomic_write_text(results / "predictors.md", text)
    print(text)
