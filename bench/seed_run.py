"""Start a run directory from another one's finished split and per-subset unlearning runs (the ToxiGen benchmark's paper setting).

The paper's setting differs from the equal-learning-rate one only in the un-split baseline's learning
rate, so both settings must compare against the very same per-group runs and merged models: this copies
the split, the per-group runs and their records from SOURCE into TARGET, and `spunge run` then finds those
stages up to date (a copied run directory stays resumable) and trains only the new baseline.

    python bench/seed_run.py runs/bench/toxigen/tvn runs/bench/toxigen/tvn-paper
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from spunge_merge.fsutil import read_json
from spunge_merge.pipeline.state import STATE_DIR

COPIED = ("split", "unlearn", "inputs")
RECORDS = ("stage__split.json", "stage__unlearn.json", "unlearn__*.json")


def seed(source: Path, target: Path) -> bool:
    """Copy SOURCE's split and unlearn stages into TARGET; False when TARGET already has them."""
    # The per-subset runs, not the stage: the stage also waits for the baseline's training, which the
    # target redoes anyway (its settings differ); the target resumes the stage and finds the runs done.
    split = source / "split" / "manifest.json"
    runs = sorted((source / STATE_DIR).glob("unlearn__*.json"))
    expected = len(read_json(split)["subsets"]) if split.is_file() else None
    if expected is None or len(runs) != expected or any(read_json(r).get("status") != "done" for r in runs):
        sys.exit(f"{source}: its per-subset unlearning runs have not all finished (run the pipeline there first)")
    if (target / STATE_DIR / "stage__unlearn.json").is_file():
        return False
    staging = target.with_name(f".{target.name}.seeding")
    shutil.rmtree(staging, ignore_errors=True)
    for name in COPIED:
        if (source / name).exists():
            shutil.copytree(source / name, staging / name, symlinks=True)
    (staging / STATE_DIR).mkdir(parents=True)
    for pattern in RECORDS:
        for path in (source / STATE_DIR).glob(pattern):
            shutil.copy2(path, staging / STATE_DIR / path.name)
    if (source / STATE_DIR / "views").is_dir():
        shutil.copytree(source / STATE_DIR / "views", staging / STATE_DIR / "views", symlinks=True)
    if target.exists():
        if any(target.iterdir()):
            sys.exit(f"{target}: not empty and not seeded; remove it or pick another run directory")
        target.rmdir()
    staging.rename(target)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="Run directory whose split and unlearn stages have finished.")
    parser.add_argument("target", type=Path, help="New run directory (created).")
    args = parser.parse_args()
    done = seed(args.source, args.target)
    print(f"{args.target}: {'seeded from ' + str(args.source) if done else 'already seeded'}")


if __name__ == "__main__":
    main()
