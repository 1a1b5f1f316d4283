"""`spunge run`: a whole pipeline on the tiny model (TVN and RMU), checked against the stages' own
public functions called directly; resume (a second run does no work, a changed setting redoes only
what depends on it); `kill -9` mid-stage then rerun gives the uninterrupted run's tensors bit for
bit; pipeline-file errors name their key; the Ray executor gives the local executor's files; every
shipped recipe validates."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.knowledge import answer_matches
from spunge_merge.pipeline import load_pipeline, run_pipeline
from spunge_merge.pipeline.schema import parse_pipeline, resolve_path

REPO = Path(__file__).resolve().parents[1]
GROUPS = ("alpha", "beta", "gamma")
runner = CliRunner()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tensors(directory: Path) -> dict[str, torch.Tensor]:
    found = {}
    for file in sorted(directory.glob("*.safetensors")):
        found.update(load_file(file))
    return found


def assert_same_tensors(left: Path, right: Path) -> None:
    a, b = tensors(left), tensors(right)
    assert a and sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def workspace(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Data, a tiny toxicity judge and the pipeline files, all in one folder (paths in the files are relative)."""
    from conftest import TINY_CORPUS
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("pipeline")
    rows = [{"text": f"{text} {i}", "group": GROUPS[i % 3]} for i, text in enumerate(TINY_CORPUS * 3)]
    write_jsonl(root / "forget.jsonl", rows)
    write_jsonl(root / "retain.jsonl", [{"text": f"the market {t}", "kind": "text"} for t in TINY_CORPUS] +
                [{"text": "= heading =", "kind": "heading"}])
    write_jsonl(root / "facts.jsonl", [{"domain": d, "prompt": p, "answer": a} for d, p, a in [
        ("alpha", "the quick brown", "fox"), ("alpha", "the capital of france is", "paris"),
        ("beta", "cats and dogs live", "together"), ("beta", "water boils at one hundred", "degrees")]])
    write_jsonl(root / "prompts.jsonl", [{"prompt": f"- {t}\n-", "group": g, "label": lab}
                                        for g in ("women", "muslim") for lab in ("hate", "neutral") for t in TINY_CORPUS[:2]])
    # A stub-free judge: a real (random) sequence classifier built here, with the tiny model's tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=2, pad_token_id=tokenizer.pad_token_id,
                         id2label={0: "non_toxic", 1: "toxic"}, label2id={"non_toxic": 0, "toxic": 1})
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(root / "judge")
    tokenizer.save_pretrained(root / "judge")
    (root / "model").symlink_to(tiny_model)
    return {"root": root}


def tvn_pipeline(root: Path, **changes) -> Path:
    data = {
        "name": "tiny-tvn",
        "model": "./model",
        "split": {"data": {"path": "forget.jsonl"}, "by": "group"},
        "unlearn": {"method": "tvn",
                    "config": {"lr": 1e-2, "epochs": 2, "batch_size": 4, "max_length": 32, "seed": 0, "eval_samples": 4,
                               "device": "cpu", "lam": 1.0},
                    "overrides": {"beta": {"lr": 2e-2}}},
        "merge": {"method": "ties", "density": 0.5, "lambda": [1.0]},
        "baseline": {"budget": "matched", "config": {"lr": 5e-3}, "lambda": [1.0, 0.5]},
        "eval": {"models": ["base", "baseline", "spunge"], "device": "cpu",
                 "knowledge": {"facts": "facts.jsonl", "max_new_tokens": 3},
                 "perplexity": {"data": {"path": "retain.jsonl", "where": ["kind == text"]}, "max_length": 32, "stride": 32},
                 "toxicity": {"prompts": "prompts.jsonl", "classifier": "./judge", "n_per_group": 1, "max_new_tokens": 5,
                              "batch_size": 4},
                 "fluency": {"judge": "./model", "max_length": 32}},
    }
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            data[section] = {**data[section], field: value}
        else:
            data[section] = value
    path = root / f"pipeline-{abs(hash(json.dumps(changes, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tvn_run(workspace) -> dict:
    root = workspace["root"]
    pipeline = tvn_pipeline(root)
    summary = run_pipeline(pipeline, run_dir=root / "run-tvn", live=False)
    return {"pipeline": pipeline, "summary": summary, "run_dir": root / "run-tvn"}


# ------------------------------------------------------------------------------------------------
# End to end, TVN


