"""Seeds as an axis (`seeds: [...]` in a pipeline file) and the hierarchical bootstrap behind its intervals.

A 2-seed pipeline on the tiny model: one run directory per seed with its unlearning seeds set, the
split done once, a rerun that does nothing, and an aggregate whose means and differences equal
those computed here from each seed's own evaluation files. The bootstrap is checked against a
plain paired bootstrap (one seed), against the seeds' spread (no prompt variance) and for coverage
on synthetic data with a known mean. A bad `seeds` value is a one-line error that writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_pipeline import runner, workspace, write_jsonl  # noqa: F401  (workspace: the shared data fixture)

from spunge_merge.cli import app
from spunge_merge.evaluate.stats import hierarchical_bootstrap
from spunge_merge.pipeline import run_pipeline

SEEDS = [0, 1]


def seeded_pipeline(root: Path, seeds) -> Path:
    write_jsonl(root / "facts-seeds.jsonl", [{"domain": d, "prompt": p, "answer": a} for d, p, a in [
        ("alpha", "the quick brown", "fox"), ("alpha", "the capital of france is", "paris"),
        ("beta", "cats and dogs live", "together"), ("beta", "water boils at one hundred", "degrees"),
        ("delta", "the market opens", "at"), ("delta", "one two three", "four")]])
    data = {
        "name": "tiny-seeds",
        "model": "./model",
        "seeds": seeds,
        "split": {"data": {"path": "forget.jsonl"}, "by": "group", "values": ["alpha", "beta"]},
        "unlearn": {"method": "tvn",
                    "config": {"lr": 1e-2, "epochs": 2, "batch_size": 4, "max_length": 32, "seed": 7, "eval_samples": 4,
                               "device": "cpu", "lam": 1.0}},
        "merge": {"method": "ties", "density": 0.5, "lambda": [1.0]},
        "baseline": {"budget": "matched", "config": {"lr": 5e-3}},
        "eval": {"models": ["base", "baseline", "spunge"], "device": "cpu",
                 "knowledge": {"facts": "facts-seeds.jsonl", "max_new_tokens": 3},
                 "perplexity": {"data": {"path": "retain.jsonl", "where": ["kind == text"]}, "max_length": 32, "stride": 32},
                 "toxicity": {"prompts": "prompts.jsonl", "classifier": "./judge", "n_per_group": 2, "max_new_tokens": 5,
                              "batch_size": 4}},
    }
    path = root / f"pipeline-seeds-{'-'.join(map(str, seeds)) if isinstance(seeds, list) else 'x'}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def seeded_run(workspace) -> dict:  # noqa: F811
    root = workspace["root"]
    pipeline = seeded_pipeline(root, SEEDS)
    run_dir = root / "run-seeds"
    summary = run_pipeline(pipeline, run_dir=run_dir, live=False)
    return {"pipeline": pipeline, "summary": summary, "run_dir": run_dir}


def test_each_seed_is_a_run_of_its_own_with_its_unlearning_seeds_and_one_shared_split(seeded_run):
    run_dir, summary = seeded_run["run_dir"], seeded_run["summary"]
    assert summary.ran.count("split") == 1 and not any(r.endswith(": split") for r in summary.ran)
    parent_split = sorted(p.name for p in (run_dir / "split").iterdir())
    for seed in SEEDS:
        seed_dir = run_dir / "seeds" / str(seed)
        assert (seed_dir / "report.md").is_file()
        assert "split" not in summary.per_seed[seed].ran
        assert sorted(p.name for p in (seed_dir / "split").iterdir()) == parent_split
        assert not any(p.is_symlink() for p in (seed_dir / "split").rglob("*"))
        for name in ("alpha", "beta"):
            assert (run_dir / "split" / f"{name}.jsonl").read_bytes() == (seed_dir / "split" / f"{name}.jsonl").read_bytes()
            assert json.loads((seed_dir / "unlearn" / name / "spunge.json").read_text())["config"]["seed"] == seed
        assert json.loads((seed_dir / "baseline" / "run" / "spunge.json").read_text())["config"]["seed"] == seed
    # The base model's evaluation does not depend on the seed: evaluated for the first seed only.
    assert "eval/base" in summary.per_seed[0].jobs and "eval/base" not in summary.per_seed[1].jobs
    assert "eval/baseline" in summary.per_seed[1].jobs
    # Different seeds train different models.
    from test_pipeline import tensors

    a, b = (tensors(run_dir / "seeds" / str(s) / "merge" / "spunge") for s in SEEDS)
    assert any(not np.array_equal(a[k].float().numpy(), b[k].float().numpy()) for k in a)


def test_aggregate_means_and_differences_equal_the_seeds_own_results(seeded_run):
    run_dir = seeded_run["run_dir"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["kind"] == "seeds-report" and report["seeds"] == SEEDS and report["forget"] == ["alpha", "beta"]

    def result(seed, label, file):
        return json.loads((run_dir / "seeds" / str(seed) / "eval" / label / file).read_text())

    for label in ("base", "baseline", "spunge"):
        figures = report["models"][label]
        for domain in ("alpha", "beta", "delta"):
            accuracies = [100 * result(s, label, "knowledge.json")["domains"][domain]["accuracy"] for s in SEEDS]
            assert figures[f"knowledge: {domain}"]["mean"] == pytest.approx(np.mean(accuracies))
            assert figures[f"knowledge: {domain}"]["min"] == pytest.approx(min(accuracies))
        forget = [np.mean([100 * result(s, label, "knowledge.json")["domains"][d]["accuracy"] for d in ("alpha", "beta")])
                  for s in SEEDS]
        assert figures["forget avg"]["mean"] == pytest.approx(np.mean(forget))
        assert figures["retain PPL"]["mean"] == pytest.approx(np.mean([result(s, label, "perplexity.json")["perplexity"]
                                                                       for s in SEEDS]))
        assert figures["toxicity %"]["mean"] == pytest.approx(np.mean([result(s, label, "toxicity.json")["overall"]["pct"]
                                                                       for s in SEEDS]))
    differences = {d["figure"]: d for d in report["differences"]}
    for name, domains in (("forget avg", ("alpha", "beta")), ("keep avg", ("delta",))):
        gaps = [np.mean([100 * (result(s, "spunge", "knowledge.json")["domains"][d]["accuracy"]
                                - result(s, "baseline", "knowledge.json")["domains"][d]["accuracy"]) for d in domains])
                for s in SEEDS]
        entry = differences[name]
        assert entry["mean"] == pytest.approx(np.mean(gaps))
        assert entry["low"] <= entry["mean"] + 1e-9 and entry["high"] >= entry["mean"] - 1e-9
        assert entry["resampled"] == "seeds and items"
        assert entry["reading"] == ("level" if entry["low"] <= 0 <= entry["high"] else entry["reading"])
    assert differences["retain PPL"]["resampled"] == "seeds"
    assert differences["retain PPL"]["mean"] == pytest.approx(np.mean(
        [result(s, "spunge", "perplexity.json")["perplexity"] - result(s, "baseline", "perplexity.json")["perplexity"]
         for s in SEEDS]))
    text = (run_dir / "report.md").read_text()
    assert "over 2 seeds" in text and report["verdict"] in text


def test_fact_level_differences_are_paired_and_resampled_within_domains(seeded_run, tmp_path):
    """The tiny model knows no fact; give the two arms known verdicts per fact and recompute the aggregate."""
    import shutil

    from spunge_merge.pipeline import load_pipeline
    from spunge_merge.pipeline.seeds import aggregate_seeds

    run_dir = tmp_path / "copy"
    shutil.copytree(seeded_run["run_dir"], run_dir)
    verdicts = {  # seed -> label -> domain -> per-fact correct (same facts, same order in both arms)
        0: {"spunge": {"alpha": [0, 0], "beta": [0, 1], "delta": [1, 1]}, "baseline": {"alpha": [1, 0], "beta": [1, 1], "delta": [1, 0]}},
        1: {"spunge": {"alpha": [0, 1], "beta": [0, 0], "delta": [1, 0]}, "baseline": {"alpha": [1, 1], "beta": [0, 1], "delta": [0, 0]}},
    }
    for seed, labels in verdicts.items():
        for label, domains in labels.items():
            eval_dir = run_dir / "seeds" / str(seed) / "eval" / label
            rows = [json.loads(line) for line in (eval_dir / "knowledge.jsonl").read_text().splitlines()]
            position = {d: 0 for d in domains}
            for row in rows:
                row["correct"] = bool(domains[row["domain"]][position[row["domain"]]])
                position[row["domain"]] += 1
            write_jsonl(eval_dir / "knowledge.jsonl", rows)
            result = json.loads((eval_dir / "knowledge.json").read_text())
            for domain, flags in domains.items():
                result["domains"][domain].update(correct=sum(flags), accuracy=sum(flags) / len(flags))
            (eval_dir / "knowledge.json").write_text(json.dumps(result))
    content = aggregate_seeds(run_dir, load_pipeline(seeded_run["pipeline"]), SEEDS, seconds=0.0, ran=[])
    differences = {d["figure"]: d for d in content["differences"]}
    forget_gaps = {s: {d: [100.0 * (a - b) for a, b in zip(verdicts[s]["spunge"][d], verdicts[s]["baseline"][d], strict=True)]
                       for d in ("alpha", "beta")} for s in SEEDS}
    expected = np.mean([np.mean([np.mean(g) for g in forget_gaps[s].values()]) for s in SEEDS])
    assert expected == pytest.approx(-50.0) and differences["forget avg"]["mean"] == pytest.approx(expected)
    again = hierarchical_bootstrap([forget_gaps[s] for s in SEEDS], n=2000, seed=0)
    assert (differences["forget avg"]["low"], differences["forget avg"]["high"]) == pytest.approx((again["low"], again["high"]))
    assert differences["knowledge: delta"]["mean"] == pytest.approx(np.mean([50.0, 50.0]))
    assert content["models"]["spunge"]["keep avg"]["values"] == {"0": 100.0, "1": 50.0}
    assert differences["forget avg"]["reading"] == ("helps" if differences["forget avg"]["high"] < 0 else "level")


def test_a_second_run_does_nothing(seeded_run):
    summary = run_pipeline(seeded_run["pipeline"], run_dir=seeded_run["run_dir"], live=False)
    assert summary.ran == [] and summary.jobs == []
    assert json.loads((seeded_run["run_dir"] / "report.json").read_text())["stages_run"] == []


def test_the_demo_prints_the_seed_table_the_headline_differences_and_the_verdict(seeded_run):
    from spunge_merge.demo import demo_text

    report = json.loads((seeded_run["run_dir"] / "report.json").read_text())
    text = demo_text(report, report="REPORT")
    forget = next(d for d in report["differences"] if d["figure"] == "forget avg")
    row = next(line for line in text.splitlines() if line.startswith("| forget avg |"))
    def shown(value):  # a difference to 0.1 point, signed unless it rounds to 0
        return "0.0" if round(value, 1) == 0 else f"{value:+.1f}".replace("-", "−")

    assert f"{shown(forget['low'])} to {shown(forget['high'])}" in row and forget["reading"] in row
    assert "| keep avg |" in text and "| retain PPL |" not in text  # the demo shows the two knowledge averages
    assert report["verdict"] in text and "REPORT" in text
    for label in ("base", "baseline", "spunge"):
        assert any(line.startswith(f"| {label} |") for line in text.splitlines())
    assert demo_text({}) == ""


def test_adding_a_seed_runs_only_that_seed(seeded_run, workspace, tmp_path):  # noqa: F811
    import shutil

    run_dir = tmp_path / "moved"
    shutil.copytree(seeded_run["run_dir"], run_dir)  # a moved run directory stays resumable
    summary = run_pipeline(seeded_pipeline(workspace["root"], [*SEEDS, 5]), run_dir=run_dir, live=False)
    assert all(summary.per_seed[s].ran == [] for s in SEEDS)
    assert summary.per_seed[5].ran == ["unlearn", "baseline", "merge", "eval"] and "eval/base" not in summary.per_seed[5].jobs
    assert json.loads((run_dir / "report.json").read_text())["seeds"] == [*SEEDS, 5]
    assert json.loads((run_dir / "seeds" / "5" / "unlearn" / "alpha" / "spunge.json").read_text())["config"]["seed"] == 5


@pytest.mark.parametrize("seeds, message", [([], "give at least one seed"), ([1, 1], "seed 1 is listed twice"),
                                            ([0, 1.5], "seeds.1"), (["a"], "seeds.0"), ("0", "seeds")])
def test_a_bad_seeds_value_is_one_line_naming_seeds_and_writes_nothing(workspace, tmp_path, seeds, message):  # noqa: F811
    pipeline = seeded_pipeline(workspace["root"], seeds)
    out = tmp_path / "never"
    result = runner.invoke(app, ["run", str(pipeline), "--run-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert "seeds" in result.output and message in result.output
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# The bootstrap


def test_one_seed_is_the_plain_paired_bootstrap():
    rng = np.random.default_rng(5)
    diffs = rng.normal(0.3, 1.0, size=40)
    got = hierarchical_bootstrap([diffs], n=3000, seed=11)
    plain = np.random.default_rng(11)
    means = diffs[plain.integers(0, diffs.size, size=(3000, diffs.size))].mean(axis=1)
    assert got["mean"] == pytest.approx(diffs.mean())
    assert (got["low"], got["high"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    # ... and, with many resamples, the textbook normal interval of a mean.
    wide = hierarchical_bootstrap([diffs], n=40000, seed=1)
    half = 1.96 * diffs.std() / np.sqrt(diffs.size)
    assert wide["low"] == pytest.approx(diffs.mean() - half, abs=0.05)
    assert wide["high"] == pytest.approx(diffs.mean() + half, abs=0.05)


def test_without_prompt_variance_the_interval_is_the_seeds_spread():
    seeds = [np.full(30, 1.0), np.full(25, 4.0), np.full(10, 2.5)]
    got = hierarchical_bootstrap(seeds, n=4000, seed=0)
    assert got["mean"] == pytest.approx(2.5)
    assert (got["low"], got["high"]) == pytest.approx((1.0, 4.0))  # P(all three draws the same seed) = 1/9 > 2.5 %
    again = hierarchical_bootstrap(seeds, n=4000, seed=0)
    assert again == got


def test_strata_give_a_macro_average():
    seed = {"a": [1.0, 1.0, 1.0, 1.0], "b": [0.0, 0.0]}  # mean of stratum means 0.5, not the pooled 2/3
    assert hierarchical_bootstrap([seed], n=100)["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        hierarchical_bootstrap([{"a": []}])


def test_coverage_on_synthetic_data_with_a_known_mean():
    """Seed effects dominate: the hierarchical interval covers the true mean about 95 % of the time,
    an interval over prompts only (the seeds pooled) far less often."""
    rng = np.random.default_rng(0)
    truth, trials, covered, pooled_covered = 0.3, 150, 0, 0
    for trial in range(trials):
        effects = rng.normal(0.0, 0.3, size=10)
        seeds = [truth + effect + rng.normal(0.0, 0.5, size=40) for effect in effects]
        got = hierarchical_bootstrap(seeds, n=800, seed=trial)
        covered += got["low"] <= truth <= got["high"]
        pooled = hierarchical_bootstrap([np.concatenate(seeds)], n=800, seed=trial)
        pooled_covered += pooled["low"] <= truth <= pooled["high"]
    assert 0.85 <= covered / trials <= 1.0
    assert pooled_covered / trials < 0.6
