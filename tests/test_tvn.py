"""TVN: the negated adapter against θ_init − λ·(alpha/r)·B·A computed here, training lowers the
forget loss, split mode, resume, re-negation, gradient accumulation, and every CLI refusal."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import TINY_CORPUS
from safetensors.torch import load_file
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.data.split import split_dataset
from spunge_merge.errors import SpungeError
from spunge_merge.runs import list_runs
from spunge_merge.unlearn import lm_data, registry
from spunge_merge.unlearn.tvn import TVNConfig, negate_output, negate_run, train_tvn
from spunge_merge.unlearn.tvn import training as tvn_training  # where train_tvn looks up fit_lora, load_training_base

runner = CliRunner()
LAM = 0.7  # not 1, so a forgotten or doubled λ shows
TRAIN = {"lr": 5e-3, "epochs": 3, "batch_size": 4, "target_modules": "all-linear", "lam": LAM, "eval_samples": 8}
SHORT = {"lr": 1e-3, "max_steps": 3, "batch_size": 4}
PEFT_PREFIX = "base_model.model."


def spunge(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def forget_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("forget") / "forget.jsonl", [{"text": t} for t in TINY_CORPUS * 3])


@pytest.fixture(scope="module")
def trained_run(tiny_model, forget_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tvn") / "run"
    outcomes = train_tvn(str(tiny_model), forget_file, out, TRAIN, progress=False)
    assert [o.skipped for o in outcomes] == [False]
    return out


def expected_weights(base_dir: Path, adapter_dir: Path, lam: float) -> tuple[dict, dict]:
    """θ_init − λ·(alpha/r)·B·A for every adapted module, from the base and the UN-negated adapter files."""
    base = load_file(base_dir / "model.safetensors")
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    expected = {}
    for key, a in adapter.items():
        if key.endswith(".lora_A.weight"):
            module = key[len(PEFT_PREFIX):-len(".lora_A.weight")]
            b = adapter[key.replace(".lora_A.", ".lora_B.")]
            expected[f"{module}.weight"] = base[f"{module}.weight"] - lam * scale * (b.double() @ a.double()).float()
    return base, expected


def forget_nll(model, tokenizer, texts) -> float:
    """Token-weighted mean NLL through the model's own `labels=` loss, one text at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]])
            loss = model(input_ids=ids, labels=ids).loss
            total += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def lora_b(path: Path) -> dict:
    return {k: v for k, v in load_file(path / "adapter_model.safetensors").items() if ".lora_B." in k}


# --------------------------------------------------------------------------------------------


def test_negated_adapter_merged_by_peft_equals_independent_formula(tiny_model, trained_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, expected = expected_weights(tiny_model, trained_run / "unnegated", LAM)
    assert len(expected) == 8 * 7  # all-linear on 8 Llama layers: q k v o gate up down (lm_head excluded)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), trained_run).merge_and_unload()
    state = merged.state_dict()
    for name, weight in base.items():
        if name in expected:
            assert not torch.equal(expected[name], weight), f"{name}: the adapter changed nothing"
            assert torch.allclose(state[name], expected[name], atol=1e-6, rtol=1e-5), name
        else:
            assert torch.equal(state[name], weight), f"{name} should be untouched"


def test_mergekit_base_plus_adapter_syntax_gives_the_same_weights(tiny_model, trained_run, tmp_path):
    from mergekit.common import ModelReference

    merged = ModelReference.parse(f"{tiny_model}+{trained_run}").merged(cache_dir=str(tmp_path))
    weights = {}
    for shard in Path(merged.model.path).glob("*.safetensors"):
        weights.update(load_file(shard))
    _, expected = expected_weights(tiny_model, trained_run / "unnegated", LAM)
    for name, value in expected.items():
        assert torch.allclose(weights[name], value, atol=1e-6, rtol=1e-5), name


def test_training_lowered_the_forget_loss_and_negation_raised_it(tiny_model, trained_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    texts = TINY_CORPUS
    base_nll = forget_nll(AutoModelForCausalLM.from_pretrained(tiny_model).eval(), tokenizer, texts)
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), trained_run / "unnegated").eval()
    negated = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), trained_run).eval()
    trained_nll = forget_nll(trained, tokenizer, texts)
    negated_nll = forget_nll(negated, tokenizer, texts)
    assert trained_nll < base_nll - 0.05, (base_nll, trained_nll)
    assert negated_nll > base_nll + 0.05, (base_nll, negated_nll)

    record = json.loads((trained_run / "spunge.json").read_text())
    result = record["result"]
    assert result["steps"] == len(result["losses"]) == 3 * 6  # 21 texts / batch 4 → 6 steps per epoch
    assert result["final_loss"] == result["losses"][-1] < result["losses"][0]
    assert result["forget_nll"]["trained"] < result["forget_nll"]["base"] < result["forget_nll"]["negated"]


