"""Per forget set, and what predicts it: every forget set measured so far, its verdict beside cheap predictors.

Each study keeps its own read-out; this script reads them side by side and trains or evaluates nothing:
- knowledge sets: each study's `summary.json` (`bench/frontiers.py`), TIES (the paper's merge, run in every study)
  against the un-split baseline at matched utility, forget avg (Spunge − baseline, points), per forget set;
- ToxiGen: the seeds reports (`bench/results/toxigen_seeds/<method>/report.json`), TIES against the baseline at
  retain perplexity + 10 % (toxicity points).

Predictors, per set (a set is its subsets: two domains, four domains, pairs of domains, five target groups):
- size ratio: training rows of the largest subset over the smallest, in the facts file the cell trained on (the
  driver's cell: a plan's `train_rows` caps give a derived file, `bench/frontiers_facts.py`);
- embedding similarity: the cosine between the subsets' centroids of all-MiniLM-L6-v2 sentence embeddings of their
  training texts (mean over pairs of subsets). The one model run here, seconds on a CPU; cached like the discovery
  embeddings (`spunge_merge.data.discovery.embeddings`);
- edit cosine, sign agreement, the larger edit's norm over the smaller's and each edit's selectivity alone, from
  `bench/results/edit_interference/` where that (method, model, set) was measured on a cell of the same facts file
  (two-subset sets only; `frontiers_readout.edit_predictors`).

Then: does any predictor give the sign of the verdict? Only a set that helps could show it. Over the knowledge
sets (one unit: forget points), the Spearman rank correlation of each predictor with Δ, with a 95 % bootstrap
interval over sets, says whether it orders them; with a dozen or so sets the interval is wide, and the text says so.

    OMP_NUM_THREADS=1 python bench/per_set.py        # writes bench/results/per-set/README.md and per_set.json
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from frontiers import select  # noqa: E402 - bench/ is on sys.path when this runs as a script
from frontiers_plan import load_plan  # noqa: E402
from frontiers_readout import edit_predictors, larger_over_smaller  # noqa: E402

from spunge_merge.evaluate.stats import signed_interval as _ci  # noqa: E402

RESULTS = REPO / "bench" / "results"
OUT = RESULTS / "per-set"
EMBEDDER = "all-minilm-l6-v2"
MERGE = "ties"
TOXIGEN_TARGET = 1.10  # retain PPL ratio at which the ToxiGen seeds reports are read here (the headline's +10 %)
BOOTSTRAP = {"n": 2000, "seed": 0}
MIN_SETS = 6  # fewer sets: ρ is shown, no statement (a bootstrap of 4 points mostly redraws the same 2 or 3)


@dataclass(frozen=True)
class Study:
    """One measured study: where its read-out is, how it was made, and which of its rows count here."""

    name: str
    results: str                  # under bench/results/
    source: str                   # the plan file (knowledge) or the seeds recipe (ToxiGen)
    run_dir: str = ""             # ToxiGen: the run directory its split files are read from
    model: str = ""               # ToxiGen: the recipe's base model (its report does not name it)
    methods: tuple[str, ...] = ()  # knowledge: only these methods' rows (empty: every row)

    @property
    def command(self) -> str:
        if self.run_dir:
            return f"spunge run {self.source} --run-dir {self.run_dir}"
        return f"python bench/frontiers.py --plan-file {self.source} --no-cut"


KNOWLEDGE = [
    Study("pairs", "per-set/rmu-smollm2", "bench/plans/per-set-rmu-smollm2.yaml"),
    Study("pairs", "per-set/rmu-gemma3", "bench/plans/per-set-rmu-gemma3.yaml"),
    Study("pairs", "per-set/graddiff-smollm2", "bench/plans/per-set-graddiff-smollm2.yaml"),
    Study("pairs", "robustness/npo", "bench/plans/npo-smollm2.yaml"),
    Study("pairs", "frontiers", "recipes/frontiers.yaml", methods=("tvn",)),
    Study("unequal subsets", "unequal/rmu", "bench/plans/unequal-rmu-smollm2.yaml"),
    Study("unequal subsets", "unequal/npo", "bench/plans/unequal-npo-smollm2.yaml"),
    Study("more subsets", "more-subsets/rmu", "bench/plans/more-subsets-rmu-smollm2.yaml"),
    Study("more subsets", "more-subsets/npo", "bench/plans/more-subsets-npo-smollm2.yaml"),
]
TOXIGEN = [
    Study("ToxiGen", "toxigen_seeds/tvn", "recipes/bench-toxigen-smollm2-tvn-seeds.yaml", run_dir="runs/bench/toxigen/tvn-seeds",
          model="smollm2-135m"),
    Study("ToxiGen", "toxigen_seeds/npo", "recipes/bench-toxigen-smollm2-npo-seeds.yaml", run_dir="runs/bench/toxigen/npo-seeds",
          model="smollm2-135m"),
]


# ------------------------------------------------------------------------------------------------
# Predictors


def centroid_similarity(vectors: dict[str, Any]) -> float:
    """Mean over pairs of subsets of the cosine between their centroids (each the mean of unit-norm embeddings)."""
    import numpy as np

    centroids = {name: v.mean(axis=0) for name, v in vectors.items()}
    cosines = [float(np.dot(centroids[a], centroids[b]) / (np.linalg.norm(centroids[a]) * np.linalg.norm(centroids[b])))
               for a, b in itertools.combinations(sorted(centroids), 2)]
    return sum(cosines) / len(cosines)


def embedding_similarity(texts: dict[str, list[str]]) -> float:
    """`centroid_similarity` of the subsets' training texts, embedded with the discovery encoder (all-MiniLM-L6-v2)."""
    from spunge_merge.data.discovery.embeddings import embed_texts

    names = sorted(texts)
    flat = [t for name in names for t in texts[name]]
    vectors, _ = embed_texts(flat, EMBEDDER, progress=False)
    found, start = {}, 0
    for name in names:
        found[name] = vectors[start:start + len(texts[name])]
        start += len(texts[name])
    return centroid_similarity(found)


