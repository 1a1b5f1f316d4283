"""Which merge makes splitting pay on the knowledge demo? Merges × λ over a seeded run, no retraining.

Reads a run directory made by a pipeline with `seeds:` (the demo: `spunge demo --run-dir DIR`). For
every seed it merges the same per-domain unlearning runs with several mergekit methods and scales λ,
builds the un-split baseline at several λ from its one run (through the method's registry record),
and scores each model on the pipeline's held-out facts (completion) and retain perplexity. Then:

- every point: forget avg and keep avg (mean over seeds, min–max) and retain PPL;
- at matched forgetting: for each arm, per seed, the point with the highest keep avg among those whose
  forget avg is at most `--forget-at-most` (default 5 %); the best Spunge merge against the baseline,
  keep avg difference with a bootstrap interval over seeds and facts (`hierarchical_bootstrap`);
- at λ = 1 for both: Spunge (each merge) − baseline, forget and keep avg, same interval.

Merges (density 1.0 where it applies: RMU changes three matrices and trimming them measures nothing):
  ties        TIES as in the paper: elect a sign, average the agreeing edits (`normalize: true`)
  ties-sum    TIES without normalize: the agreeing edits summed, so no edit is diluted by the count
  task_arithmetic  the plain sum of the task vectors
  dare_ties   DARE (drop 50 %, rescale) then TIES, seeded

    OMP_NUM_THREADS=1 .venv/bin/python bench/knowledge_grid.py /tmp/demo3 --out bench/results/knowledge_grid
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from grid_points import MERGES, build_seed_points  # noqa: E402 - bench/ is on sys.path when this runs as a script

from spunge_merge.evaluate.stats import signed_interval as _interval  # noqa: E402


def _pipeline(run_dir: Path):
    from spunge_merge.config import load_yaml
    from spunge_merge.pipeline.schema import parse_pipeline

    raw = load_yaml(run_dir / "pipeline.yaml")
    return raw, parse_pipeline(raw, str(run_dir / "pipeline.yaml"))


def build_points(run_dir: Path, work: Path, lambdas: list[float], baseline_lambdas: list[float], merges: list[str],
                 files_dir: Path) -> dict:
    """{seed: {label: eval_dir}}, every model built and evaluated (resumable: finished ones are kept)."""
    from spunge_merge.models import resolve_model
    from spunge_merge.unlearn import registry

    raw, pipeline = _pipeline(run_dir)
    base = resolve_model(pipeline.model)
    method = registry.get_method(pipeline.unlearn.method)
    points: dict[int, dict[str, Path]] = {}
    for seed_dir in sorted((run_dir / "seeds").iterdir(), key=lambda p: int(p.name)):
        seed = int(seed_dir.name)
        points[seed] = build_seed_points(seed_dir, work / str(seed), base=base, method=method, eval_section=raw["eval"],
                                         files_dir=files_dir, lambdas=lambdas, baseline_lambdas=baseline_lambdas,
                                         merges=merges, views_dir=work / ".views")
        print(f"seed {seed}: {len(points[seed])} models evaluated", flush=True)
    return {"points": points, "forget": list(pipeline.split.values or [])}


def summarise(points: dict, forget: list[str], forget_at_most: float) -> dict:
    """Per point means and spreads; matched-forgetting and λ = 1 comparisons with bootstrap intervals."""
    from spunge_merge.evaluate.stats import hierarchical_bootstrap
    from spunge_merge.fsutil import read_json
    from spunge_merge.pipeline.seeds import _knowledge, paired_differences

    seeds = sorted(points)
    figures = {s: {label: {**_knowledge(d, forget), "retain PPL": (read_json(d / "perplexity.json")["perplexity"], None)}
                   for label, d in points[s].items()} for s in seeds}
    labels = list(figures[seeds[0]])
    rows = []
    for label in labels:
        row = {"model": label}
        for name in ("forget avg", "keep avg", "retain PPL"):
            values = [figures[s][label][name][0] for s in seeds]
            row[name] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "per_seed": values}
        rows.append(row)

    def compare(pick_a, pick_b, name):
        diffs = [paired_differences(figures[s][pick_a(s)][name], figures[s][pick_b(s)][name])[0] for s in seeds]
        return hierarchical_bootstrap(diffs, n=2000, seed=0)

    arms = sorted({label.rsplit("-lam", 1)[0] for label in labels if label != "base"})

    def best(arm: str, seed: int) -> str:
        """The arm's point with the highest keep avg among those forgetting enough (else the one forgetting most)."""
        candidates = [label for label in labels if label.rsplit("-lam", 1)[0] == arm]
        enough = [label for label in candidates if figures[seed][label]["forget avg"][0] <= forget_at_most]
        if enough:
            return max(enough, key=lambda label: (figures[seed][label]["keep avg"][0], -figures[seed][label]["forget avg"][0]))
        return min(candidates, key=lambda label: (figures[seed][label]["forget avg"][0], -figures[seed][label]["keep avg"][0]))

    matched = []
    for arm in arms:
        if arm == "baseline":
            continue
        entry = {"arm": arm, "chosen": {s: best(arm, s) for s in seeds}, "baseline_chosen": {s: best("baseline", s) for s in seeds}}
        for name in ("keep avg", "forget avg"):
            entry[name] = compare(lambda s, a=arm: best(a, s), lambda s: best("baseline", s), name)
        matched.append(entry)
    at_one = []
    for arm in arms:
        if arm == "baseline" or f"{arm}-lam1" not in labels or "baseline-lam1" not in labels:
            continue
        at_one.append({"arm": arm, **{name: compare(lambda s, a=arm: f"{a}-lam1", lambda s: "baseline-lam1", name)
                                      for name in ("forget avg", "keep avg")}})
    return {"seeds": seeds, "forget": forget, "forget_at_most": forget_at_most, "points": rows, "matched": matched,
            "lambda_1": at_one}


