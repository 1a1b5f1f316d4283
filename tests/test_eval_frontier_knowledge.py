"""`spunge eval frontier` on a tiny `spunge run` with a λ sweep over 2 seeds, and `spunge eval compare --arm` on
knowledge evaluations: the read-out's numbers against an interpolation and a bootstrap written here.

The tiny random model knows no fact, so each evaluated model's per-fact verdicts are set here (the layout, the
λ read from the labels and the models' provenance, the split's forgotten domains are the pipeline's own)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_pipeline import runner, workspace, write_jsonl  # noqa: F401  (workspace: the shared data fixture)

from spunge_merge.cli import app
from spunge_merge.evaluate.stats import hierarchical_bootstrap
from spunge_merge.pipeline import run_pipeline

LAMBDAS = [0.5, 1.0, 2.0]
FORGET, KEEP = ["alpha", "beta"], ["delta", "gamma"]


@pytest.fixture(scope="module")
def sweep_run(workspace) -> Path:  # noqa: F811
    root = workspace["root"]
    write_jsonl(root / "facts-frontier.jsonl", [{"domain": d, "prompt": f"the {d} word {i} is", "answer": f"w{i}"}
                                               for d in FORGET + KEEP for i in range(4)])
    data = {
        "name": "tiny-frontier", "model": "./model", "seeds": [0, 1],
        "split": {"data": {"path": "forget.jsonl"}, "by": "group", "values": ["alpha", "beta"]},
        "unlearn": {"method": "tvn", "config": {"lr": 1e-2, "epochs": 1, "batch_size": 4, "max_length": 32, "seed": 7,
                                                "eval_samples": 4, "device": "cpu", "lam": 1.0}},
        "merge": {"method": "ties", "density": 0.5, "lambda": LAMBDAS},
        "baseline": {"budget": "matched", "lambda": LAMBDAS},
        "eval": {"models": ["base", "baseline", "spunge"], "device": "cpu",
                 "knowledge": {"facts": "facts-frontier.jsonl", "max_new_tokens": 2},
                 "perplexity": {"data": {"path": "retain.jsonl", "where": ["kind == text"]}, "max_length": 32, "stride": 32}},
    }
    path = root / "pipeline-frontier.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    run_dir = root / "run-frontier"
    run_pipeline(path, run_dir=run_dir, live=False)
    return run_dir


# seed → label → domain → per-fact verdicts. Keep avg over delta + gamma (8 facts, 12.5 points each of a domain).
BASE = {d: [1, 1, 1, 1] for d in FORGET + KEEP}
VERDICTS = {
    0: {"baseline-lam0.5": {"alpha": [1, 1, 0, 0], "beta": [1, 0, 0, 0], "delta": [1, 1, 1, 1], "gamma": [1, 1, 1, 1]},
        "baseline-lam1": {"alpha": [0, 0, 0, 0], "beta": [1, 0, 0, 0], "delta": [1, 1, 1, 0], "gamma": [1, 1, 1, 1]},
        "baseline-lam2": {"alpha": [0, 0, 0, 0], "beta": [0, 0, 0, 0], "delta": [1, 0, 0, 0], "gamma": [1, 1, 0, 0]},
        "spunge-lam0.5": {"alpha": [1, 1, 1, 0], "beta": [1, 1, 0, 0], "delta": [1, 1, 1, 1], "gamma": [1, 1, 1, 1]},
        "spunge-lam1": {"alpha": [1, 0, 0, 0], "beta": [1, 1, 0, 0], "delta": [1, 1, 1, 1], "gamma": [1, 1, 1, 0]},
        "spunge-lam2": {"alpha": [0, 0, 0, 0], "beta": [0, 0, 0, 0], "delta": [1, 1, 0, 0], "gamma": [1, 1, 1, 0]}},
    1: {"baseline-lam0.5": {"alpha": [1, 0, 0, 0], "beta": [1, 1, 0, 0], "delta": [1, 1, 1, 1], "gamma": [1, 1, 1, 0]},
        "baseline-lam1": {"alpha": [0, 0, 0, 0], "beta": [0, 0, 0, 0], "delta": [1, 1, 0, 0], "gamma": [1, 1, 1, 1]},
        "baseline-lam2": {"alpha": [0, 0, 0, 0], "beta": [0, 0, 0, 0], "delta": [0, 0, 0, 0], "gamma": [1, 0, 0, 0]},
        "spunge-lam0.5": {"alpha": [1, 1, 1, 1], "beta": [1, 1, 1, 0], "delta": [1, 1, 1, 1], "gamma": [1, 1, 1, 1]},
        "spunge-lam1": {"alpha": [1, 1, 0, 0], "beta": [1, 0, 0, 0], "delta": [1, 1, 1, 0], "gamma": [1, 1, 1, 1]},
        "spunge-lam2": {"alpha": [0, 0, 0, 0], "beta": [1, 0, 0, 0], "delta": [1, 0, 0, 0], "gamma": [1, 1, 0, 0]}},
}


def _set_verdicts(eval_dir: Path, domains: dict[str, list[int]]) -> None:
    rows = [json.loads(line) for line in (eval_dir / "knowledge.jsonl").read_text().splitlines()]
    position = dict.fromkeys(domains, 0)
    for row in rows:
        row["correct"] = bool(domains[row["domain"]][position[row["domain"]]])
        position[row["domain"]] += 1
    write_jsonl(eval_dir / "knowledge.jsonl", rows)
    result = json.loads((eval_dir / "knowledge.json").read_text())
    for domain, flags in domains.items():
        result["domains"][domain].update(correct=sum(flags), accuracy=sum(flags) / len(flags))
    (eval_dir / "knowledge.json").write_text(json.dumps(result))
    (eval_dir / "perplexity.json").write_text(json.dumps({**json.loads((eval_dir / "perplexity.json").read_text()),
                                                          "perplexity": 20.0}))


@pytest.fixture
def known_run(sweep_run, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(sweep_run, run_dir, symlinks=True)
    for seed, labels in VERDICTS.items():
        _set_verdicts(run_dir / "seeds" / str(seed) / "eval" / "base", BASE)
        for label, domains in labels.items():
            _set_verdicts(run_dir / "seeds" / str(seed) / "eval" / label, domains)
    return run_dir


def _at_keep(seed: int, arm: str, target: float) -> dict[str, list[float]]:
    """Per forgotten fact, the arm's verdict where its keep avg first falls to `target` (linear in λ, base = λ 0)."""
    curve = [(0.0, BASE)] + [(lam, VERDICTS[seed][f"{arm}-lam{lam:g}"]) for lam in LAMBDAS]
    keep = [100 * np.mean([np.mean(v[d]) for d in KEEP]) for _, v in curve]
    for i in range(len(curve) - 1):
        if keep[i] >= target > keep[i + 1]:
            w = (keep[i] - target) / (keep[i] - keep[i + 1])
            return {d: [100 * ((1 - w) * a + w * b) for a, b in zip(curve[i][1][d], curve[i + 1][1][d], strict=True)]
                    for d in FORGET}
    raise AssertionError("the designed curves all cross the target")