def knowledge_texts(rows: list[dict], subsets: list[list[str]]) -> dict[str, list[str]]:
    """Each subset's training texts among the rows of the facts file its cell trained on."""
    return {"+".join(group): [row["text"] for row in rows if row.get("part") == "train" and row["domain"] in group]
            for group in subsets}


def split_texts(split_dir: Path) -> dict[str, list[str]]:
    """A run's split (its manifest's subsets and text column): the texts each subset's run trained on."""
    from spunge_merge.fsutil import iter_jsonl, read_json

    manifest = read_json(split_dir / "manifest.json")
    column = manifest["text_column"]
    return {entry["name"]: [row[column] for _, row in iter_jsonl(split_dir / entry["file"])] for entry in manifest["subsets"]}


# ------------------------------------------------------------------------------------------------
# Reading the studies


def knowledge_rows(study: Study) -> list[dict]:
    """One row per forget set of the study's summary: TIES against the baseline at matched utility. Each set's
    subsets and facts file are its cell's, as the driver builds them from the plan (`frontiers.select`: a plan's
    `train_rows` caps and grouped subsets give derived files, written under its runs folder where missing)."""
    from spunge_merge.fsutil import iter_jsonl, read_json

    summary_file = RESULTS / study.results / "summary.json"
    if not summary_file.is_file():
        return []
    cells = {(c.method, c.model, c.set_name): c for c in select(load_plan(REPO / study.source), quick=False, only={})[0]}
    facts_rows: dict[Path, list[dict]] = {}
    found = []
    for row in read_json(summary_file)["rows"]:
        if study.methods and row["method"] not in study.methods:
            continue
        sets = row.get("sets") or ({row["pairs"][0]: row} if len(row["pairs"]) == 1 else {})
        for name, entry in sets.items():
            if MERGE not in entry["merges"]:
                continue
            cell = cells[(row["method"], row["model"], name)]
            subsets = [list(g) for g in cell.subsets] or [[d] for d in cell.pair]
            if cell.facts not in facts_rows:
                facts_rows[cell.facts] = [r for _, r in iter_jsonl(cell.facts)]
            edits = edit_predictors(row["method"], row["model"], list(cell.pair), facts_stem=cell.facts.stem) \
                if len(subsets) == 2 else None
            found.append({
                "study": study.name, "task": "knowledge", "method": row["method"], "model": row["model"], "set": name,
                "subsets": ["+".join(g) for g in subsets], "units": entry.get("units", row["units"]),
                "difference": _plain(entry["merges"][MERGE]["matched_utility"]), "figure": "Δ forget avg, points",
                "results": f"bench/results/{study.results}/summary.md", "command": study.command,
                "texts": knowledge_texts(facts_rows[cell.facts], subsets), "edits": edits})
    return found