def test_tvn_pipeline_end_to_end_matches_the_stages_called_directly(tvn_run, workspace, tiny_model, tmp_path):
    from spunge_merge.data.split import split_dataset
    from spunge_merge.merge import merge_runs
    from spunge_merge.unlearn.tvn import train_tvn

    run_dir, summary = tvn_run["run_dir"], tvn_run["summary"]
    root = workspace["root"]
    assert summary.ran == ["split", "unlearn", "baseline", "merge", "eval"]

    # Split + per-subset runs: the same adapters as `spunge unlearn tvn` on the split directory, per-subset override included.
    split_dataset(root / "forget.jsonl", by="group", out=tmp_path / "split")
    config = yaml.safe_load(tvn_run["pipeline"].read_text())["unlearn"]["config"]
    train_tvn(str(tiny_model), tmp_path / "split", tmp_path / "runs", {**config}, progress=False)
    train_tvn(str(tiny_model), tmp_path / "split" / "beta.jsonl", tmp_path / "beta-override", {**config, "lr": 2e-2}, progress=False)
    for group in ("alpha", "gamma"):
        assert_same_tensors(run_dir / "unlearn" / group, tmp_path / "runs" / group)
    assert_same_tensors(run_dir / "unlearn" / "beta", tmp_path / "beta-override")
    manifest = json.loads((run_dir / "unlearn" / "manifest.json").read_text())
    assert [(r["name"], r["value"], r["rows"]) for r in manifest["runs"]] == [(g, g, 7) for g in GROUPS]
    record = json.loads((run_dir / "unlearn" / "beta" / "spunge.json").read_text())
    assert record["attribute"] == {"column": "group", "value": "beta"} and record["config"]["lr"] == 2e-2

    # Merge: bit-identical to merge_runs on the unlearn output, and loadable by transformers.
    merge_runs(str(tiny_model), [run_dir / "unlearn"], tmp_path / "merged", method="ties", density=0.5, lam=1.0, progress=False)
    assert_same_tensors(run_dir / "merge" / "spunge", tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "merge" / "spunge")

    # Baseline: one run on the union with as many optimizer steps as the three split runs together.
    split_steps = [json.loads((run_dir / "unlearn" / g / "spunge.json").read_text())["result"]["steps"] for g in GROUPS]
    baseline = json.loads((run_dir / "baseline" / "run" / "spunge.json").read_text())
    assert baseline["result"]["steps"] == sum(split_steps) == 12  # 3 runs × (7 rows / batch 4 → 2 steps) × 2 epochs
    assert baseline["data"]["rows"] == 21 and baseline["config"]["lr"] == 5e-3
    # Each negation λ is base − λ·(α/r)·B·A of the trained (un-negated) adapter, computed here.
    base = load_file(Path(tiny_model) / "model.safetensors")
    adapter = load_file(run_dir / "baseline" / "run" / "unnegated" / "adapter_model.safetensors")
    key = next(k for k in adapter if ".layers.0." in k and "q_proj.lora_A" in k)
    delta = adapter[key.replace("lora_A", "lora_B")] @ adapter[key]  # α/r = 16/16
    name = "model.layers.0.self_attn.q_proj.weight"
    for label, lam in (("baseline-lam1", 1.0), ("baseline-lam0.5", 0.5)):
        weight = tensors(run_dir / "baseline" / "models" / label)[name]
        torch.testing.assert_close(weight, base[name] - lam * delta, rtol=0, atol=1e-6)

    # Eval: one folder per model with every evaluation, and the comparison of the three.
    labels = ["base", "baseline-lam1", "baseline-lam0.5", "spunge"]
    for label in labels:
        files = {p.name for p in (run_dir / "eval" / label).iterdir()}
        assert {"knowledge.json", "perplexity.json", "toxicity.json", "generations.jsonl", "fluency.json"} <= files
    knowledge = json.loads((run_dir / "eval" / "spunge" / "knowledge.json").read_text())
    completions = [json.loads(line) for line in (run_dir / "eval" / "spunge" / "knowledge.jsonl").read_text().splitlines()]
    for domain in ("alpha", "beta"):  # accuracy recounted from the completions
        mine = [answer_matches(c["completion"], c["answer"]) for c in completions if c["domain"] == domain]
        assert knowledge["domains"][domain]["correct"] == sum(mine) and knowledge["domains"][domain]["n"] == 2
    retain_texts = [json.loads(line)["text"] for line in (run_dir / "inputs" / "eval-perplexity.jsonl").read_text().splitlines()]
    assert len(retain_texts) == 7 and "= heading =" not in retain_texts  # the `where` filter of eval.perplexity.data
    compare = json.loads((run_dir / "eval" / "compare" / "compare.json").read_text())
    assert [row["label"] for row in compare["rows"]] == labels
    report = (run_dir / "report.md").read_text()
    assert "baseline-lam0.5" in report and "| spunge |" in report and summary.report == run_dir / "report.md"
    assert "[unlearn] beta: done" in (run_dir / "pipeline.log").read_text()


