"""Fluency of each arm at the points where a ToxiGen seeds report read toxicity at matched utility.

The seeds report (`evaluate/matched_toxicity.py`) matches the arms on retain perplexity, a teacher-forced
measure that does not see the generations themselves. This prints, for each target and seed, each arm's
fluency perplexity (the Gemma-3-270M judge on its generations) and not-text share at the same points with
the same interpolation weights, and their mean over seeds, so a toxicity gap bought with less fluent output
shows beside the verdict.

    python bench/toxigen_matched_fluency.py runs/bench/toxigen/npo-seeds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spunge_merge.fsutil import read_json  # noqa: E402
from spunge_merge.pipeline.runner import REPORT_JSON  # noqa: E402
from spunge_merge.pipeline.seeds import SEEDS_DIR  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a seeded ToxiGen run with eval.screen (its report.json and seeds/<s>/report.json)")
    run_dir = parser.parse_args().run_dir
    aggregate = read_json(run_dir / REPORT_JSON)
    print("| target | arm | fluency PPL per seed | mean | not text % per seed |")
    print("|---|---|---|---:|---|")
    for matched in aggregate["matched"]:
        per_arm: dict[str, list[tuple[float, float]]] = {}
        base_fluency = None
        for seed, reading in matched["seeds"].items():
            rows = read_json(run_dir / SEEDS_DIR / seed / REPORT_JSON)["compare"]["rows"]
            values = {row["label"]: row["values"] for row in rows}
            base_fluency = values["base"]["fluency_ppl"]
            for arm in ("baseline", "spunge"):
                points = reading[arm]["points"]
                per_arm.setdefault(arm, []).append((sum(w * values[label]["fluency_ppl"] for label, w in points),
                                                    sum(w * values[label]["non_text_pct"] for label, w in points)))
        for arm, figures in per_arm.items():
            fluency = ", ".join(f"{f:.2f}" for f, _ in figures)
            non_text = ", ".join(f"{n:.2f}" for _, n in figures)
            mean = sum(f for f, _ in figures) / len(figures)
            print(f"| {matched['metric']} × {matched['ratio']} | {arm} | {fluency} | {mean:.2f} | {non_text} |")
        print(f"| | base | {base_fluency:.2f} | | |")


if __name__ == "__main__":
    main()