def _reading(entry: dict, better: str) -> str:
    low, high = entry["low"], entry["high"]
    if low <= 1e-9 <= high or abs(low) < 1e-9 or abs(high) < 1e-9:
        return "level"
    good = (low > 0) == (better == "higher")
    return "helps" if good else "hurts"


def render(summary: dict) -> str:
    lines = [f"Seeds {summary['seeds']}; forgotten domains: {', '.join(summary['forget'])}. Mean over seeds (min–max).", "",
             "| model | forget avg % | keep avg % | retain PPL |", "|---|---:|---:|---:|"]
    for row in summary["points"]:
        cells = [f"{row[n]['mean']:.1f} ({row[n]['min']:.0f}–{row[n]['max']:.0f})" for n in ("forget avg", "keep avg")]
        lines.append(f"| {row['model']} | {cells[0]} | {cells[1]} | {row['retain PPL']['mean']:.2f} |")
    lines += ["", f"Matched forgetting: per seed, each arm's λ with the best keep avg among forget avg ≤ "
              f"{summary['forget_at_most']:g} %. Spunge − baseline, points, 95 % bootstrap over seeds and facts.", "",
              "| Spunge merge | keep avg | reading | forget avg | λ chosen (per seed) | baseline λ chosen |", "|---|---|---|---|---|---|"]
    for entry in summary["matched"]:
        chosen = ", ".join(v.rsplit("-lam", 1)[1] for v in entry["chosen"].values())
        base = ", ".join(v.rsplit("-lam", 1)[1] for v in entry["baseline_chosen"].values())
        lines.append(f"| {entry['arm']} | {_interval(entry['keep avg'])} | {_reading(entry['keep avg'], 'higher')} | "
                     f"{_interval(entry['forget avg'])} | {chosen} | {base} |")
    lines += ["", "At λ = 1 for both arms:", "", "| Spunge merge | forget avg | keep avg |", "|---|---|---|"]
    for entry in summary["lambda_1"]:
        lines.append(f"| {entry['arm']} | {_interval(entry['forget avg'])} ({_reading(entry['forget avg'], 'lower')}) | "
                     f"{_interval(entry['keep avg'])} ({_reading(entry['keep avg'], 'higher')}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a seeded run directory (spunge demo --run-dir DIR)")
    parser.add_argument("--work", type=Path, default=None, help="where models and evaluations go (default RUN_DIR/grid)")
    parser.add_argument("--merges", default=",".join(MERGES), help=f"comma list of {', '.join(MERGES)}")
    parser.add_argument("--lambdas", default="0.5,1,2", help="Spunge λ values")
    parser.add_argument("--baseline-lambdas", default="0.5,1,2", help="baseline λ values")
    parser.add_argument("--files-dir", type=Path, default=REPO / "spunge_merge" / "demo",
                        help="the folder the pipeline file's relative paths start from (default: the demo's)")
    parser.add_argument("--forget-at-most", type=float, default=5.0, help="forget avg (%%) that counts as forgotten")
    parser.add_argument("--out", type=Path, default=None, help="also write summary.json and summary.md here")
    args = parser.parse_args()
    work = args.work or args.run_dir / "grid"
    started = time.perf_counter()
    found = build_points(args.run_dir, work, [float(x) for x in args.lambdas.split(",")],
                         [float(x) for x in args.baseline_lambdas.split(",")], args.merges.split(","), args.files_dir)
    summary = summarise(found["points"], found["forget"], args.forget_at_most)
    text = render(summary) + f"\n({time.perf_counter() - started:.0f} s)\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
        (args.out / "summary.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
