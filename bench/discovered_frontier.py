"""Does a discovered attribute serve as well as the true one? ToxiGen TVN frontiers of three arms.

Reads two run directories (`make bench-toxigen-clusters` fills both):

- RUNS/tvn: recipes/bench-toxigen-smollm2-tvn.yaml, split by the true `target_group`; gives the base
  model's evaluation, the un-split baseline (λ sweep) and Spunge split by the true groups (λ sweep);
- RUNS/tvn-clusters: recipes/bench-toxigen-smollm2-tvn-clusters.yaml, the same rows split by k-means
  clusters of sentence embeddings (K = 5, `target_group` never read), the same TVN settings and λ sweep.

and writes into OUT (default RUNS/discovered):

- frontier-ppl+<P>pct/: `frontier_results` for the arms baseline (the reference), spunge-groups and
  spunge-clusters at retain perplexity P % over the base (each arm interpolated between its λ points),
  with toxicity, fluency, the share of non-text generations and 95 % Katz intervals over prompts;
- summary.md / summary.json: those tables, and how the clusters line up with the true groups
  (contingency table, adjusted Rand index and purity, from the subset files, which keep every column).

One seed (TVN seed 42, clustering seed 0): the intervals cover the prompts, not the seeds, so the
summary states no verdict.

    OMP_NUM_THREADS=1 .venv/bin/python bench/discovered_frontier.py runs/bench/toxigen --publish bench/results/discovered_frontier
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spunge_merge.evaluate.frontier import frontier_results  # noqa: E402
from spunge_merge.fsutil import atomic_write_text, iter_jsonl, read_json, write_json  # noqa: E402

TARGETS = (1.05, 1.10)  # retain perplexity +5 % and +10 % over the base model's
TRUTH = "target_group"


def evaluated(run_dir: Path, role: str) -> list[Path]:
    found = sorted(p for p in (run_dir / "eval").glob(f"{role}-lam*") if (p / "toxicity.json").is_file())
    if not found:
        raise SystemExit(f"{run_dir}/eval: no evaluated {role} models (run `make bench-toxigen-clusters` first)")
    return found


def cluster_agreement(split_dir: Path) -> dict:
    """Cluster × true group counts from the subset files, with ARI and purity (scikit-learn's ARI)."""
    from sklearn.metrics import adjusted_rand_score

    manifest = read_json(split_dir / "manifest.json")
    clusters, truth = [], []
    for subset in manifest["subsets"]:
        for _, row in iter_jsonl(split_dir / subset["file"]):
            clusters.append(subset["name"])
            truth.append(row[TRUTH])
    table = Counter(zip(clusters, truth, strict=True))
    names = sorted(set(clusters), key=lambda c: -clusters.count(c))
    groups = sorted(set(truth))
    purity = sum(max(table[(c, g)] for g in groups) for c in names) / len(truth)
    return {"rows": len(truth), "ari": adjusted_rand_score(truth, clusters), "purity": purity, "groups": groups,
            "table": {c: {g: table[(c, g)] for g in groups} for c in names}}


def agreement_markdown(agreement: dict) -> list[str]:
    groups = agreement["groups"]
    lines = [f"Rows: {agreement['rows']}; adjusted Rand index {agreement['ari']:.3f}, purity {agreement['purity']:.3f}.", "",
             "| cluster | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    lines += [f"| {c} | " + " | ".join(str(counts[g]) for g in groups) + " |" for c, counts in agreement["table"].items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="?", default=Path("runs/bench/toxigen"))
    parser.add_argument("--out", type=Path, help="Output folder (default RUNS/discovered).")
    parser.add_argument("--publish", type=Path, help="Also copy the tables, plots and JSON here (BENCHMARKS.md's copy).")
    args = parser.parse_args()
    groups_run, clusters_run = args.runs / "tvn", args.runs / "tvn-clusters"
    out = args.out or args.runs / "discovered"
    base = groups_run / "eval" / "base"
    base_ppl = read_json(base / "perplexity.json")["perplexity"]
    arms = {"baseline": evaluated(groups_run, "baseline"), "spunge-groups": evaluated(groups_run, "spunge"),
            "spunge-clusters": evaluated(clusters_run, "spunge")}
    agreement = cluster_agreement(clusters_run / "split")
    lines = ["# ToxiGen, smollm2-135m, TVN: split by discovered clusters vs. by the true groups vs. un-split", "",
             "One seed (TVN 42, k-means 0); intervals are over prompts only (Katz, 400 generations per model): no verdict.", "",
             "## The clusters against the true groups", "", *agreement_markdown(agreement), ""]
    summary: dict = {"runs": str(args.runs), "agreement": agreement, "targets": {}}
    for ratio in TARGETS:
        label = f"ppl+{round(100 * (ratio - 1))}pct"
        target_dir = out / f"frontier-{label}"
        frontier = frontier_results(arms, target_dir, base=base, metric="retain_ppl", target=ratio * base_ppl,
                                    match="interpolate", reference="baseline", force=True)
        summary["targets"][label] = {"operating_point": frontier["operating_point"], "lambda_one": frontier["lambda_one"]}
        tables = (target_dir / "frontier.md").read_text(encoding="utf-8").split("## Frontier points")
        lines += [f"## Operating point: retain perplexity {100 * (ratio - 1):+.0f} % over the base", "", tables[0]]
        if ratio == TARGETS[-1] and len(tables) > 1:
            lines += ["## Frontier points", "", tables[1]]
    write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", "\n".join(lines))
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "summary.md"):
            shutil.copy2(out / name, args.publish / name)
        for directory in sorted(out.glob("frontier-*")):
            for file in sorted(directory.iterdir()):
                if file.suffix in (".png", ".json", ".md") and file.name != "spunge.json":
                    shutil.copy2(file, args.publish / f"{directory.name}-{file.name}")
    print((out / "summary.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
