"""Compare `spunge merge` timings of the working tree against another revision, alternating the two.

    OMP_NUM_THREADS=1 .venv/bin/python bench/merge_ab.py --against HEAD [--rounds 3] [--merges 9] [--workdir DIR]

On a shared machine the same merge varies by a third from one minute to the next, more than most
changes do; so both versions are measured in turns, in fresh processes: each round runs one process
per version and kind (RMU deltas, TVN adapters: the synthetic runs of bench/merge.py), each process
merges `--merges` times (the first, which builds the views and warms the caches, is not counted),
and the medians and quartiles of the tensor phase and of planning + tensor phase are printed with the
ratio of the medians. The other revision is checked out with `git worktree` into a temporary folder
and imported from there (same virtual environment).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in each process: merge `count` times with the version on sys.path, print the timings as JSON.
_CHILD = r"""
import json, os, shutil, sys
from pathlib import Path
from spunge_merge.merge import merge_runs
kind, count, workdir, label = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
runs = sorted(p for p in (workdir / "runs" / kind).iterdir() if p.is_dir())
timings = []
for attempt in range(count):
    out = workdir / "ab-out" / f"{label}-{kind}-{attempt}"
    merge_runs("smollm2-135m", runs, out, views_dir=workdir / f"ab-views-{label}-{kind}", force=True, progress=False)
    result = json.loads((out / "spunge.json").read_text())["result"]
    if attempt:
        timings.append([result["seconds_tensors"], result["seconds_planning"] + result["seconds_tensors"]])
    shutil.rmtree(out)
    os.sync()
print(json.dumps(timings))
"""


def run_child(tree: Path, kind: str, merges: int, workdir: Path, label: str) -> list[list[float]]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-c", _CHILD, kind, str(merges), str(workdir), label], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{label} {kind}: merge failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> tuple[float, str]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return median, f"{median:.3f} s ({q1:.3f}–{q3:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="the revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--merges", type=int, default=9, help="merges per process (the first is not counted)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "spunge-bench-merge")
    args = parser.parse_args()
    if args.rounds * (args.merges - 1) < 2:  # quartiles need two counted merges per version and kind
        parser.error("--rounds x (--merges - 1) must be at least 2")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    sys.path.insert(0, str(ROOT / "bench"))
    from merge import make_runs  # the synthetic runs of bench/merge.py

    from spunge_merge.models import resolve_model

    make_runs(resolve_model("smollm2-135m"), args.workdir, 5)
    with tempfile.TemporaryDirectory() as scratch:
        other = Path(scratch) / "other"
        subprocess.run(["git", "worktree", "add", "--detach", str(other), args.against], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            trees = {args.against: other, "working tree": ROOT}
            found: dict[tuple[str, str], list[list[float]]] = {}
            for _ in range(args.rounds):
                for kind in ("rmu", "tvn"):
                    for label, tree in trees.items():
                        tag = "other" if tree == other else "this"
                        found.setdefault((kind, label), []).extend(run_child(tree, kind, args.merges, args.workdir, tag))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=False, capture_output=True)
    print(f"# {args.rounds} rounds x {args.merges - 1} merges per version and kind, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"{os.cpu_count()} CPUs; median (quartiles)")
    print(f"| kind | measure | {args.against} | working tree | ratio |")
    print("|---|---|---:|---:|---:|")
    for kind in ("rmu", "tvn"):
        for index, measure in enumerate(("tensor phase", "planning + tensor phase")):
            before, before_text = summary([t[index] for t in found[(kind, args.against)]])
            after, after_text = summary([t[index] for t in found[(kind, "working tree")]])
            print(f"| {kind.upper()} | {measure} | {before_text} | {after_text} | {before / after:.2f}x |")


if __name__ == "__main__":
    main()
