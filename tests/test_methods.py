"""GA, GradDiff, NPO and SimNPO end to end on the tiny model: adapters peft loads, deltas that apply to
the base, bit-identical reruns, the forget NLL rising, NPO's reference equal to the base model, the
whole retain set cycled, split mode with resume, the baseline budget, and every refusal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_CORPUS
from safetensors.torch import load_file

from spunge_merge.data.split import split_dataset
from spunge_merge.errors import SpungeError
from spunge_merge.models import resolve_model
from spunge_merge.unlearn.registry import BUILTIN_METHODS, TrainRequest, get_method

METHODS = ["ga", "graddiff", "npo", "simnpo"]
RETAIN_ROWS = 40
SHORT = {"lr": 5e-3, "max_steps": 3, "batch_size": 4, "eval_samples": 4, "device": "cpu"}
PEFT_PREFIX = "base_model.model."


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def forget_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("forget") / "forget.jsonl", [{"text": t} for t in TINY_CORPUS * 2])


@pytest.fixture(scope="module")
def retain_file(tmp_path_factory) -> Path:
    rows = [{"text": f"{TINY_CORPUS[i % len(TINY_CORPUS)].split()[-1]} and row number {i} of the retain set"} for i in range(RETAIN_ROWS)]
    return write_jsonl(tmp_path_factory.mktemp("retain") / "retain.jsonl", rows)


@pytest.fixture(scope="module")
def base(tiny_model):
    return resolve_model(str(tiny_model))


def settings(name: str, **values):
    method = get_method(name)
    return method.validate_config({**SHORT, **values}, "test")


def train(name: str, base, forget, out, retain=None, **values):
    method = get_method(name)
    if retain is None and method.retain == "required":
        raise AssertionError("give retain data")
    request = TrainRequest(model=base, forget=[forget], out=out, config=settings(name, **values),
                           retain=[retain] if retain else [], progress=False)
    return method.train(request)


def needs_retain(name: str) -> bool:
    return get_method(name).retain != "none"


def forget_nll(model_dir: Path) -> float:
    """Token-mean NLL of the forget texts through transformers' own `labels=` loss, one text at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in TINY_CORPUS:
            ids = torch.tensor([tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]])
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def test_all_four_are_builtin_and_declared():
    for name in METHODS:
        assert name in BUILTIN_METHODS
        method = get_method(name)
        assert method.name == name and method.default_lambda(method.config_class()) == 1.0
        assert method.output_kind(method.config_class()) == "peft-adapter"
        assert method.output_kind(method.config_class(full=True)) == "tensor-delta"
        for field, info in method.config_class.model_fields.items():
            assert info.description, f"{name}.{field} has no description (it is the CLI help)"
    assert [get_method(n).retain for n in METHODS] == ["none", "required", "optional", "optional"]


@pytest.mark.parametrize("name", METHODS)
def test_lora_run_is_a_peft_adapter_and_deterministic(name, base, forget_file, retain_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    retain = retain_file if needs_retain(name) else None
    first, second = tmp_path / "a", tmp_path / "b"
    train(name, base, forget_file, first, retain)
    train(name, base, forget_file, second, retain)
    assert (first / "adapter_model.safetensors").read_bytes() == (second / "adapter_model.safetensors").read_bytes()
    record = json.loads((first / "spunge.json").read_text())
    assert record["kind"] == "peft-adapter" and record["method"] == name and record["result"]["steps"] == 3
    assert record["config"]["full"] is False and len(record["result"]["losses"]) == 3
    lm = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(lm, str(first))
    b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert b and any(float(p.abs().max()) > 0 for p in b)  # the adapter moved away from its zero init


@pytest.mark.parametrize("name", METHODS)
def test_full_run_writes_only_the_chosen_tensors(name, base, forget_file, retain_file, tmp_path):
    retain = retain_file if needs_retain(name) else None
    out = tmp_path / "run"
    train(name, base, forget_file, out, retain, full=True)
    again = tmp_path / "again"
    train(name, base, forget_file, again, retain, full=True)
    assert (out / "delta.safetensors").read_bytes() == (again / "delta.safetensors").read_bytes()
    delta = load_file(out / "delta.safetensors")
    assert sorted(delta) == [f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)]
    original = load_file(base.path / "model.safetensors")
    assert all(not torch.equal(delta[k], original[k]) for k in delta)
    assert json.loads((out / "spunge.json").read_text())["kind"] == "tensor-delta"

    # base + λ·(new − base) for λ = 0.5, every other tensor untouched
    model_dir = get_method(name).to_model(base, out, 0.5, tmp_path / "model", tmp_path / "scratch")
    merged = load_file(model_dir / "model.safetensors")
    for key, value in original.items():
        expected = value + 0.5 * (delta[key] - value) if key in delta else value
        torch.testing.assert_close(merged[key], expected, rtol=1e-6, atol=1e-7)