def test_spunge_json_records_what_made_the_run(tiny_model, forget_file, trained_run):
    from spunge_merge.fsutil import sha256_texts

    record = json.loads((trained_run / "spunge.json").read_text())
    assert record["kind"] == "tvn-adapter" and record["method"] == "tvn"
    assert record["base_model"]["path"] == str(Path(tiny_model).resolve())
    assert record["config"]["rank"] == 16 and record["config"]["lam"] == LAM and record["config"]["lr"] == 5e-3
    assert record["data"]["sha256"] == sha256_texts(TINY_CORPUS * 3) and record["data"]["rows"] == 21
    assert record["attribute"] is None and record["seed"] == 42
    assert record["result"]["lambda"] == LAM
    assert "peft" in record["versions"] and record["spunge_version"]
    assert (trained_run / "unnegated" / "adapter_config.json").is_file()
    umask = os.umask(0)
    os.umask(umask)
    for weights in (trained_run / "adapter_model.safetensors", trained_run / "unnegated" / "adapter_model.safetensors"):
        assert stat.S_IMODE(weights.stat().st_mode) == 0o666 & ~umask  # readable like any other file, not 0600
    method = registry.get_method("tvn")
    assert method.config_class is TVNConfig and method.retain == "none" and method.output_kind(TVNConfig()) == "peft-adapter"


