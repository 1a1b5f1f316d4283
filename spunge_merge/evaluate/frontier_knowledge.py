"""The knowledge frontier of evaluated models: does splitting pay on my facts? (`spunge eval frontier`, and
`spunge eval compare --arm` when the evaluations are knowledge probes, not toxicity.)

Forget avg (the forgotten domains' held-out facts) against keep avg (the kept domains') over λ and seeds,
read out by `matched.py`, the rules `bench/frontiers.py` uses: Spunge − baseline forget avg at matched
utility (keep = base − `keep_drop`, retain perplexity within its margin) with a 95 % hierarchical bootstrap
interval over seeds and facts and a verdict, at λ = 1, and keep at matched forgetting; a PNG.

Sources:
- a `spunge run` directory with a λ sweep (`merge.lambda` and `baseline.lambda` lists): one unit per seed
  (`seeds/<s>/`, or the run itself for one seed), its points that seed's `eval/<label>/` (`base`,
  `baseline-lam<λ>`, `spunge-lam<λ>`; a label without λ takes its model's recorded λ, else 1); the
  forgotten domains are the split's values (`split/`);
- arms of evaluation directories (`compare --base DIR --arm NAME=DIR,...`): one unit; the arm named
  `baseline` (else the first) is the baseline, every other arm is compared with it; `forget` names the
  forgotten domains.

Tables show only what was measured (retain perplexity only where perplexity.json exists) and state the size of
one held-out fact in points (with 8 facts per domain, one fact is 12.5 points of its domain's accuracy).
Output (into `out/`): `frontier.json` (kind "knowledge-frontier"), `frontier.md`, `frontier.png`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.frontier_arms import ArmPoint, lambda_from_record
from spunge_merge.evaluate.knowledge import KNOWLEDGE_FILE
from spunge_merge.evaluate.matched import (
    FrontierReadout,
    arm_and_lambda,
    as_readout,
    plot_units,
    point_label,
    read_point,
    read_row,
    unit_means,
)
from spunge_merge.evaluate.registry import Computed, Planned, finish
from spunge_merge.evaluate.stats import signed_interval as _ci
from spunge_merge.fsutil import atomic_write_text, read_json
from spunge_merge.provenance import fingerprint as make_fingerprint
from spunge_merge.provenance import read_provenance

FRONTIER_FILE, FRONTIER_SUMMARY, FRONTIER_PLOT = "frontier.json", "frontier.md", "frontier.png"
BASELINE, SPUNGE = "baseline", "spunge"


def has_knowledge(directory: Path) -> bool:
    return (Path(directory) / KNOWLEDGE_FILE).is_file()


def _recorded_lambda(eval_dir: Path) -> float | None:
    model = (read_json(eval_dir / KNOWLEDGE_FILE).get("model") or {})
    for candidate in (model.get("path"), model.get("ref")):
        if candidate and Path(candidate).expanduser().is_dir():
            lam, _ = lambda_from_record(read_provenance(Path(candidate).expanduser()))
            if lam is not None:
                return lam
    return None


def _named(role: str, eval_dir: Path, lam: float | None, warnings: list[str]) -> str:
    if lam is None:
        lam = _recorded_lambda(eval_dir)
    if lam is None:
        warnings.append(f"{eval_dir}: its model records no λ; taken as 1")
        lam = 1.0
    return point_label(role, lam)


def units_from_run(run_dir: Path, warnings: list[str]) -> tuple[list[dict], list[str]]:
    """(one unit per seed, the forgotten domains) of a `spunge run` directory."""
    from spunge_merge.data.loading import load_subsets

    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "split").is_dir():
        raise SpungeError(f"{run_dir}: not a `spunge run` directory (no split/)")
    forget = sorted(str(s.value) for s in load_subsets(run_dir / "split"))
    seeds = sorted((p for p in (run_dir / "seeds").iterdir() if p.is_dir()), key=lambda p: p.name) \
        if (run_dir / "seeds").is_dir() else [run_dir]
    units = []
    for seed_dir in seeds:
        evals = seed_dir / "eval"
        found = {p.name: p for p in sorted(evals.iterdir()) if has_knowledge(p)} if evals.is_dir() else {}
        if "base" not in found:
            raise SpungeError(f"{evals / 'base'}: no {KNOWLEDGE_FILE}; the frontier needs the base model evaluated "
                              "(eval.models: [base, baseline, spunge] and eval.knowledge in the pipeline)")
        read = [run_dir / "split", *found.values()]  # what the read-out reads: its output may be none of them
        points = {"base": read_point(found.pop("base"), forget)}
        for label, directory in found.items():
            role = label.split("-lam")[0]
            if role not in (BASELINE, SPUNGE):
                continue
            name = label if "-lam" in label else _named(role, directory, None, warnings)
            points[name] = read_point(directory, forget)
        units.append({"pair": forget, "seed": seed_dir.name if seed_dir != run_dir else "0", "points": points,
                      "excluded": points["base"]["excluded"], "source": str(seed_dir), "inputs": read})
    return units, forget


def unit_from_arms(arms: dict[str, list[ArmPoint]], base: Path, forget: list[str], warnings: list[str]) -> tuple[list[dict], str]:
    """(one unit whose arms are the given evaluation directories, the baseline arm's name)."""
    if not forget:
        raise SpungeError("--forget: name the forgotten domains (comma-separated) for a knowledge frontier")
    if base is None or not has_knowledge(base):
        raise SpungeError(f"--base {base}: needs the base model's {KNOWLEDGE_FILE} (λ 0 of every arm)")
    baseline = BASELINE if BASELINE in arms else next(iter(arms))
    points = {"base": read_point(Path(base), forget)}
    known = set(read_json(Path(base) / KNOWLEDGE_FILE)["domains"])
    if missing := [d for d in forget if d not in known]:
        raise SpungeError(f"--forget {','.join(forget)}: {', '.join(missing)} not among the evaluated domains ({', '.join(sorted(known))})")
    for name, sources in arms.items():
        for source in sources:
            if not has_knowledge(source.path):
                raise SpungeError(f"{source.path}: no {KNOWLEDGE_FILE} (the knowledge frontier's axes); run "
                                  f"`spunge eval knowledge --out {source.path}` first")
            points[_named(name, source.path, source.lam, warnings)] = read_point(source.path, forget)
    read = [Path(base), *(source.path for sources in arms.values() for source in sources)]
    return [{"pair": list(forget), "seed": "0", "points": points, "excluded": points["base"]["excluded"], "inputs": read}], baseline


def knowledge_frontier(units: list[dict], arms: list[str], baseline: str, out: str | Path, *,
                       readout: FrontierReadout | dict | None = None, warnings: list[str] | None = None,
                       force: bool = False) -> dict[str, Any]:
    """Read out `units` (see `matched.py`): every arm of `arms` against `baseline`; writes frontier.json/.md/.png."""
    readout = as_readout(readout or {})
    warnings = list(warnings or [])
    for unit in units:
        for arm in [baseline, *arms]:
            if not any(name != "base" and arm_and_lambda(name)[0] == arm for name in unit["points"]):
                raise SpungeError(f"{unit.get('source', 'the arms')}: no evaluated {arm} model; the frontier compares "
                                  f"{', '.join(arms)} with {baseline} over λ")
    fingerprint = make_fingerprint(kind="knowledge-frontier", readout=readout.model_dump(), baseline=baseline, arms=arms,
                                   units=[{"pair": u["pair"], "seed": u["seed"], "points": {
                                       n: [p["keep"][0], p["forget"][0], p["ppl"]] for n, p in sorted(u["points"].items())}}
                                       for u in units])

    def compute() -> Computed:
        row = read_row(units, arms, readout, arm_of=str, baseline=baseline) if arms else _curves_only(units)
        sizes = sorted({n for u in units for n in u["points"]["base"]["facts_per_domain"].values()})
        result = {"kind": "knowledge-frontier", "fingerprint": fingerprint, "readout": readout.model_dump(),
                  "forget": units[0]["pair"], "baseline": baseline, "arms": arms, "row": row,
                  "seeds": [u["seed"] for u in units], "points": unit_means(units),
                  "curves": {arm: {str(u["seed"]): _curve(u, arm) for u in units} for arm in [baseline, *arms]},
                  "facts_per_domain": sizes, "excluded": max(u["excluded"] for u in units),
                  "warnings": warnings, "files": {"summary": FRONTIER_SUMMARY, "plot": FRONTIER_PLOT}}
        title = f"forget {' + '.join(units[0]['pair'])}: {len(units)} seed{'s' if len(units) > 1 else ''}"
        return Computed(result, {FRONTIER_SUMMARY: lambda path: atomic_write_text(path, render(result)),
                                 FRONTIER_PLOT: lambda path: plot_units(units, [baseline, *arms], title,
                                                                        row["base_keep"] - readout.keep_drop, path)})

    return finish(Path(out), "knowledge-frontier", FRONTIER_FILE, Planned(fingerprint, compute), force=force,
                  inputs=[path for unit in units for path in unit.get("inputs", ())])


def _curves_only(units: list[dict]) -> dict[str, Any]:
    """One arm and nothing to compare it with: its points and curve, no verdict."""
    from spunge_merge.evaluate.matched import _mean

    return {"units": len(units), "seeds": len({u["seed"] for u in units}), "merges": {}, "no_utility_points": 0,
            "base_keep": _mean([u["points"]["base"]["keep"][0] for u in units]),
            "base_forget": _mean([u["points"]["base"]["forget"][0] for u in units])}


def _curve(unit: dict, arm: str) -> list[dict]:
    named = sorted((arm_and_lambda(n)[1], n) for n in unit["points"] if n != "base" and arm_and_lambda(n)[0] == arm)
    return [{"lambda": lam, "keep": unit["points"][n]["keep"][0], "forget": unit["points"][n]["forget"][0],
             "ppl": unit["points"][n]["ppl"]} for lam, n in named]


def fact_size_line(sizes: list[int], forget: list[str]) -> str:
    """One held-out fact's size in points, of a domain's accuracy and of the forget avg."""
    if not sizes:
        return ""
    one = 100 / sizes[0] if len(sizes) == 1 else None
    if one is None:
        return f"One held-out fact is {100 / sizes[-1]:.3g}–{100 / sizes[0]:.3g} points of its domain's accuracy."
    return (f"One held-out fact is {one:.3g} points of its domain's accuracy ({sizes[0]} facts per domain) and "
            f"{one / len(forget):.3g} points of the forget avg over {len(forget)} domains.")


def render(result: dict) -> str:
    row, readout, baseline = result["row"], result["readout"], result["baseline"]
    n_seeds = row["seeds"]
    lines = [f"# Knowledge frontier: forget {' + '.join(result['forget'])}", "",
             f"Seeds: {n_seeds}. Base: keep avg {row['base_keep']:.1f} %, forget avg {row['base_forget']:.1f} %. "
             + fact_size_line(result["facts_per_domain"], result["forget"]), "",
             f"## Each arm against {baseline} (Spunge − baseline, points; 95 % interval)", "",
             "| arm | Δ forget at matched utility | verdict | forget avg there (arm / baseline) | not reached (arm/baseline) | "
             "Δ forget at λ = 1 | Δ keep at λ = 1 | Δ keep at matched forgetting |", "|---|---|---|---|---|---|---|---|"]
    if not row["merges"]:
        lines.append(f"| {baseline} | – (one arm: nothing to compare it with; give a second --arm) | | | | | | |")
    for arm, entry in row["merges"].items():
        m, one, mf = entry["matched_utility"], entry["lambda_1"], entry["matched_forgetting_keep"]
        lines.append(f"| {arm} | {_ci(m)} | **{m['verdict']}** | {m['spunge_forget']:.1f} / {m['baseline_forget']:.1f} | "
                     f"{m['spunge_not_reached']}/{m['baseline_not_reached']} | "
                     f"{_ci(one['forget']) + ' ' + one['forget']['verdict'] if 'forget' in one else '–'} | "
                     f"{_ci(one['keep']) + ' ' + one['keep']['verdict'] if 'keep' in one else '–'} | "
                     f"{_ci(mf)} {mf['verdict']}" + (f" (forget ≤ {readout['forget_at_most']:g} % not reached by "
                                                     f"{mf['not_reached']})" if mf["not_reached"] else "") + " |")
    margin = readout["retain_ppl_margin_pct"]
    lines += ["", f"Matched utility: each arm's forget avg where keep avg = base − {readout['keep_drop']:g} points, "
              "interpolated along λ (the base is λ 0)"
              + (f"; a point whose retain perplexity exceeds the base's by more than {margin:g} % is not a candidate"
                 if margin is not None else "") + ". Negative: Spunge forgets more at the same utility. Verdict only "
              f"with ≥ {readout['min_seeds']} seeds: helps / hurts when the interval excludes 0, level within ± "
              f"{readout['level_margin']:g} points, else no verdict; an arm that does not reach the target keep (or "
              "crosses it between λ points too far apart) gives no verdict: add λ points. Matched forgetting: each arm's "
              f"best keep avg among points forgetting ≤ {readout['forget_at_most']:g} %."]
    if row["no_utility_points"]:
        lines += ["", f"Points left out for their retain perplexity: {row['no_utility_points']}."]
    lines += ["", f"Facts left out as echo-answerable (their answer is in their prompt): {result['excluded']}.", "",
              "## Points (mean over seeds)", ""]
    with_ppl = any(p["ppl"] is not None for p in result["points"].values())
    lines += ["| model | forget avg % | keep avg %" + (" | retain PPL" if with_ppl else "") + " |",
              "|---|---:|---:" + ("|---:" if with_ppl else "") + "|"]
    for name, p in result["points"].items():
        cells = [name, f"{p['forget']:.1f}", f"{p['keep']:.1f}"] + ([_ppl(p["ppl"])] if with_ppl else [])
        lines.append("| " + " | ".join(cells) + " |")
    if result["warnings"]:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in result["warnings"]]
    lines += ["", f"Plot: `{FRONTIER_PLOT}`.", ""]
    return "\n".join(lines)


def _ppl(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"
