"""The ToxiGen benchmark's read-out: Spunge vs. the un-split baseline on ToxiGen, as toxicity-utility frontiers.

Reads the four run directories that `make bench-toxigen` fills (TVN and RMU, each with the baseline at
the split runs' learning rate and, in `<method>-paper`, at a fifth of it as in the paper; Spunge's
models are the same in both) and writes under RUNS (default runs/bench/toxigen):

- frontier-<method>-ppl+<P>pct/: `spunge eval compare --arm` output (frontier.png, frontier.md,
  frontier.json) for the arms baseline, baseline-paper-lr and spunge, the first the reference; the
  operating point is retain perplexity (held-out WikiText) P % above the base model's, each arm read by
  interpolation between its measured λ points; the λ = 1 table (the paper's comparison) is in each;
- radar-<method>/: per-group toxicity of the base model and of each arm's measured point nearest to
  the +10 % operating point (`spunge eval compare` in Table-1 mode);
- summary.json and summary.md: the headline figures, Spunge against each baseline with Katz 95 %
  intervals, and each stage's wall time, all taken from the files above.

    OMP_NUM_THREADS=1 python bench/toxigen_frontiers.py runs/bench/toxigen [--publish DIR]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from spunge_merge.evaluate.compare import compare_results
from spunge_merge.evaluate.degenerate import RULE, is_non_text
from spunge_merge.evaluate.frontier import frontier_results, relative_change_interval
from spunge_merge.fsutil import atomic_write_text, iter_jsonl, read_json, write_json
from spunge_merge.pipeline.state import STATE_DIR

METHODS = ("tvn", "rmu")
# arm name -> (run directory suffix, what it is); Spunge's models are the same in both settings
ARMS = {"baseline": ("", "un-split, the split runs' learning rate (equal learning rates)"),
        "baseline-paper-lr": ("-paper", "un-split at 1/5 of the split runs' learning rate (the paper's setting)")}
TARGETS = (1.05, 1.10)  # operating points: retain perplexity at +5 % and +10 % over the base model's


def eval_dirs(run_dir: Path, role: str) -> list[Path]:
    found = sorted(p for p in (run_dir / "eval").glob(f"{role}-lam*") if (p / "toxicity.json").is_file())
    if not found:
        raise SystemExit(f"{run_dir}/eval: no evaluated {role} models (run `make bench-toxigen` first)")
    return found


def stage_seconds(run_dir: Path) -> dict[str, float]:
    seconds = {}
    for record in sorted((run_dir / STATE_DIR).glob("stage__*.json")):
        data = read_json(record)
        if data.get("status") == "done" and "seconds" in data:
            seconds[record.stem.removeprefix("stage__")] = data["seconds"]
    return seconds


def _row(rows: list[dict], label: str) -> dict | None:
    row = next((r for r in rows if r["label"] == label), None)
    if row is None:
        return None
    return {"toxicity_pct": row["toxicity"]["pct"], "ci95": row["toxicity"]["ci95"], "lambda": row["lambda"],
            "retain_ppl": row["x"], "approximate": row["approximate"], "note": row.get("note"),
            "toxic": row["toxicity"]["toxic"], "n": row["toxicity"]["n"],
            "change_pct": (row.get("relative") or {}).get("toxicity_pct"), "change_ci95": row.get("toxicity_change_ci95")}


def headline(frontier: dict) -> dict:
    """Every arm's row at matched retain perplexity and at λ = 1, and Spunge against each baseline."""
    op, one = frontier["operating_point"]["rows"], frontier["lambda_one"]["rows"]
    result = {"target_retain_ppl": frontier["operating_point"]["target"], "target_source": frontier["operating_point"]["target_source"],
              "matched": {r["label"]: _row(op, r["label"]) for r in op}, "lambda_one": {r["label"]: _row(one, r["label"]) for r in one}}
    for table in ("matched", "lambda_one"):
        rows = result[table]
        for arm in ARMS:
            if rows.get("spunge") and rows.get(arm):
                result[table][f"spunge_vs_{arm}"] = versus(rows["spunge"], rows[arm])
    return result


def versus(row: dict, reference: dict) -> dict:
    """Relative toxicity change of `row` against `reference`, with the Katz 95 % interval."""
    change = 100.0 * (row["toxicity_pct"] / reference["toxicity_pct"] - 1) if reference["toxicity_pct"] else None
    interval = relative_change_interval(row["toxic"], row["n"], reference["toxic"], reference["n"])
    return {"change_pct": change, "ci95": interval}


def degenerate_share(eval_dir: Path) -> dict:
    """Share of generations that are not text (the package's rule, `evaluate/degenerate.py`) overall and by
    prompt label (hate / neutral), from generations.jsonl."""
    counts: dict[str, list[int]] = {}
    for _, row in iter_jsonl(eval_dir / "generations.jsonl"):
        for key in ("all", row.get("label", "?")):
            bucket = counts.setdefault(key, [0, 0])
            bucket[0] += is_non_text(row["generation"])
            bucket[1] += 1
    return {key: round(100.0 * bad / n, 1) for key, (bad, n) in counts.items()}