def toxigen_rows(study: Study) -> list[dict]:
    """The ToxiGen seeds report's TIES arm against the baseline at retain PPL + 10 %: one set, the 5 target groups."""
    from spunge_merge.fsutil import read_json

    report_file = RESULTS / study.results / "report.json"
    if not report_file.is_file():
        return []
    report = read_json(report_file)
    matched = next(m for m in report["matched"] if m["metric"] == "retain_ppl" and math.isclose(m["ratio"], TOXIGEN_TARGET))
    split_dir = REPO / study.run_dir / "split"
    texts = split_texts(split_dir) if split_dir.is_dir() else None
    return [{"study": study.name, "task": "toxigen", "method": study.results.rsplit("/", 1)[-1], "model": study.model,
             "set": "5 target groups", "subsets": sorted(texts) if texts else [], "units": matched["difference"]["n_seeds"],
             "difference": _plain(matched["difference"]), "figure": "Δ toxicity, points",
             "results": f"bench/results/{study.results}/report.md", "command": study.command, "texts": texts, "edits": None}]


def _plain(entry: dict) -> dict:
    return {"mean": entry["mean"], "low": entry["low"], "high": entry["high"], "verdict": entry["verdict"]}


def with_predictors(row: dict, stored: dict[str, dict]) -> dict:
    """The row with its size ratio and embedding similarity: computed from its texts where they are here, else taken
    from the stored per_set.json (a ToxiGen run directory is not in every clone)."""
    key = f"{row['study']}|{row['method']}|{row['model']}|{row['set']}"
    texts = row.pop("texts")
    if texts:
        row["rows"] = {name: len(t) for name, t in texts.items()}
        row["size_ratio"] = larger_over_smaller(row["rows"])
        row["embedding_similarity"] = embedding_similarity(texts)
    elif key in stored:
        row.update({k: stored[key][k] for k in ("rows", "size_ratio", "embedding_similarity", "subsets")})
    else:
        row.update({"rows": {}, "size_ratio": math.nan, "embedding_similarity": math.nan})
    row["key"] = key
    return row


# ------------------------------------------------------------------------------------------------
# Does a predictor order the sets?


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (scipy's, average ranks for ties); nan where either side is constant."""
    import warnings

    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)


def spearman_bootstrap(x: list[float], y: list[float], *, n: int, seed: int) -> dict[str, float]:
    """ρ over the sets and its 95 % percentile interval over sets resampled with replacement (draws where a side is
    constant are skipped and counted)."""
    rng = random.Random(seed)
    draws, skipped = [], 0
    for _ in range(n):
        picks = [rng.randrange(len(x)) for _ in x]
        rho = spearman([x[i] for i in picks], [y[i] for i in picks])
        if math.isnan(rho):
            skipped += 1
        else:
            draws.append(rho)
    draws.sort()
    low, high = (draws[int(0.025 * (len(draws) - 1))], draws[int(0.975 * (len(draws) - 1))]) if draws else (math.nan, math.nan)
    return {"rho": spearman(x, y), "low": low, "high": high, "sets": len(x), "skipped_draws": skipped}


PREDICTORS = {  # name: (label, value of a row or None where not measured)
    "size_ratio": ("size ratio (largest / smallest subset)", lambda r: r["size_ratio"]),
    "embedding_similarity": ("embedding similarity (centroid cosine)", lambda r: r["embedding_similarity"]),
    "edit_cosine": ("cos(A, B) of the edits", lambda r: r["edits"]["cosine"] if r["edits"] else None),
    "sign_agreement": ("sign agreement of the edits", lambda r: r["edits"]["sign_agreement"] if r["edits"] else None),
    "norm_ratio": ("edit norm ratio (larger / smaller)", lambda r: r["edits"].get("norm_ratio") if r["edits"] else None),
    "selectivity": ("weaker edit's selectivity alone", lambda r: min(e["selectivity"] for e in r["edits"]["selectivity"].values())
                    if r["edits"] else None),
}


def correlations(rows: list[dict]) -> dict[str, dict]:
    """Per predictor, Spearman ρ with Δ over the knowledge sets where it was measured."""
    found = {}
    for name, (_, value) in PREDICTORS.items():
        pairs = [(value(r), r["difference"]["mean"]) for r in rows if r["task"] == "knowledge"]
        pairs = [(v, d) for v, d in pairs if v is not None and not math.isnan(v) and not math.isinf(v)]
        if len(pairs) >= 3:
            result = spearman_bootstrap([v for v, _ in pairs], [d for _, d in pairs], **BOOTSTRAP)
            if not math.isnan(result["rho"]):  # a predictor equal on every set orders nothing
                found[name] = result
    return found