def test_second_run_does_no_work_and_a_changed_setting_redoes_only_what_depends_on_it(tvn_run, workspace):
    import shutil

    run_dir = workspace["root"] / "run-tvn-copy"  # a copy: a moved run directory stays resumable
    shutil.copytree(tvn_run["run_dir"], run_dir, symlinks=True)
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")}
    again = run_pipeline(tvn_run["pipeline"], run_dir=run_dir, live=False)
    assert again.ran == [] and again.jobs == []
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*.safetensors")} == stamps

    # A second merge λ: no unlearning again, one new merged model, its evaluation and the new comparison.
    changed = tvn_pipeline(workspace["root"], **{"merge.lambda": [1.0, 0.5]})
    result = run_pipeline(changed, run_dir=run_dir, live=False, accept_changes=True)  # without it: refused (see test_outputs_safe)
    assert result.ran == ["merge", "eval"]
    assert not any(j.startswith(("unlearn/", "baseline/")) for j in result.jobs)
    assert sorted(result.merged) == ["spunge-lam0.5", "spunge-lam1"]
    assert "eval/base" not in result.jobs and "eval/spunge-lam0.5" in result.jobs
    for group in GROUPS:
        run = run_dir / "unlearn" / group / "adapter_model.safetensors"
        assert run.stat().st_mtime_ns == stamps[run]


# ------------------------------------------------------------------------------------------------
# Interrupted runs


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"the pipeline ended (code {process.returncode}) before the moment to kill it")
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the moment to kill the pipeline")


def test_kill_9_mid_stage_then_rerun_gives_the_uninterrupted_tensors(workspace):
    root = workspace["root"]
    pipeline = tvn_pipeline(root, **{"unlearn.config": {"lr": 1e-2, "epochs": 20, "batch_size": 4, "max_length": 32, "seed": 0,
                                                        "eval_samples": 0, "device": "cpu"},
                                     "baseline": {"enabled": False},
                                     "eval": {"models": ["spunge"], "device": "cpu", "perplexity": {"data": "retain.jsonl"}}})
    reference = run_pipeline(pipeline, run_dir=root / "kill-reference", live=False)
    killed = root / "kill-run"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "spunge_merge", "run", str(pipeline), "--run-dir", str(killed)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_done = killed / ".spunge-state" / "unlearn__alpha.json"
    try:
        _wait_for(lambda: first_done.is_file() and json.loads(first_done.read_text())["status"] == "done", process)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    stage = json.loads((killed / ".spunge-state" / "stage__unlearn.json").read_text())
    assert stage["status"] == "started"  # killed inside the unlearn stage, after its first run
    assert not (killed / "merge").exists()

    resumed = run_pipeline(pipeline, run_dir=killed, live=False)
    assert "unlearn/alpha" not in resumed.jobs and "unlearn/gamma" in resumed.jobs  # the finished run is kept
    assert not list((killed / "unlearn").glob(".*tmp*"))  # the killed run's temporary directory is gone
    for group in GROUPS:
        assert_same_tensors(killed / "unlearn" / group, root / "kill-reference" / "unlearn" / group)
    assert_same_tensors(killed / "merge" / "spunge", reference.merged["spunge"])


# ------------------------------------------------------------------------------------------------
# RMU end to end