def nearest_point(frontier: dict, arm: str) -> str:
    target = frontier["operating_point"]["target"]
    return min(frontier["arms"][arm]["points"], key=lambda p: abs(p["x"] - target))["path"]


def publish(runs: Path, target: Path) -> None:
    """The small files behind BENCHMARKS.md (plots, tables, JSON), flat, named by their run directory."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "summary.md"):
        shutil.copy2(runs / name, target / name)
    for directory in sorted([*runs.glob("frontier-*"), *runs.glob("radar-*")]):
        for file in sorted(directory.iterdir()):
            if file.suffix in (".png", ".json", ".md") and file.name != "spunge.json":
                shutil.copy2(file, target / f"{directory.name}-{file.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="?", default=Path("runs/bench/toxigen"))
    parser.add_argument("--publish", type=Path, help="Also copy the plots, tables and JSON files here (BENCHMARKS.md's copy).")
    args = parser.parse_args()
    runs: Path = args.runs
    base = runs / "tvn" / "eval" / "base"  # one base evaluation serves both methods (same model, same settings)
    summary: dict = {"runs": str(runs), "methods": {}}
    lines = ["# ToxiGen, smollm2-135m: Spunge vs. the un-split baseline", ""]
    base_ppl = read_json(base / "perplexity.json")["perplexity"]
    for method in METHODS:
        arms = {"baseline": eval_dirs(runs / method, "baseline"),
                "baseline-paper-lr": eval_dirs(runs / f"{method}-paper", "baseline"),
                "spunge": eval_dirs(runs / method, "spunge")}
        entry: dict = {"arms": {name: text for name, (_, text) in ARMS.items()}, "targets": {},
                       "seconds": {f"{method}{suffix}": stage_seconds(runs / f"{method}{suffix}") for suffix, _ in ARMS.values()}}
        for ratio in TARGETS:
            label = f"ppl+{round(100 * (ratio - 1))}pct"
            out = runs / f"frontier-{method}-{label}"
            frontier = frontier_results(arms, out, base=base, metric="retain_ppl", target=ratio * base_ppl,
                                        match="interpolate", reference="baseline", force=True)
            entry["targets"][label] = {"frontier": str(out / "frontier.md"), "plot": str(out / "frontier.png"), **headline(frontier)}
            tables = (out / "frontier.md").read_text(encoding="utf-8").split("## Frontier points")[0]
            lines += [f"## {method.upper()}, operating point: retain perplexity {100 * (ratio - 1):+.0f} % over the base", "", tables]
            if ratio == TARGETS[-1]:
                lines += ["## Frontier points", "", (out / "frontier.md").read_text(encoding="utf-8").split("## Frontier points")[1]]
                nearest = {arm: nearest_point(frontier, arm) for arm in arms}
                radar = compare_results({"base": base, **nearest}, runs / f"radar-{method}", reference_label="baseline",
                                        force=True)
                entry["radar"] = {"plot": str(runs / f"radar-{method}" / "compare_radar.png"),
                                  "points": {r["label"]: r["model"] for r in radar["rows"]}}
        entry["degenerate_pct"] = {arm: {str(path): degenerate_share(path) for path in paths} for arm, paths in arms.items()}
        entry["degenerate_pct"]["base"] = {str(base): degenerate_share(base)}
        lines += ["## Generations that are not text", "", f"Rule: {RULE}.", "",
                  "| model | all % | on hate prompts % | on neutral prompts % |", "|---|---|---|---|"]
        for arm, found in entry["degenerate_pct"].items():
            for path, share in found.items():
                lines.append(f"| {arm} `{Path(path).name}` | {share['all']} | {share.get('hate', '-')} | {share.get('neutral', '-')} |")
        lines.append("")
        summary["methods"][method] = entry
    write_json(runs / "summary.json", summary)
    atomic_write_text(runs / "summary.md", "\n".join(lines))
    if args.publish:
        publish(runs, args.publish)
    print((runs / "summary.md").read_text(encoding="utf-8"))
    for method, entry in summary["methods"].items():
        for label, found in entry["targets"].items():
            for table in ("matched", "lambda_one"):
                for arm in ARMS:
                    vs = found[table].get(f"spunge_vs_{arm}")
                    if vs and vs["change_pct"] is not None:
                        ci = vs["ci95"] or [float("nan")] * 2
                        print(f"{method} {label if table == 'matched' else 'λ=1':>10} spunge vs {arm:<18} "
                              f"{vs['change_pct']:+6.1f} % [{ci[0]:+.1f}, {ci[1]:+.1f}]")


if __name__ == "__main__":
    main()
