"""Toxicity at matched utility over seeds (spunge_merge/evaluate/matched_toxicity.py) and the relative-change
bootstrap, against computations written out here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spunge_merge.evaluate.matched_toxicity import matched_toxicity, render
from spunge_merge.evaluate.stats import relative_change_bootstrap

GROUPS = ("women", "muslim")
PROMPTS = [(f"p{i}", GROUPS[i % 2]) for i in range(8)]


def write_point(directory: Path, retain_ppl: float, toxic: list[bool], non_text_pct: float = 0.0) -> None:
    directory.mkdir(parents=True)
    (directory / "perplexity.json").write_text(json.dumps({"kind": "perplexity", "perplexity": retain_ppl}))
    pct = 100.0 * sum(toxic) / len(toxic)
    (directory / "toxicity.json").write_text(json.dumps({"kind": "toxicity", "overall": {"pct": pct, "ci95": [0, 100],
                                                         "toxic": sum(toxic), "n": len(toxic)},
                                                         "non_text": {"overall": {"pct": non_text_pct}}}))
    (directory / "generations.jsonl").write_text("".join(
        json.dumps({"id": pid, "group": group, "toxic": flag, "generation": "words"}) + "\n"
        for (pid, group), flag in zip(PROMPTS, toxic, strict=True)))


def flags(seed: int, offset: int) -> list[bool]:
    return [bool(x) for x in np.random.default_rng(100 * seed + offset).random(len(PROMPTS)) < 0.5]


@pytest.fixture
def sweep(tmp_path):
    """Three seeds; base retain PPL 10; target ×1.1 = 11 lies halfway between each arm's two admissible points,
    and a non-text Spunge point sits nearer the target (it must be skipped)."""
    layout = {}
    for seed in range(3):
        root = tmp_path / str(seed) / "eval"
        write_point(root / "base", 10.0, flags(seed, 0))
        points = {"baseline-lam0.5": (10.5, flags(seed, 1), 0.0), "baseline-lam1": (11.5, flags(seed, 2), 0.0),
                  "spunge-lam1": (10.8, flags(seed, 3), 0.0), "spunge-lam2": (11.2, flags(seed, 4), 0.0),
                  "spunge-lam1.5": (10.95, flags(seed, 5), 60.0)}
        for label, (x, toxic, share) in points.items():
            write_point(root / label, x, toxic, share)
        layout[seed] = (root, points)
    return layout


def test_each_arm_is_read_per_prompt_between_its_bracketing_admissible_points(sweep):
    entry = matched_toxicity({seed: root for seed, (root, _) in sweep.items()}, [1.1])[0]
    diffs, spunge_means, baseline_means, worst = [], [], [], []
    for seed, (_, points) in sweep.items():
        baseline = 0.5 * 100 * np.array(points["baseline-lam0.5"][1], float) + 0.5 * 100 * np.array(points["baseline-lam1"][1], float)
        spunge = 0.5 * 100 * np.array(points["spunge-lam1"][1], float) + 0.5 * 100 * np.array(points["spunge-lam2"][1], float)
        diffs.append((spunge - baseline).mean())
        spunge_means.append(spunge.mean())
        baseline_means.append(baseline.mean())
        by_group = {arm: [values[[i for i, (_, g) in enumerate(PROMPTS) if g == group]].mean() for group in GROUPS]
                    for arm, values in (("s", spunge), ("b", baseline))}
        worst.append(max(by_group["s"]) - max(by_group["b"]))
        read = entry["seeds"][str(seed)]["spunge"]["points"]  # the non-text point nearer the target is skipped
        assert [label for label, _ in read] == ["spunge-lam1", "spunge-lam2"] and [w for _, w in read] == pytest.approx([0.5, 0.5])
    assert entry["difference"]["mean"] == pytest.approx(np.mean(diffs))
    assert entry["toxicity_pct"]["spunge"] == pytest.approx(np.mean(spunge_means))
    assert entry["relative"]["mean"] == pytest.approx(100 * (np.mean(spunge_means) / np.mean(baseline_means) - 1))
    assert entry["worst_group"]["mean"] == pytest.approx(np.mean(worst))
    assert entry["difference"]["low"] <= entry["difference"]["mean"] <= entry["difference"]["high"]
    assert "Toxicity at matched utility" in render([entry]) and entry["difference"]["verdict"] in render([entry])


def test_identical_arms_read_zero_with_a_zero_width_interval(sweep):
    for _, (root, _) in sweep.items():
        for label in ("spunge-lam1", "spunge-lam2", "spunge-lam1.5"):
            for name in ("generations.jsonl", "toxicity.json"):
                source = {"spunge-lam1": "baseline-lam0.5", "spunge-lam2": "baseline-lam1", "spunge-lam1.5": "baseline-lam1"}[label]
                (root / label / name).write_text((root / source / name).read_text())
            ppl = {"spunge-lam1": 10.5, "spunge-lam2": 11.5, "spunge-lam1.5": 12.0}[label]
            (root / label / "perplexity.json").write_text(json.dumps({"kind": "perplexity", "perplexity": ppl}))
    entry = matched_toxicity({seed: root for seed, (root, _) in sweep.items()}, [1.1])[0]
    for figure in ("difference", "worst_group"):
        assert (entry[figure]["mean"], entry[figure]["low"], entry[figure]["high"]) == (0.0, 0.0, 0.0)
    assert entry["difference"]["verdict"] == "level"


def test_the_relative_change_interval_is_the_paired_bootstrap_written_out():
    rng = np.random.default_rng(7)
    a, b = rng.random(30) * 100, rng.random(30) * 100 + 20
    result = relative_change_bootstrap([(a, b)], n=500, seed=3)
    picks = np.random.default_rng(3).integers(0, 30, size=(500, 30))  # one unit: no unit draw, the same picks for both arms
    replicate = 100 * (a[picks].mean(axis=1) / b[picks].mean(axis=1) - 1)
    assert result["mean"] == pytest.approx(100 * (a.mean() / b.mean() - 1))
    assert [result["low"], result["high"]] == pytest.approx(list(np.percentile(replicate, [2.5, 97.5])))
    with pytest.raises(ValueError, match="same items"):
        relative_change_bootstrap([(a, b[:10])])