def test_frontier_of_a_run_with_a_lambda_sweep_matches_an_independent_read_out(known_run, tmp_path):
    out = tmp_path / "frontier"
    result = runner.invoke(app, ["eval", "frontier", str(known_run), "--out", str(out), "--min-seeds", "2"])
    assert result.exit_code == 0, result.output
    found = json.loads((out / "frontier.json").read_text())
    assert found["forget"] == FORGET and found["seeds"] == ["0", "1"]
    diffs = []
    for seed in (0, 1):
        spunge, baseline = _at_keep(seed, "spunge", 95.0), _at_keep(seed, "baseline", 95.0)
        diffs.append({d: [a - b for a, b in zip(spunge[d], baseline[d], strict=True)] for d in FORGET})
    expected = np.mean([np.mean([np.mean(v) for v in unit.values()]) for unit in diffs])
    again = hierarchical_bootstrap(diffs, n=2000, seed=0)
    matched = found["row"]["merges"]["spunge"]["matched_utility"]
    assert matched["mean"] == pytest.approx(expected)
    assert (matched["low"], matched["high"]) == pytest.approx((again["low"], again["high"]))
    # seed 0: baseline keep 100 → 87.5 from λ 0.5 to 1: w = 0.4, λ 0.7; Spunge keep 100 → 87.5 from λ 0.5 to 1, λ 0.7
    assert matched["baseline_lambda"][0] == pytest.approx(0.7) and matched["spunge_lambda"][0] == pytest.approx(0.7)
    word = "hurts" if again["low"] > 0 else "helps" if again["high"] < 0 else "no verdict"
    assert matched["verdict"] == word or (word == "no verdict" and matched["verdict"] == "level")
    # at λ = 1, Spunge − baseline forget avg per seed, averaged
    one = [100 * (np.mean([np.mean(VERDICTS[s]["spunge-lam1"][d]) for d in FORGET])
                  - np.mean([np.mean(VERDICTS[s]["baseline-lam1"][d]) for d in FORGET])) for s in (0, 1)]
    assert found["row"]["merges"]["spunge"]["lambda_1"]["forget"]["mean"] == pytest.approx(np.mean(one))
    text = (out / "frontier.md").read_text(encoding="utf-8")
    assert "One held-out fact is 25 points of its domain's accuracy (4 facts per domain) and 12.5 points of the forget avg" in text
    assert "| retain PPL |" in text and "toxicity" not in text.lower() and "fluency" not in text.lower()
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same request again is read back, not recomputed; other settings need --force
    assert runner.invoke(app, ["eval", "frontier", str(known_run), "--out", str(out), "--min-seeds", "2"]).exit_code == 0
    other = runner.invoke(app, ["eval", "frontier", str(known_run), "--out", str(out), "--keep-drop", "10"])
    assert other.exit_code == 2 and "--force" in other.output