def test_rmu_pipeline_baseline_alternates_corpora_with_the_same_budget(workspace, tiny_model, tmp_path):
    from spunge_merge.unlearn.rmu import RMUConfig, train_rmu

    root = workspace["root"]
    config = {"layer": 3, "update_layers": [2, 3], "steering_coeff": 6.5, "alpha": 10.0, "lr": 1e-3, "batch_size": 2,
              "epochs": 2, "seed": 0, "device": "cpu"}
    pipeline = tvn_pipeline(root, **{"name": "tiny-rmu",
                                     "unlearn": {"method": "rmu", "config": config,
                                                 "retain": {"path": "retain.jsonl", "where": ["kind == text"]}},
                                     "baseline": {"budget": "matched", "lambda": [1.0, 0.5]},
                                     "eval": {"models": ["base", "baseline", "spunge"], "device": "cpu",
                                              "perplexity": {"data": "retain.jsonl", "max_length": 32, "stride": 32}},
                                     "push": {"repo_id": "someone/tiny-spunge", "dry_run": True, "runs": True}})
    from spunge_merge.pipeline.plan import plan_pipeline

    planned = plan_pipeline(pipeline, run_dir=tmp_path / "run")  # before the run: counts only, nothing written
    assert not (tmp_path / "run").exists() and planned["seconds_per_step"] is None
    assert [j["steps"] for j in planned["jobs"]["unlearn"]] == [8, 8, 8] and planned["jobs"]["baseline"][0]["steps"] == 24
    summary = run_pipeline(pipeline, run_dir=tmp_path / "run", live=False)
    assert summary.ran[-1] == "push"
    pushed = json.loads((tmp_path / "run" / "push.json").read_text())  # a dry run: checked and listed, nothing sent
    assert pushed["dry_run"] and pushed["repo_id"] == "someone/tiny-spunge"
    assert {"config.json", "spunge.json", "README.md"} <= {f["path"] for f in pushed["files"]}
    # push.runs: every per-subset run too, each RMU delta materialized into a full model with its own card
    assert [r["repo_id"] for r in pushed["runs"]] == [f"someone/tiny-spunge-{g}" for g in GROUPS]
    for run in pushed["runs"]:
        assert {"config.json", "model.safetensors", "README.md"} <= {f["path"] for f in run["files"]} and run["dry_run"]
        assert "One subset of the forget data" in run["card"] and "rmu" in run["card"]
    assert {"eval/spunge/perplexity.json", "eval/compare/compare.md"} <= {f["path"] for f in pushed["files"]}  # its evaluations
    from huggingface_hub import ModelCard

    scores = ModelCard(pushed["card"]).data.eval_results  # this model's perplexity in the Hub's model-index
    own = json.loads((tmp_path / "run" / "eval" / "spunge" / "perplexity.json").read_text())["perplexity"]
    assert [(r.metric_type, r.metric_value) for r in scores] == [("retain_ppl", pytest.approx(own))]
    for card in [pushed["card"], *(run["card"] for run in pushed["runs"])]:  # the retain source and filter as written
        assert re.search(r"^- retain\.jsonl: 7 texts, \d+ used.* \(rows kept where kind == text\)$", card, flags=re.MULTILINE), card
    run_dir = tmp_path / "run"
    split_steps = {g: json.loads((run_dir / "unlearn" / g / "spunge.json").read_text())["result"]["steps"] for g in GROUPS}
    assert split_steps == {g: 8 for g in GROUPS}  # min(150, ⌈7/2⌉ forget, ⌈7/2⌉ retain batches) × 2 epochs
    log_text = (run_dir / "pipeline.log").read_text()  # each training job's step counter, first to last step
    for group in GROUPS:
        assert f"[unlearn] {group}: step 1/8" in log_text and f"[unlearn] {group}: step 8/8" in log_text
    assert re.search(r"\[baseline\] [^\n]*: step 24/24", log_text)
    # planned again, the cost per step is the one these runs measured (RMU records elapsed_s)
    runs = [*(run_dir / "unlearn").glob("*/spunge.json"), run_dir / "baseline" / "run" / "spunge.json"]
    per_step = sorted(r["result"]["elapsed_s"] / r["result"]["steps"] for r in (json.loads(p.read_text()) for p in runs))
    replanned = plan_pipeline(pipeline, run_dir=run_dir)
    assert replanned["measured_runs"] == len(per_step) == 4
    assert replanned["seconds_per_step"] == pytest.approx((per_step[1] + per_step[2]) / 2)  # the median of four
    assert replanned["training_seconds"] == pytest.approx(replanned["seconds_per_step"] * (3 * 8 + 24))
    baseline = json.loads((run_dir / "baseline" / "run" / "spunge.json").read_text())
    assert baseline["result"]["steps"] == 24 and len(baseline["data"]["forget"]) == 3  # alternating over the 3 subsets
    assert {h["corpus"] for h in baseline["result"]["history"]} == {0, 1, 2}
    # The split run equals train_rmu on the split subset with the same retain text.
    retain = run_dir / "inputs" / "retain.jsonl"
    assert len(retain.read_text().splitlines()) == 7
    train_rmu(str(tiny_model), run_dir / "split" / "beta.jsonl", retain, tmp_path / "direct", RMUConfig(**config), progress=False)
    assert_same_tensors(run_dir / "unlearn" / "beta", tmp_path / "direct")
    merged = tensors(summary.merged["spunge"])
    base = tensors(Path(tiny_model))
    changed = sorted(name for name in base if not torch.equal(base[name], merged[name]))
    assert changed == [f"model.layers.{i}.mlp.down_proj.weight" for i in (2, 3)]
    # Baseline models per λ without retraining: the run itself at 1, base + λ·(run − base) otherwise.
    run = load_file(run_dir / "baseline" / "run" / "delta.safetensors")
    name = "model.layers.3.mlp.down_proj.weight"
    assert torch.equal(tensors(run_dir / "baseline" / "models" / "baseline-lam1")[name], run[name])
    torch.testing.assert_close(tensors(run_dir / "baseline" / "models" / "baseline-lam0.5")[name],
                               base[name] + 0.5 * (run[name] - base[name]), rtol=0, atol=1e-6)
    rows = json.loads((run_dir / "eval" / "compare" / "compare.json").read_text())["rows"]
    assert [row["label"] for row in rows] == ["base", "baseline-lam1", "baseline-lam0.5", "spunge"]