def test_lora_to_model_scales_the_adapter_update(base, forget_file, tmp_path):
    out = tmp_path / "run"
    train("ga", base, forget_file, out)
    model_dir = get_method("ga").to_model(base, out, 0.5, tmp_path / "model", tmp_path / "scratch")
    config = json.loads((out / "adapter_config.json").read_text())
    adapter = load_file(out / "adapter_model.safetensors")
    original, merged = load_file(base.path / "model.safetensors"), load_file(model_dir / "model.safetensors")
    checked = 0
    for key, a in adapter.items():
        if key.endswith(".lora_A.weight"):
            module = key[len(PEFT_PREFIX):-len(".lora_A.weight")]
            b = adapter[key.replace(".lora_A.", ".lora_B.")]
            expected = original[f"{module}.weight"] + 0.5 * config["lora_alpha"] / config["r"] * (b.double() @ a.double()).float()
            torch.testing.assert_close(merged[f"{module}.weight"], expected, rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked >= 7 * 8  # all-linear: 7 projections in each of 8 layers


@pytest.mark.parametrize("full", [False, True])
def test_gradient_ascent_raises_the_forget_nll(full, base, forget_file, tmp_path):
    out = tmp_path / "run"
    train("ga", base, forget_file, out, full=full, max_steps=None, epochs=3, lr=3e-2 if full else 5e-3, eval_samples=14)
    model_dir = get_method("ga").to_model(base, out, None, tmp_path / "model", tmp_path / "scratch")
    before, after = forget_nll(base.path), forget_nll(model_dir)
    assert after > before + 0.15, (before, after)  # a random tiny model is near-uniform: small but clear moves
    result = json.loads((out / "spunge.json").read_text())["result"]
    # the run's own report, on the same texts, agrees with the exported model measured through transformers
    assert result["forget_nll"]["base"] == pytest.approx(before, rel=1e-4)
    assert result["forget_nll"]["trained"] == pytest.approx(after, rel=1e-4)
    assert result["losses"][-1] < result["losses"][0]


@pytest.mark.parametrize("full", [False, True])
def test_npo_reference_is_the_base_model(full, base, forget_file, tmp_path):
    """At the first step the policy is the base (LoRA's B starts at 0, no dropout), so if the reference
    is the base model each sequence's term is −(2/β)·log σ(0) = (2/β)·log 2."""
    out = tmp_path / "run"
    beta = 0.25
    train("npo", base, forget_file, out, full=full, alpha=0.0, gamma=1.0, beta=beta)
    result = json.loads((out / "spunge.json").read_text())["result"]
    assert result["losses"][0] == pytest.approx(2 / beta * math.log(2), rel=1e-4)
    assert result["losses"][1] < result["losses"][0]  # the forget log-likelihood has moved below the reference


def test_retain_rows_cycle_through_the_whole_retain_set(base, forget_file, retain_file, tmp_path):
    # 14 forget rows in micro-batches of 4: 4 retain micro-batches per epoch. Pairing forget batch i with
    # retain batch i would only ever see 16 of the 40 retain rows; 3 epochs of a cycling stream see all.
    out = tmp_path / "run"
    train("graddiff", base, forget_file, out, retain_file, max_steps=None, epochs=3)
    record = json.loads((out / "spunge.json").read_text())
    assert record["data"]["retain_rows_used"] == RETAIN_ROWS
    assert record["data"]["forget"][0]["rows_used"] == len(TINY_CORPUS) * 2
    assert record["result"]["steps"] == 12 and all(t > 0 for t in record["result"]["retain_terms"])


def test_split_mode_writes_a_manifest_and_resumes(base, tiny_dataset, retain_file, tmp_path):
    split = tmp_path / "split"
    split_dataset(tiny_dataset, by="group", out=split, values=["alpha", "beta"])
    out = tmp_path / "runs"
    first = train("simnpo", base, split, out, retain_file)
    assert [(o.name, o.skipped) for o in first] == [("alpha", False), ("beta", False)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "simnpo" and [r["name"] for r in manifest["runs"]] == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        record = json.loads((out / name / "spunge.json").read_text())
        assert record["attribute"] == {"column": "group", "value": name}
        assert (out / name / "adapter_model.safetensors").is_file()
    again = train("simnpo", base, split, out, retain_file)
    assert [o.skipped for o in again] == [True, True]


def test_planned_steps_and_matched_baseline():
    method = get_method("graddiff")
    split = {"a": method.config_class(batch_size=4), "b": method.config_class(batch_size=4, epochs=2)}
    rows = {"a": 10, "b": 7}
    assert method.planned_steps(split["a"], 10, 100) == 3 and method.planned_steps(split["b"], 7, 100) == 4
    budget = method.match_baseline(split, rows, method.config_class(batch_size=8), 100, "union")
    assert budget.record["split_total"] == 7 and budget.record["baseline_planned"] == 7
    assert method.planned_steps(budget.config, 17, 100) == 7
    assert budget.config.max_steps == 7 and budget.config.epochs == 3  # 3 steps per epoch over 17 rows


@pytest.mark.parametrize(("name", "values", "key"), [
    ("npo", {"beta": 0}, "beta"), ("simnpo", {"beta": -1.0}, "beta"), ("graddiff", {"alpha": 0}, "alpha"),
    ("ga", {"lr": 0}, "lr"), ("npo", {"full_params": ["(unclosed"]}, "full_params"), ("ga", {"bogus": 1}, "bogus"),
])
def test_bad_settings_name_their_key(name, values, key):
    with pytest.raises(SpungeError, match=key):
        get_method(name).validate_config(values, "settings")


@pytest.mark.parametrize(("name", "values", "retain", "match"), [
    ("graddiff", {}, False, "alpha.*no retain data"),
    ("npo", {}, False, "alpha.*no retain data.*set alpha to 0"),
    ("simnpo", {"alpha": 0.5}, False, "alpha.*no retain data"),
    ("ga", {}, True, "ga: retain data was given"),
    ("npo", {"alpha": 0}, True, "alpha is 0"),
    ("ga", {"full": True, "full_params": [r"model\.layers\.99\..*"]}, False, "full_params"),
    ("ga", {"target_modules": "no_such_proj"}, False, "no_such_proj"),
])
def test_refusals_leave_nothing_behind(name, values, retain, match, base, forget_file, retain_file, tmp_path, tiny_dataset):
    out = tmp_path / "out"
    config = settings(name, **values)
    request = TrainRequest(model=base, forget=[forget_file], out=out, config=config, retain=[retain_file] if retain else [],
                           progress=False)
    with pytest.raises(SpungeError, match=match):
        get_method(name).train(request)
    split = tmp_path / "split"
    split_dataset(tiny_dataset, by="group", out=split, values=["alpha"])
    with pytest.raises(SpungeError, match=match):
        get_method(name).train(TrainRequest(model=base, forget=[split], out=out, config=config,
                                            retain=[retain_file] if retain else [], progress=False))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["split", "tiny.jsonl"]


@pytest.mark.parametrize("name", ["ga", "npo"])
def test_gradient_accumulation_equals_one_larger_batch(name, base, forget_file, tmp_path):
    """Terms are divided by the whole group's tokens (GA) or sequences (NPO): 2×2 is one batch of 4."""
    values = {"max_steps": 2, "alpha": 0.0} if name == "npo" else {"max_steps": 2}
    train(name, base, forget_file, tmp_path / "big", batch_size=4, grad_accum=1, **values)
    train(name, base, forget_file, tmp_path / "acc", batch_size=2, grad_accum=2, **values)
    big = json.loads((tmp_path / "big" / "spunge.json").read_text())["result"]["losses"]
    acc = json.loads((tmp_path / "acc" / "spunge.json").read_text())["result"]["losses"]
    assert acc == pytest.approx(big, rel=1e-5)


def test_parallel_lists_give_the_same_budget():
    method = get_method("npo")
    configs = [{"batch_size": 4}, {"batch_size": 4, "epochs": 2}]
    budget = method.match_baseline(configs, [10, 7], {"batch_size": 8}, None, "union")
    assert budget.record["split_total"] == 7 and budget.config.max_steps == 7


def test_split_runs_merge_with_ties(base, tiny_dataset, tmp_path):
    """Both kinds of run go through spunge's TIES merge (mergekit) into a model transformers loads."""
    from transformers import AutoModelForCausalLM

    from spunge_merge.merge import merge_runs

    split = tmp_path / "split"
    split_dataset(tiny_dataset, by="group", out=split, values=["alpha", "beta"])
    for full in (False, True):
        runs = tmp_path / f"runs-{full}"
        train("ga", base, split, runs, full=full)
        merged = merge_runs(base, [runs], tmp_path / f"merged-{full}", method="ties", progress=False)
        model = AutoModelForCausalLM.from_pretrained(merged)
        weights = dict(model.named_parameters())
        original = load_file(base.path / "model.safetensors")
        moved = sorted(name for name, value in original.items() if not torch.equal(weights[name].detach(), value))
        if full:
            assert moved == [f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)]
        else:
            assert len(moved) >= 7 * 8 and all(name.startswith("model.layers.") for name in moved)
