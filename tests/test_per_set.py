"""bench/per_set.py: every measured forget set's verdict beside its predictors, and whether a predictor orders them."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import per_set  # noqa: E402

FACTS = REPO / "bench" / "knowledge" / "facts-smollm2-135m.jsonl"


def test_spearman_is_the_correlation_of_average_ranks():
    # x ranks 1, 2.5, 2.5, 4 (a tie), y ranks 1, 2, 3, 4: Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    assert per_set.spearman([1.0, 2.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert per_set.spearman([3.0, 2.0, 1.0], [1.0, 5.0, 9.0]) == pytest.approx(-1.0)
    assert math.isnan(per_set.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_spearman_bootstrap_is_seeded_and_a_monotone_relation_stays_one():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    found = per_set.spearman_bootstrap(x, [v * v for v in x], n=300, seed=1)
    assert (found["rho"], found["low"], found["high"]) == pytest.approx((1.0, 1.0, 1.0)) and found["sets"] == 6
    y = [0.3, -1.0, 2.0, 0.1, 0.7, -0.2]
    assert per_set.spearman_bootstrap(x, y, n=300, seed=1) == per_set.spearman_bootstrap(x, y, n=300, seed=1)
    assert per_set.spearman_bootstrap(x, y, n=300, seed=1) != per_set.spearman_bootstrap(x, y, n=300, seed=2)


def test_centroid_similarity_is_the_mean_cosine_of_subset_centroids():
    a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])   # centroid (0.5, 0.5, 0)
    b = np.array([[1.0, 0.0, 0.0]])                    # centroid (1, 0, 0): cos with a's = 0.5 / 0.7071
    c = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])   # orthogonal to both
    assert per_set.centroid_similarity({"a": a, "b": b}) == pytest.approx(1 / math.sqrt(2))
    assert per_set.centroid_similarity({"a": a, "b": b, "c": c}) == pytest.approx((1 / math.sqrt(2) + 0 + 0) / 3)
    assert per_set.larger_over_smaller({"a": 28, "b": 5}) == pytest.approx(5.6)


def _study(tmp_path: Path, caps: dict | None) -> per_set.Study:
    """A plan over the repository's facts file and a stored summary with one forget set, TIES against the baseline."""
    model = {"facts": str(FACTS), "cost_scale": 1.0, **({"train_rows": caps} if caps else {})}
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"runs": str(tmp_path / "runs"), "results": str(tmp_path / "results"),
                                    "models": {"smollm2-135m": model}, "methods": ["npo"],
                                    "pairs": [["continents", "opposites"]], "merges": {"ties": {"method": "ties"}}}))
    matched = {"mean": 4.0, "low": 1.0, "high": 7.0, "n_seeds": 3, "verdict": "hurts"}
    entry = {"best": "ties", "units": 3, "merges": {"ties": {"matched_utility": matched}}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.json").write_text(json.dumps({"rows": [
        {"method": "npo", "model": "smollm2-135m", "pairs": ["continents+opposites"], "units": 3,
         "sets": {"continents+opposites": entry}}]}))
    return per_set.Study("pairs", str(tmp_path / "results"), str(plan))


def test_a_knowledge_row_reads_the_set_ties_verdict_and_its_training_texts(tmp_path):
    rows = per_set.knowledge_rows(_study(tmp_path, None))
    assert len(rows) == 1
    row = rows[0]
    assert row["difference"] == {"mean": 4.0, "low": 1.0, "high": 7.0, "verdict": "hurts"}
    assert row["subsets"] == ["continents", "opposites"] and row["edits"] is None  # no interference summary for it
    facts = [json.loads(line) for line in FACTS.read_text().splitlines() if line.strip()]
    for domain in ("continents", "opposites"):
        expected = [f["text"] for f in facts if f["part"] == "train" and f["domain"] == domain]
        assert row["texts"][domain] == expected and expected


def test_a_capped_domain_counts_the_rows_its_cell_trained_on(tmp_path):
    row = per_set.knowledge_rows(_study(tmp_path, {"opposites": 5}))[0]
    facts = [json.loads(line) for line in FACTS.read_text().splitlines() if line.strip()]
    whole = {f["text"] for f in facts if f["part"] == "train" and f["domain"] == "opposites"}
    assert len(row["texts"]["opposites"]) == 5 and set(row["texts"]["opposites"]) <= whole
    assert len(row["texts"]["continents"]) == sum(f["part"] == "train" and f["domain"] == "continents" for f in facts)


def test_predictors_come_from_the_stored_read_out_where_the_texts_are_gone():
    stored = {"ToxiGen|npo|m|5 groups": {"rows": {"a": 10, "b": 20}, "size_ratio": 2.0, "embedding_similarity": 0.4,
                                         "subsets": ["a", "b"]}}
    row = per_set.with_predictors({"study": "ToxiGen", "method": "npo", "model": "m", "set": "5 groups", "subsets": [],
                                   "texts": None}, stored)
    assert row["size_ratio"] == 2.0 and row["embedding_similarity"] == 0.4 and row["subsets"] == ["a", "b"]
    missing = per_set.with_predictors({"study": "ToxiGen", "method": "tvn", "model": "m", "set": "5 groups", "subsets": [],
                                       "texts": None}, stored)
    assert math.isnan(missing["size_ratio"]) and missing["rows"] == {}


def _row(name: str, mean: float, verdict: str, ratio: float) -> dict:
    return {"study": "pairs", "task": "knowledge", "method": "rmu", "model": "m", "set": name, "subsets": ["a", "b"],
            "units": 3, "difference": {"mean": mean, "low": mean - 1, "high": mean + 1, "verdict": verdict},
            "figure": "Δ forget avg, points", "results": "bench/results/x/summary.md", "command": "python x",
            "rows": {"a": 10, "b": int(10 * ratio)}, "size_ratio": ratio, "embedding_similarity": 0.5, "edits": None}


def test_the_text_says_no_predictor_gives_the_sign_only_when_no_set_helps():
    rows = [_row(f"s{i}", 2.0 * i, "hurts", 1.0 + i) for i in range(6)]
    summary = {"rows": rows, "correlations": per_set.correlations(rows)}
    assert summary["correlations"]["size_ratio"]["rho"] == pytest.approx(1.0)
    text = per_set.render(summary)
    assert "helps 0, level 0, no verdict 0, hurts 6" in text and "**No.** No set measured helps" in text
    assert "| size ratio (largest / smallest subset) | 6 | +1.00 | [+1.00, +1.00] | yes: higher, worse for splitting |" in text
    # embedding similarity is the same for every set: no ρ, so no row
    assert "embedding similarity (centroid cosine) |" not in text
    rows[0] = _row("s0", -5.0, "helps", 1.0)
    text = per_set.render({"rows": rows, "correlations": per_set.correlations(rows)})
    assert "helps 1," in text and "**No.**" not in text
    few = per_set.correlations(rows[:4])
    assert "too few sets (< 6)" in per_set.render({"rows": rows[:4], "correlations": few})