# ------------------------------------------------------------------------------------------------
# Pipeline files


GOOD = {"name": "x", "model": "m", "split": {"data": "d.jsonl", "by": "g"}, "unlearn": {"method": "tvn"},
        "eval": {"perplexity": {"data": "r.jsonl"}}}


@pytest.mark.parametrize("change, message", [
    ({"unlearn": {"method": "tvn", "config": {"lr": -1}}}, "unlearn.config.lr: Input should be greater than 0"),
    ({"unlearn": {"method": "tvn", "confg": {}}}, "unlearn.confg: Extra inputs are not permitted"),
    ({"unlearn": {"method": "tvn", "overrides": {"g1": {"rank": 0}}}, "split": {"data": "d.jsonl", "by": "g", "values": ["g1"]}},
     "unlearn.overrides.g1.rank: Input should be greater than or equal to 1"),
    ({"unlearn": {"method": "tvn", "overrides": {"nope": {}}}, "split": {"data": "d.jsonl", "by": "g", "values": ["g1"]}},
     "unlearn.overrides.nope: no such subset"),
    ({"unlearn": {"method": "rmu"}}, "unlearn: method 'rmu' needs `retain` data"),
    ({"unlearn": {"method": "tvn", "retain": "r.jsonl"}}, "unlearn: method 'tvn' uses no retain data"),
    ({"unlearn": {"method": "sgd"}}, "unlearn.method: unknown unlearning method 'sgd' (available: "),
    ({"baseline": {"rmu_corpora": "alternating"}}, "method 'tvn' runs the baseline on the subsets as union only"),
    ({"merge": {"lambda": "big"}}, "merge.lambda.0: Input should be a valid number"),
    ({"baseline": {"config": {"epochs": 0}}}, "baseline.config.epochs: Input should be greater than or equal to 1"),
    ({"baseline": {"budget": "same"}}, "baseline.budget: Input should be 'matched' or 'config'"),
    ({"eval": {"perplexity": {"data": "r.jsonl", "strid": 3}}}, "eval.perplexity.strid: unknown setting"),
    ({"eval": {"toxicity": {"n_per_group": 3}}}, "eval.toxicity.prompts: required"),
    ({"eval": {"perplexity": {"data": {"path": "r.jsonl", "wher": []}}}}, "eval.perplexity.data.wher: Extra inputs"),
    ({"eval": {"perplexity": {"data": "r.jsonl"}, "screen": {"targets": []}}}, "eval.screen.targets: List should have at least 1 item"),
    ({"eval": {"perplexity": {"data": "r.jsonl"}, "screen": {"targets": [1.1], "metric": "ppl"}}},
     "eval.screen.metric: unknown metric 'ppl' (known: fluency_ppl, retain_ppl, utility)"),
    ({"eval": {"knowledge": {"facts": "f.jsonl"}, "screen": {"targets": [1.1]}}},
     "screen: its metric retain_ppl comes from perplexity: add a `perplexity` section"),
    ({"eval": {"models": ["spunge"], "perplexity": {"data": "r.jsonl"}, "screen": {"targets": [1.1]}}},
     "screen: its targets are multiples of the base model's figure"),
    ({"split": {"by": "g"}}, "split: give `data` and `by`"),
    ({"name": "a b"}, "name: String should match pattern"),
])
def test_pipeline_file_errors_name_the_key(change, message):
    with pytest.raises(SpungeError) as error:
        parse_pipeline({**GOOD, **change}, "p.yaml")
    assert str(error.value).startswith("p.yaml: ") and message in str(error.value)