def test_compare_with_arms_of_knowledge_evaluations_draws_the_knowledge_frontier(known_run, tmp_path):
    """`spunge eval compare --base eval/base --arm ...` on knowledge evaluations used to fail with `no toxicity.json`."""
    seed = known_run / "seeds" / "0" / "eval"
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["eval", "compare", "--base", str(seed / "base"), "--arm", f"baseline={seed}/baseline-lam*",
                                 "--arm", f"spunge={seed}/spunge-lam*", "--forget", "alpha,beta", "--out", str(out)])
    assert result.exit_code == 0, result.output
    found = json.loads((out / "frontier.json").read_text())
    # λ from each model's provenance: the same points as the run's labels
    assert [p["lambda"] for p in found["curves"]["spunge"]["0"]] == LAMBDAS
    spunge, baseline = _at_keep(0, "spunge", 95.0), _at_keep(0, "baseline", 95.0)
    expected = np.mean([np.mean(spunge[d]) - np.mean(baseline[d]) for d in FORGET])
    assert found["row"]["merges"]["spunge"]["matched_utility"]["mean"] == pytest.approx(expected)
    assert found["row"]["merges"]["spunge"]["matched_utility"]["verdict"] == "no verdict"  # one seed
    one_arm = runner.invoke(app, ["eval", "compare", "--base", str(seed / "base"), "--arm", f"npo={seed}/spunge-lam1",
                                  "--forget", "alpha,beta", "--out", str(tmp_path / "one")])
    assert one_arm.exit_code == 0, one_arm.output
    assert "nothing to compare it with" in (tmp_path / "one" / "frontier.md").read_text(encoding="utf-8")
    missing = runner.invoke(app, ["eval", "compare", "--base", str(seed / "base"), "--arm", f"npo={seed}/spunge-lam1",
                                  "--out", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "--forget" in missing.output and not (tmp_path / "none").exists()


def _tree_hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where, relation", [(".", "contains the input"), ("seeds", "contains the input"),
                                             ("seeds/0/eval/base", "is the input"), ("..", "contains the input")])
def test_a_frontier_never_writes_over_into_or_around_what_it_reads(known_run, where, relation):
    """The read-out's output may be no evaluation it reads, nor hold one (the run, its seeds, a folder above it), even
    with --force; RUN/eval/frontier, its default, is none of them. Refused in one line, every file unchanged."""
    root = known_run.parent
    before = _tree_hashes(root)
    out = (known_run / where).resolve()
    result = runner.invoke(app, ["eval", "frontier", str(known_run), "--out", str(out), "--force"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and relation in lines[0] and "Traceback" not in result.output
    assert _tree_hashes(root) == before
    arms = runner.invoke(app, ["eval", "compare", "--base", str(known_run / "seeds/0/eval/base"),
                               "--arm", f"spunge={known_run}/seeds/0/eval/spunge-lam*", "--forget", "alpha,beta",
                               "--out", str(known_run / "seeds/0/eval/spunge-lam1"), "--force"])
    assert arms.exit_code == 2 and "is the input" in arms.output and _tree_hashes(root) == before
    assert runner.invoke(app, ["eval", "frontier", str(known_run)]).exit_code == 0  # the default, beside the evaluations