def test_split_mode_resume_and_relambda(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    split = tmp_path / "split"
    split_dataset(tiny_dataset, by="group", out=split, values=["alpha", "beta"])
    out = tmp_path / "runs"
    first = train_tvn(str(tiny_model), split, out, SHORT, progress=False)
    assert [(o.name, o.skipped) for o in first] == [("alpha", False), ("beta", False)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "unlearn-runs" and manifest["method"] == "tvn"
    assert [(r["name"], r["value"], r["path"]) for r in manifest["runs"]] == [("alpha", "alpha", "alpha"), ("beta", "beta", "beta")]
    for name in ("alpha", "beta"):
        record = json.loads((out / name / "spunge.json").read_text())
        assert record["attribute"] == {"column": "group", "value": name}
        assert record["result"]["steps"] == 2  # 7 texts / batch 4, capped by max_steps=3
    # The second subset trained on the reused base model equals a fresh single-file run: nothing leaks between subsets.
    alone = train_tvn(str(tiny_model), split / "beta.jsonl", tmp_path / "beta-alone", SHORT, progress=False)
    assert alone[0].skipped is False
    for key, value in load_file(out / "beta" / "unnegated" / "adapter_model.safetensors").items():
        assert torch.equal(value, load_file(tmp_path / "beta-alone" / "unnegated" / "adapter_model.safetensors")[key])

    # Resume: nothing is trained (training or loading the model would raise), nothing is rewritten.
    def refuse(*args, **kwargs):
        raise AssertionError("resumed run must not train")

    monkeypatch.setattr(tvn_training, "fit_lora", refuse)
    monkeypatch.setattr(tvn_training, "load_training_base", refuse)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    again = train_tvn(str(tiny_model), split, out, SHORT, progress=False)
    assert [o.skipped for o in again] == [True, True]
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}

    # Only λ changed: the trained adapters are reused and re-negated, still without training.
    train_tvn(str(tiny_model), split, out, {**SHORT, "lam": 0.5}, progress=False)
    for name in ("alpha", "beta"):
        unnegated = lora_b(out / name / "unnegated")
        for key, value in lora_b(out / name).items():
            assert torch.allclose(value, -0.5 * unnegated[key])
        assert json.loads((out / name / "spunge.json").read_text())["result"]["lambda"] == 0.5

    # A real settings change without --force is refused instead of silently mixing runs.
    with pytest.raises(SpungeError, match="different settings"):
        train_tvn(str(tiny_model), split, out, {**SHORT, "lr": 1e-4}, progress=False)


def test_interrupted_split_run_resumes(tiny_model, tiny_dataset, tmp_path, monkeypatch):
    split = tmp_path / "split"
    split_dataset(tiny_dataset, by="group", out=split, values=["alpha", "beta"])
    out = tmp_path / "runs"
    real_fit, calls = tvn_training.fit_lora, []

    def dies_on_second_subset(*args, **kwargs):
        calls.append(kwargs["label"])
        if calls == ["alpha", "beta"]:  # the first attempt at beta dies
            raise RuntimeError("simulated crash")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(tvn_training, "fit_lora", dies_on_second_subset)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_tvn(str(tiny_model), split, out, {**SHORT, "max_steps": 1}, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["alpha", "manifest.json"]  # no half-written beta
    with pytest.raises(SpungeError, match="beta.*not finished"):
        list_runs(out)  # a later stage refuses the incomplete output
    outcomes = train_tvn(str(tiny_model), split, out, {**SHORT, "max_steps": 1}, progress=False)
    assert [(o.name, o.skipped) for o in outcomes] == [("alpha", True), ("beta", False)]
    assert calls == ["alpha", "beta", "beta"]
    assert (out / "manifest.json").is_file() and (out / "beta" / "adapter_model.safetensors").is_file()


def test_negate_in_place_into_out_and_a_whole_output(trained_run, tmp_path):
    unnegated = lora_b(trained_run / "unnegated")
    unnegated_bytes = (trained_run / "unnegated" / "adapter_model.safetensors").read_bytes()

    copy = negate_run(trained_run, 2.5, tmp_path / "copy")
    assert json.loads((copy / "spunge.json").read_text())["result"]["lambda"] == 2.5
    assert json.loads((trained_run / "spunge.json").read_text())["result"]["lambda"] == LAM  # source untouched

    negate_output(trained_run, 0.25)  # in place
    for key, value in lora_b(trained_run).items():
        assert torch.allclose(value, -0.25 * unnegated[key])
    assert (trained_run / "unnegated" / "adapter_model.safetensors").read_bytes() == unnegated_bytes
    assert json.loads((trained_run / "spunge.json").read_text())["result"]["lambda"] == 0.25
    negate_output(trained_run, LAM)  # back, for the other tests of this module
    for key, value in lora_b(trained_run).items():
        assert torch.allclose(value, -LAM * unnegated[key])

    with pytest.raises(SpungeError, match=">= 0"):
        negate_run(trained_run, -1.0)
    with pytest.raises(SpungeError, match="not a TVN run"):
        negate_run(tmp_path, 1.0)


def test_negate_cli_on_a_split_output(tiny_model, tiny_dataset, tmp_path):
    split = tmp_path / "split"
    split_dataset(tiny_dataset, by="group", out=split, values=["alpha", "gamma"])
    runs = tmp_path / "runs"
    train_tvn(str(tiny_model), split, runs, {**SHORT, "max_steps": 1}, progress=False)
    result = spunge("negate", runs, "--lambda", "0.5", "--out", tmp_path / "half")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "half" / "manifest.json").read_text())["kind"] == "unlearn-runs"
    for name in ("alpha", "gamma"):
        unnegated = lora_b(runs / name / "unnegated")
        for key, value in lora_b(tmp_path / "half" / name).items():
            assert torch.allclose(value, -0.5 * unnegated[key])


def test_gradient_accumulation_matches_one_big_batch(tiny_model, forget_file, tmp_path):
    common = {"lr": 1e-3, "max_steps": 2, "lora_dropout": 0.0, "eval_samples": 0, "lr_scheduler": "constant"}
    big = train_tvn(str(tiny_model), forget_file, tmp_path / "big", {**common, "batch_size": 8}, progress=False)[0]
    small = train_tvn(str(tiny_model), forget_file, tmp_path / "acc", {**common, "batch_size": 4, "grad_accum": 2},
                      progress=False)[0]
    big_losses = json.loads((big.path / "spunge.json").read_text())["result"]["losses"]
    small_losses = json.loads((small.path / "spunge.json").read_text())["result"]["losses"]
    assert big_losses == pytest.approx(small_losses, rel=1e-5)
    small_b = lora_b(small.path)
    for key, value in lora_b(big.path).items():
        assert torch.allclose(value, small_b[key], atol=1e-6)