def test_a_parsed_pipeline_holds_the_methods_own_settings_with_overrides_and_baseline_changes_applied():
    from pydantic import ValidationError

    from spunge_merge.unlearn.rmu import RMUConfig
    from spunge_merge.unlearn.tvn import TVNConfig

    pipeline = parse_pipeline({**GOOD, "split": {"data": "d.jsonl", "by": "g", "values": ["g1", "g2"]},
                               "unlearn": {"method": "tvn", "config": {"lr": 1e-3, "rank": 4},
                                           "overrides": {"g1": {"lr": 2e-3}}},
                               "baseline": {"config": {"epochs": 3}}}, "p.yaml")
    config = pipeline.unlearn.config
    assert type(config) is TVNConfig and (config.lr, config.rank) == (1e-3, 4)
    assert config.epochs == TVNConfig.model_fields["epochs"].default and config.model_fields_set == {"lr", "rank"}
    g1 = pipeline.unlearn.overrides["g1"]
    assert type(g1) is TVNConfig and (g1.lr, g1.rank, g1.epochs) == (2e-3, 4, config.epochs)
    assert g1.model_fields_set == {"lr", "rank"}  # what a run's fingerprint records: the keys given
    baseline = pipeline.baseline.config
    assert type(baseline) is TVNConfig and (baseline.lr, baseline.rank, baseline.epochs) == (1e-3, 4, 3)
    assert parse_pipeline(GOOD).baseline.config == TVNConfig()  # no baseline section: unlearn.config as it is
    with pytest.raises(ValidationError, match="frozen"):  # a stage cannot change a setting behind the fingerprint's back
        config.lr = 1.0  # type: ignore[misc]
    # another method: its own class, through the registry
    rmu = parse_pipeline({**GOOD, "unlearn": {"method": "rmu", "retain": "r.jsonl", "config": {"steering_coeff": 6.5}}})
    assert type(rmu.unlearn.config) is RMUConfig and rmu.unlearn.config.steering_coeff == 6.5


def test_jobs_carry_the_function_itself_and_the_settings_object(workspace, tmp_path, monkeypatch):
    """Every job's function is a callable that pickles by reference; the training jobs get each run's settings object
    (the subset's override applied, the baseline's changes and matched budget) and use it without validating again."""
    import pickle

    from spunge_merge.merge.settings import MergeSettings
    from spunge_merge.pipeline import executors, jobs
    from spunge_merge.unlearn.tvn import TVNConfig

    seen, validations, running = [], [], []
    real_run_job, real_validate = executors.run_job, TVNConfig.model_validate.__func__

    def recording_run_job(job, threads=None):
        seen.append(job)
        running.append(job.key)
        try:
            return real_run_job(job, threads)
        finally:
            running.pop()

    def counting_validate(cls, *args, **kwargs):
        validations.append(running[-1] if running else "driver")
        return real_validate(cls, *args, **kwargs)

    monkeypatch.setattr(executors, "run_job", recording_run_job)
    monkeypatch.setattr(TVNConfig, "model_validate", classmethod(counting_validate))
    pipeline = tvn_pipeline(workspace["root"], **{"baseline.lambda": [1.0], "eval": {
        "models": ["spunge"], "device": "cpu", "perplexity": {"data": "retain.jsonl", "max_length": 32, "stride": 32}}})
    run_pipeline(pipeline, run_dir=tmp_path / "run", live=False)
    by_key = {job.key: job for job in seen}
    assert {"unlearn/alpha", "unlearn/beta", "unlearn/gamma", "baseline/run", "merge/spunge", "eval/spunge"} <= set(by_key)
    for job in seen:
        assert callable(job.function) and pickle.loads(pickle.dumps(job)).function is job.function
    assert by_key["unlearn/alpha"].function is jobs.train
    configs = {key: by_key[key].kwargs["config"] for key in ("unlearn/alpha", "unlearn/beta", "baseline/run")}
    assert all(type(c) is TVNConfig for c in configs.values())
    assert (configs["unlearn/alpha"].lr, configs["unlearn/beta"].lr, configs["baseline/run"].lr) == (1e-2, 2e-2, 5e-3)
    recorded = json.loads((tmp_path / "run" / "unlearn" / "beta" / "spunge.json").read_text())
    assert recorded["config"]["lr"] == 2e-2
    steps = {name: json.loads((tmp_path / "run" / name / "spunge.json").read_text())["result"]["steps"]
             for name in ("unlearn/alpha", "unlearn/beta", "unlearn/gamma", "baseline/run")}
    assert steps["baseline/run"] == sum(steps.values()) - steps["baseline/run"]  # the matched budget
    merge = by_key["merge/spunge"].kwargs["settings"]
    assert type(merge) is MergeSettings and (merge.density, merge.lam, merge.method) == (0.5, 1.0, "ties")
    assert "driver" in validations  # the counter counts (the pipeline file is parsed in this run)
    assert [key for key in validations if key != "driver"] == []  # the jobs validate no settings again