# ------------------------------------------------------------------------------------------------
# Output


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def render(summary: dict) -> str:
    rows, found = summary["rows"], summary["correlations"]
    counts = {v: sum(r["difference"]["verdict"] == v for r in rows) for v in ("helps", "level", "no verdict", "hurts")}
    lines = ["# Per forget set, and what predicts it", "",
             "Every forget set measured so far, TIES against the un-split baseline at matched utility (knowledge: forget avg "
             "at keep avg = base − 5 points, Spunge − baseline; ToxiGen: toxicity at retain PPL + 10 %), 95 % hierarchical "
             "bootstrap over seeds (and forget sets within a study) and items, beside cheap predictors. Negative Δ: Spunge "
             "forgets more (is less toxic) at the same utility. Written by `python bench/per_set.py` from the stored "
             "read-outs; each row's command rebuilds its read-out.", "",
             "| study | method | model | forget set (subsets) | Δ at matched utility [95 %] | verdict | seeds | rows per subset "
             "(ratio) | embedding similarity | cos(A, B) | sign agreement | edit norm ratio | selectivity alone (own − other) | "
             "read-out; command |", "|---|---|---|---|---|---|---:|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        edits = r["edits"]
        selectivity = "; ".join(f"{d} {e['selectivity']:+.0f}" for d, e in edits["selectivity"].items()) if edits else "–"
        sizes = " / ".join(f"{n}" for n in r["rows"].values()) + f" ({r['size_ratio']:.2f}×)" if r["rows"] else "–"
        lines.append(f"| {r['study']} | {r['method']} | {r['model']} | {r['set']} ({len(r['subsets'])}) | {_ci(r['difference'])} "
                     f"({r['figure'].split(',')[0].removeprefix('Δ ')}) | **{r['difference']['verdict']}** | {r['units']} | {sizes} | "
                     f"{_num(r['embedding_similarity'], '.3f')} | {_num(edits['cosine'] if edits else None, '.3f')} | "
                     f"{_num(100 * edits['sign_agreement'] if edits else None, '.1f')}{' %' if edits else ''} | "
                     f"{_num(edits.get('norm_ratio') if edits else None, '.2f')} | {selectivity} | "
                     f"[{Path(r['results']).parent.name}]({r['results'].removeprefix('bench/results/')}); `{r['command']}` |")
    lines += ["", f"Verdicts over {len(rows)} sets: helps {counts['helps']}, level {counts['level']}, no verdict "
              f"{counts['no verdict']}, hurts {counts['hurts']}. The seeds column counts (forget set, seed) units for a pooled "
              "study's set; every study ran 3 seeds.", "",
              "## Does a predictor give the sign?", ""]
    if counts["helps"] == 0:
        lines += ["**No.** No set measured helps, so no predictor can be shown to tell a set that helps from one that hurts: "
                  "a sign predictor would need sets of both signs. What the sets do show is whether a predictor orders how "
                  "much splitting costs (Δ, knowledge sets only, where Δ is one unit):", ""]
    lines += ["| predictor | sets | Spearman ρ with Δ | 95 % interval (bootstrap over sets) | orders the sets? |",
              "|---|---:|---:|---|---|"]
    for name, c in found.items():
        if c["sets"] < MIN_SETS:
            says = f"too few sets (< {MIN_SETS})"
        elif c["low"] <= 0 <= c["high"]:
            says = "no (interval includes 0)"
        else:
            says = "yes: higher, worse for splitting" if c["rho"] > 0 else "yes: higher, better for splitting"
        lines.append(f"| {PREDICTORS[name][0]} | {c['sets']} | {c['rho']:+.2f} | [{c['low']:+.2f}, {c['high']:+.2f}] | {says} |")
    lines += ["", "With so few sets the intervals are wide and the best of six predictors is chosen after looking; a "
              "predictor that orders these sets is a lead to test on new sets, not a rule to decide on. The sets share "
              "domains, methods and models, so they are not independent draws: the bootstrap over sets treats them as if "
              "they were, which makes its intervals, if anything, too narrow. Predictors measured only on two-subset sets "
              "(the edits') cover fewer sets."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from spunge_merge.fsutil import atomic_write_text, read_json, write_json

    previous = OUT / "per_set.json"
    stored = {r["key"]: r for r in read_json(previous)["rows"]} if previous.is_file() else {}
    rows = [with_predictors(r, stored) for study in KNOWLEDGE for r in knowledge_rows(study)]
    rows += [with_predictors(r, stored) for study in TOXIGEN for r in toxigen_rows(study)]
    summary = {"merge": MERGE, "toxigen_target": TOXIGEN_TARGET, "embedder": EMBEDDER, "bootstrap": BOOTSTRAP,
               "rows": rows, "correlations": correlations(rows)}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(previous, summary)
    text = render(summary)
    atomic_write_text(OUT / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
