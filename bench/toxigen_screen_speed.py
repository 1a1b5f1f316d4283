"""A ToxiGen λ sweep evaluated two ways in one run: in full (every evaluation on every model) and two-stage
(`eval.screen`: retain perplexity on every model, generations and judges only where the matched-utility
read-out looks; spunge_merge/evaluate/screen.py).

SOURCE is a run directory of a ToxiGen pipeline whose split, unlearn, baseline and merge stages are done
(`spunge run PIPELINE --run-dir SOURCE --only merge`, after the stages before it). Its eval stage is run
twice, each into its own copy of SOURCE (the models are linked, not copied) and each with an empty store
of remembered evaluations (`evaluate/memo.py`), so neither reuses the other's generations: first two-stage,
then in full. Printed: the thread count, each way's CPU and wall time and their ratios (CPU time is the one to
read on a shared machine: wall time moves with whatever else runs), how many models each
evaluated in full, and the figures that must be identical: every arm read at each target (λ, retain
perplexity, toxicity %, toxic / n, interpolated or not) from the full sweep's evaluations and from the
two-stage sweep's, and the generations of every model both evaluated.

    OMP_NUM_THREADS=1 python bench/toxigen_screen_speed.py runs/bench/toxigen/tvn \
        --pipeline recipes/bench-toxigen-smollm2-tvn.yaml --targets 1.05 1.10 --set eval.toxicity.n_per_group=20
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spunge_merge.evaluate import memo  # noqa: E402
from spunge_merge.evaluate.frontier import frontier_results  # noqa: E402
from spunge_merge.pipeline import run_pipeline  # noqa: E402
from spunge_merge.pipeline.state import STATE_DIR  # noqa: E402

ARMS = ("baseline", "spunge")
SHARED = ("split", "unlearn", "baseline", "merge", "inputs")  # the models and data both ways read, linked into each copy


def copy_run(source: Path, target: Path) -> None:
    """TARGET: SOURCE's finished stages (folders linked, records copied) without its evaluations."""
    target.mkdir(parents=True)
    for name in SHARED:
        if (source / name).exists():
            (target / name).symlink_to((source / name).resolve())
    shutil.copytree(source / STATE_DIR, target / STATE_DIR, ignore=shutil.ignore_patterns("eval*", "stage__eval.json", "lock"))
    for record in ("spunge.json", "pipeline.yaml"):
        if (source / record).is_file():
            shutil.copy2(source / record, target / record)


def evaluate(pipeline: Path, run_dir: Path, overrides: list[str], store: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one way's eval stage. The jobs run in this process (local
    executor), so its CPU time is the work done; on a shared machine it moves far less with the load than wall time."""
    memo.cache_root = lambda: store  # an empty store of remembered evaluations, this way's own
    started, cpu = time.perf_counter(), time.process_time()
    run_pipeline(pipeline, run_dir=run_dir, only="eval", live=False, overrides=overrides)
    return time.perf_counter() - started, time.process_time() - cpu


def operating_rows(run_dir: Path, target: float, out: Path) -> list[dict]:
    arms = {arm: sorted(str(p.parent) for p in (run_dir / "eval").glob(f"{arm}*/toxicity.json")) for arm in ARMS}
    result = frontier_results(arms, out, base=run_dir / "eval" / "base", target=target)
    return [{k: row[k] for k in ("label", "lambda", "x", "approximate")} | {"toxicity": row["toxicity"]["pct"],
            "toxic": row["toxicity"]["toxic"], "n": row["toxicity"]["n"]} for row in result["operating_point"]["rows"]]


def evaluated(run_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in (run_dir / "eval").glob("*/toxicity.json"))


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a ToxiGen pipeline's run directory, stages up to merge done")
    parser.add_argument("--pipeline", type=Path, required=True, help="the pipeline file SOURCE was run with")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.05, 1.10], help="operating points, × the base's retain PPL")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a setting for both ways (as spunge run --set)")
    parser.add_argument("--work", type=Path, required=True, help="where the two copies of SOURCE go (must not exist)")
    parser.add_argument("--reuse", action="store_true", help="WORK holds both ways evaluated: compare their figures only")
    args = parser.parse_args()

    threads = f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    screened, full = args.work / "two-stage", args.work / "full"
    seconds = {}
    if not args.reuse:
        for run_dir in (screened, full):
            copy_run(args.source, run_dir)
        screen = f"eval.screen={json.dumps({'targets': args.targets})}"
        for name, run_dir, overrides in (("two-stage", screened, [*args.overrides, screen]), ("full", full, args.overrides)):
            seconds[name] = evaluate(args.pipeline, run_dir, overrides, args.work / f"store-{name}")
            print(f"{name}: {seconds[name][0]:.0f} s wall, {seconds[name][1]:.0f} s CPU", flush=True)

    base_ppl = json.loads((full / "eval" / "base" / "perplexity.json").read_text())["perplexity"]
    same = True
    for ratio in args.targets:
        rows = [operating_rows(run_dir, ratio * base_ppl, args.work / f"frontier-{name}-{ratio:g}")
                for name, run_dir in (("full", full), ("two-stage", screened))]
        same &= rows[0] == rows[1]
        print(f"retain PPL {ratio:g} × base ({ratio * base_ppl:.2f}): identical operating points: {rows[0] == rows[1]}")
        for row in rows[1]:
            lam = "-" if row["lambda"] is None else f"{row['lambda']:.3g}"
            print(f"  {row['label']}: λ {lam}, toxicity {row['toxicity']:.2f} % ({row['toxic']:.1f}/{row['n']:.0f})"
                  f"{' (interpolated)' if row['approximate'] else ''}")
    both = evaluated(screened)
    same_generations = all((screened / "eval" / label / "generations.jsonl").read_bytes()
                           == (full / "eval" / label / "generations.jsonl").read_bytes() for label in both)
    models = len(list((full / "eval").glob("*/perplexity.json")))
    print(f"models in full: two-stage {len(both)} of {models} ({', '.join(both)}), full {len(evaluated(full))}; "
          f"identical generations on those: {same_generations}")
    print(f"figures identical: {same and same_generations}")
    if seconds:
        (wall_full, cpu_full), (wall_two, cpu_two) = seconds["full"], seconds["two-stage"]
        print(f"eval stage, full -> two-stage: CPU {cpu_full:.0f} s -> {cpu_two:.0f} s, {cpu_full / cpu_two:.2f}x; wall {wall_full:.0f} s "
              f"-> {wall_two:.0f} s, {wall_full / wall_two:.2f}x ({threads})")


if __name__ == "__main__":
    main()