def test_cli_reports_a_broken_pipeline_in_one_line_with_exit_code_2(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({**GOOD, "merge": {"densty": 0.5}}), encoding="utf-8")
    result = runner.invoke(app, ["run", str(broken)])
    assert result.exit_code == 2
    assert "merge.densty: Extra inputs are not permitted" in result.output and "Traceback" not in result.output


def test_set_changes_one_setting_for_one_run_and_the_run_directory_records_it(workspace, tmp_path):
    pipeline = tvn_pipeline(workspace["root"])
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["run", str(pipeline), "--run-dir", str(run_dir), "--only", "split",
                                 "--set", "split.values=[gamma, beta]", "--set", "baseline.config.lr=2e-5"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((run_dir / "split" / "manifest.json").read_text())
    assert [s["value"] for s in manifest["subsets"]] == ["gamma", "beta"]
    recorded = load_pipeline(run_dir / "pipeline.yaml")  # the settings as run, not the file's text
    assert recorded.split.values == ["gamma", "beta"] and recorded.baseline.config.lr == 2e-5
    assert recorded.baseline.config == recorded.unlearn.config.model_copy(update={"lr": 2e-5})  # the rest as unlearn.config
    assert list(recorded.unlearn.overrides) == ["beta"] and recorded.unlearn.overrides["beta"].lr == 2e-2  # untouched settings kept
    assert yaml.safe_load(pipeline.read_text())["split"].get("values") is None  # the file itself is unchanged


@pytest.mark.parametrize("assignment, message", [
    ("merge.lambda", "--set 'merge.lambda': expected KEY.PATH=VALUE"),
    ("merge..lambda=1", "expected KEY.PATH=VALUE"),
    ("name.x=1", "--set name.x: name is not a mapping"),
    ("merge.densty=0.5", "merge.densty: Extra inputs are not permitted"),
    ("merge.lambda=[1, ", "--set merge.lambda: value is not valid YAML"),
])
def test_set_errors_name_the_key_and_exit_2(workspace, tmp_path, assignment, message):
    result = runner.invoke(app, ["run", str(tvn_pipeline(workspace["root"])), "--run-dir", str(tmp_path / "r"), "--set", assignment])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_only_refuses_a_stage_whose_predecessors_have_not_run(workspace, tmp_path):
    with pytest.raises(SpungeError, match="stage 'split' before it has not run"):
        run_pipeline(tvn_pipeline(workspace["root"]), run_dir=tmp_path / "fresh", only="merge", live=False)


PIPELINE_RECIPES = {"demo", "toxigen-smollm2-tvn", "toxigen-smollm2-rmu", "toxigen-zephyr-tvn", "toxigen-zephyr-rmu",
                    "toxigen-llama2-tvn", "toxigen-llama2-rmu", "wmdp-zephyr-rmu", "toxicity-type-tvn"}


def test_every_pipeline_recipe_validates_and_the_demo_recipe_is_the_shipped_demo():
    # recipes/ also holds method settings files (`spunge unlearn rmu --config`): a pipeline has model, split and unlearn,
    # or extends one that has.
    files = sorted((REPO / "recipes").glob("*.yaml"))
    recipes = [p for p in files if {"model", "split", "unlearn"} <= set(keys := yaml.safe_load(p.read_text())) or "extends" in keys]
    assert PIPELINE_RECIPES | {"bench-toxigen-smollm2-tvn", "bench-toxigen-smollm2-rmu", "demo-loss-methods"} <= {p.stem for p in recipes}
    for recipe in recipes:
        load_pipeline(recipe)
    shipped = load_pipeline(REPO / "spunge_merge" / "demo" / "pipeline.yaml")
    recipe = load_pipeline(REPO / "recipes" / "demo.yaml")
    assert recipe.model_dump(exclude={"split", "unlearn", "eval"}) == shipped.model_dump(exclude={"split", "unlearn", "eval"})
    pairs = [(recipe.split.data.path, shipped.split.data.path), (recipe.eval.knowledge["facts"], shipped.eval.knowledge["facts"]),
             (recipe.unlearn.retain[0].path, shipped.unlearn.retain[0].path)]
    for left, right in pairs:
        assert resolve_path(left, REPO / "recipes") == resolve_path(right, REPO / "spunge_merge" / "demo")
    assert recipe.unlearn.config == shipped.unlearn.config


# ------------------------------------------------------------------------------------------------
# Ray


def test_ray_executor_writes_the_local_executors_files(tvn_run, workspace):
    pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install 'spunge-merge[ray]')")
    root = workspace["root"]
    # Same unlearning and merge settings as the local run; a lighter evaluation (one model, perplexity).
    pipeline = tvn_pipeline(root, eval={"models": ["spunge"], "device": "cpu", "perplexity": {"data": "retain.jsonl"}})
    summary = run_pipeline(pipeline, run_dir=root / "run-ray", executor="ray", live=False)
    assert summary.ran == ["split", "unlearn", "baseline", "merge", "eval"]
    assert "(tvn, ray executor)" in (root / "run-ray" / "pipeline.log").read_text()
    local = tvn_run["run_dir"]
    for group in GROUPS:
        assert_same_tensors(root / "run-ray" / "unlearn" / group, local / "unlearn" / group)
    assert_same_tensors(root / "run-ray" / "baseline" / "run", local / "baseline" / "run")
    assert_same_tensors(root / "run-ray" / "merge" / "spunge", local / "merge" / "spunge")
    from spunge_merge.evaluate import evaluate_perplexity

    theirs = evaluate_perplexity(str(local / "merge" / "spunge"), root / "retain.jsonl", root / "ray-check", device="cpu",
                                 progress=False)
    mine = json.loads((root / "run-ray" / "eval" / "spunge" / "perplexity.json").read_text())
    assert mine["perplexity"] == theirs["perplexity"]