def test_lm_data_keeps_eos_targets_when_pad_is_eos():
    batch = lm_data.collate([[5, 6, 1], [7, 1]], pad_id=1)
    assert batch.input_ids.tolist() == [[5, 6, 1], [7, 1, 1]]
    assert batch.labels.tolist() == [[5, 6, 1], [7, 1, -100]]
    assert batch.tokens == 3
    assert lm_data.optimizer_steps(21, batch_size=4, grad_accum=2, epochs=2) == 6  # 6 micro-batches → 3 steps per epoch
    assert lm_data.optimizer_steps(21, batch_size=4, grad_accum=1, epochs=3, max_steps=5) == 5


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_happy_path(tiny_model, forget_file, tmp_path):
    out = tmp_path / "run"
    result = spunge("unlearn", "tvn", "--model", tiny_model, "--forget", forget_file, "--out", out,
                    "--max-steps", "2", "--lr", "1e-3", "--target-modules", "q_proj,down_proj", "--lambda", "0.5",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert "trained" in result.output
    record = json.loads((out / "spunge.json").read_text())
    assert record["result"]["target_modules"] == ["down_proj", "q_proj"] and record["result"]["lambda"] == 0.5
    again = spunge("unlearn", "tvn", "--model", tiny_model, "--forget", forget_file, "--out", out,
                   "--max-steps", "2", "--lr", "1e-3", "--target-modules", "q_proj,down_proj", "--lambda", "0.5")
    assert again.exit_code == 0 and "already done" in again.output
    # A YAML file gives settings; an option given on the command line wins over it.
    settings = tmp_path / "tvn.yaml"
    settings.write_text("rank: 4\nlam: 0.3\nmax_steps: 1\ntarget_modules: [k_proj]\n", encoding="utf-8")
    result = spunge("unlearn", "tvn", "--model", tiny_model, "--forget", forget_file, "--out", tmp_path / "yaml-run",
                    "--config", settings, "--lambda", "0.6", "--no-progress")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "yaml-run" / "spunge.json").read_text())
    assert (record["config"]["rank"], record["config"]["lam"], record["result"]["steps"]) == (4, 0.6, 1)
    assert record["result"]["target_modules"] == ["k_proj"]
    help_text = runner.invoke(app, ["unlearn", "tvn", "--help"], env={"COLUMNS": "250"}).output
    for documented in ("--rank", "Paper: 16.", "--lora-dropout", "Paper: 0.01.", "--target-modules", "all-linear",
                       "Paper: 2e-5 on the whole set, 1e-4 on split subsets.", "--lambda", "Paper: 1.0.", "[default: 2e-05]"):
        assert documented in help_text


@pytest.mark.parametrize("case", ["empty", "column", "model", "targets", "lambda", "unwritable"])
def test_cli_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tiny_model, forget_file, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "run"
    args = {"--model": tiny_model, "--forget": forget_file, "--out": out}
    extra: list = []
    expect = {
        "empty": "no non-empty text",
        "column": "no column 'body'",
        "model": "not found",
        "targets": "q_proj",
        "lambda": "--lambda must be >= 0",
        "unwritable": "cannot write",
    }[case]
    if case == "empty":
        args["--forget"] = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}, {"text": "   "}])
    elif case == "column":
        extra = ["--text-column", "body"]
    elif case == "model":
        args["--model"] = tmp_path / "no-such-model"
    elif case == "targets":
        extra = ["--target-modules", "q_proj,qkv_proj"]
    elif case == "lambda":
        extra = ["--lambda", "-1"]
    elif case == "unwritable":
        blocker = work / "a-file"
        blocker.write_text("x")
        out = args["--out"] = blocker / "run"
    argv = ["unlearn", "tvn", "--no-progress", "--max-steps", "1"]
    for key, value in args.items():
        argv += [key, value]
    result = spunge(*argv, *extra)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and expect in lines[0], result.output
    if case == "targets":
        assert "qkv_proj" in lines[0] and "down_proj" in lines[0]  # names the culprit and what exists
    assert not out.exists()
    assert sorted(p.name for p in work.iterdir()) == (["a-file"] if case == "unwritable" else [])