# ------------------------------------------------------------------------------------------------
# The demo's data and its knowledge probe


@pytest.mark.parametrize("completion, answer, expected", [
    (" Paris.\n\nThe answer", "Paris", True),
    (" the Euro.", "euro", True),
    (' "Rome" is', "Rome", True),
    (" Mexico City, the", "Mexico City", True),
    (" C.", "C", True),
    (" carbon.", "C", False),       # the answer must be a whole word, not a prefix
    (" Helios.", "He", False),
    (" Mexican food", "Mexico", False),
    (" the capital of Poland", "Warsaw", False),
])
def test_a_fact_counts_when_the_completion_starts_with_the_whole_answer(completion, answer, expected):
    assert answer_matches(completion, answer) is expected


def test_shipped_demo_facts_are_consistent():
    rows = [json.loads(line) for line in (REPO / "spunge_merge" / "demo" / "facts.jsonl").read_text().splitlines()]
    domains = {r["domain"] for r in rows}
    assert domains == {"capitals", "elements", "languages", "opposites", "landmarks"}
    assert all(r["text"] == f"{r['prompt']} {r['answer']}." for r in rows)
    assert len({r["prompt"] for r in rows}) == len(rows)  # no fact twice, so train and held-out never overlap
    for domain in domains:
        parts = [r["part"] for r in rows if r["domain"] == domain]
        assert parts.count("heldout") >= 14 and parts.count("train") >= 20


@pytest.mark.parametrize("form", ["choice", "completion"])
def test_report_describes_the_knowledge_form_that_was_run(tiny_model, tmp_path, form):
    """A pipeline with `knowledge.form: choice` reports choice accuracy as such, never as 'Greedy completion'."""
    from types import SimpleNamespace

    from spunge_merge.data.split import split_dataset
    from spunge_merge.evaluate.knowledge import evaluate_knowledge
    from spunge_merge.pipeline.runner import _knowledge_section

    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"domain": d, "prompt": p, "answer": a}) + "\n" for d, p, a in (
        ("capitals", "The capital of France is", "Paris"), ("capitals", "The capital of Spain is", "Madrid"),
        ("capitals", "The capital of Italy is", "Rome"), ("capitals", "The capital of Japan is", "Tokyo"),
        ("capitals", "The capital of Peru is", "Lima"))), encoding="utf-8")
    data = tmp_path / "forget.jsonl"
    data.write_text("".join(json.dumps({"text": f"fact {i}", "domain": "capitals"}) + "\n" for i in range(3)), encoding="utf-8")
    run_dir = tmp_path / "run"
    split_dataset(data, by="domain", out=run_dir / "split")
    for label in ("base", "spunge"):
        evaluate_knowledge(str(tiny_model), facts, run_dir / "eval" / label, form=form, device="cpu", max_new_tokens=3)
    text, figures = _knowledge_section(SimpleNamespace(run_dir=run_dir), {"base": "x", "spunge": "y"})
    assert set(figures) == {"base", "spunge"}
    if form == "choice":
        assert "4-option choice" in text and "chance 25 %" in text
        assert "completion" not in text.lower()
    else:
        assert "Greedy completion; a fact counts when the completion starts with its answer" in text and "choice" not in text
