"""The memory options of the LoRA-based methods: gradient checkpointing and a 4-bit (NF4) base.

Checkpointing must change memory and time only: on the tiny model the loss and every LoRA
parameter's gradient are the same with and without it (TVN with dropout on, so the recomputed
forward must replay the same dropout masks; NPO, whose reference pass runs with the adapter
switched off), the decoder layers really run twice per step, and a short run writes the same
adapter. `quantize: nf4` is refused in one line, before any model is loaded, where bitsandbytes is
missing; where it is installed, a tiny 4-bit run trains an ordinary adapter that applies to the
full-precision base, and the 4-bit base computes what its dequantised weights do.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_CORPUS
from safetensors.torch import load_file
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError
from spunge_merge.models import load_causal_lm, load_tokenizer, resolve_model
from spunge_merge.unlearn import lm_data
from spunge_merge.unlearn.lora import lora_config
from spunge_merge.unlearn.loss_training.session import _Session
from spunge_merge.unlearn.npo import OBJECTIVE as NPO_OBJECTIVE
from spunge_merge.unlearn.npo import NPOConfig
from spunge_merge.unlearn.registry import TrainRequest, get_method
from spunge_merge.unlearn.tvn import TVNConfig, train_tvn
from spunge_merge.unlearn.tvn.training import _Trainer

LORA_METHODS = ["tvn", "ga", "graddiff", "npo", "simnpo"]
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def base(tiny_model):
    return resolve_model(str(tiny_model))


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory):
    """A tiny Llama 64 wide: bitsandbytes' CPU kernels want each 4-bit weight at least one block (64) wide."""
    from conftest import build_tiny_llama

    return resolve_model(str(build_tiny_llama(tmp_path_factory.mktemp("wide-llama") / "model", layers=2, hidden=64)))


@pytest.fixture(scope="module")
def forget_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("memory-forget") / "forget.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_CORPUS * 2), encoding="utf-8")
    return path


def test_both_options_are_declared_once_for_every_lora_method():
    fields = {name: get_method(name).config_class.model_fields for name in LORA_METHODS}
    for option, default in (("gradient_checkpointing", False), ("quantize", "none")):
        described = {name: (f[option].default, f[option].description) for name, f in fields.items()}
        assert len(set(described.values())) == 1, described
        assert described["tvn"][0] == default
    assert "quantize" not in get_method("rmu").config_class.model_fields  # RMU trains no adapter
    runner = CliRunner()
    for name in LORA_METHODS:
        shown = runner.invoke(app, ["unlearn", name, "--help"], env={"COLUMNS": "200"}).output
        assert "--gradient-checkpointing" in shown and "--quantize" in shown and "nf4" in shown


def _batch(tokenizer, rows: int = 4):
    encoded = lm_data.encode_texts(tokenizer, TINY_CORPUS[:rows], max_length=32)
    return encoded, lm_data.collate(encoded, tokenizer.pad_token_id)


def _randomise_lora_b(model) -> None:
    """lora_B starts at zero, which makes every lora_A gradient zero; random values make both count."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _layer_calls(model) -> list[int]:
    """A counter of the decoder layers' MLP calls (a checkpointed layer runs its forward again in the backward
    pass; transformers checkpoints the layer's `forward`, so the count is taken on a module inside it)."""
    calls = [0]
    for layer in model.get_base_model().model.layers:
        layer.mlp.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def _assert_same(first: tuple, second: tuple) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = first, second
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name, grad in grads_a.items():
        assert grad.abs().sum() > 0, f"{name}: zero gradient, the comparison would prove nothing"
        torch.testing.assert_close(grad, grads_b[name], rtol=1e-5, atol=1e-7, msg=name)


def _tvn_step(base, checkpointing: bool):
    """TVN's loss (token-mean NLL) and gradients on the base its trainer loads, with dropout on."""
    config = TVNConfig(rank=4, lora_alpha=8, lora_dropout=0.2, target_modules="all-linear", device="cpu",
                       gradient_checkpointing=checkpointing)
    trainer = _Trainer(base, config, progress=False)
    lm, tokenizer = trainer._load()
    torch.manual_seed(0)
    from peft import get_peft_model

    model = get_peft_model(lm, lora_config(config))
    _randomise_lora_b(model)
    calls = _layer_calls(model)
    _, batch = _batch(tokenizer)
    model.train()
    torch.manual_seed(1)  # the dropout masks
    loss = lm_data.sum_token_nll(model, batch) / batch.tokens
    loss.backward()
    layers = len(model.get_base_model().model.layers)
    assert calls[0] == (2 if checkpointing else 1) * layers
    return loss.detach(), _grads(model)


def test_checkpointing_gives_tvn_the_same_loss_and_gradients(base):
    _assert_same(_tvn_step(base, False), _tvn_step(base, True))


def _npo_step(base, checkpointing: bool):
    """NPO's loss and gradients, its reference taken the way a run takes it (the session's adapter switched off)."""
    config = NPOConfig(rank=4, lora_alpha=8, alpha=0.0, device="cpu", gradient_checkpointing=checkpointing)
    session = _Session("npo", NPO_OBJECTIVE, base, config, [], progress=False)
    lm, tokenizer = session._load()
    torch.manual_seed(0)
    weights = session._trainable(lm)
    model = weights.model
    _randomise_lora_b(model)
    encoded, batch = _batch(tokenizer)
    reference = session._reference(model, encoded, tokenizer.pad_token_id)
    calls = _layer_calls(model)
    model.train()
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    from spunge_merge.unlearn.losses import sequence_logprobs

    loss = NPO_OBJECTIVE.forget_sum(sequence_logprobs(logits, batch.labels), reference, config) / len(encoded)
    loss.backward()
    assert calls[0] == (2 if checkpointing else 1) * len(model.get_base_model().model.layers)
    return loss.detach(), _grads(model), reference


def _base_logprobs(base, rows: int = 4) -> torch.Tensor:
    """log π(y|x) per row from the plain base model, loaded on its own: no peft, no checkpointing."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32).eval()
    tokenizer = load_tokenizer(base)
    out = []
    with torch.no_grad():
        for ids in lm_data.encode_texts(tokenizer, TINY_CORPUS[:rows], max_length=32):
            x = torch.tensor([ids])
            logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), dim=-1)
            out.append(float(logp.gather(1, x[0, 1:, None]).sum()))
    return torch.tensor(out)


def test_checkpointing_gives_npo_the_same_loss_gradients_and_reference(base):
    loss_a, grads_a, reference_a = _npo_step(base, False)
    loss_b, grads_b, reference_b = _npo_step(base, True)
    _assert_same((loss_a, grads_a), (loss_b, grads_b))
    expected = _base_logprobs(base)
    torch.testing.assert_close(reference_b.double().cpu(), expected.double(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(reference_a, reference_b, rtol=0, atol=0)


def _adapter(run: Path, name: str = "adapter_model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(run / name))


def test_a_short_run_writes_the_same_adapter_with_checkpointing(base, forget_file, tmp_path):
    short = {"lr": 5e-3, "max_steps": 3, "batch_size": 4, "eval_samples": 0, "device": "cpu", "seed": 3}
    runs = {}
    for checkpointing in (False, True):
        out = tmp_path / f"tvn-{checkpointing}"
        train_tvn(base, forget_file, out, {**short, "lora_dropout": 0.1, "gradient_checkpointing": checkpointing}, progress=False)
        runs[("tvn", checkpointing)] = _adapter(out / "unnegated")
        out = tmp_path / f"npo-{checkpointing}"
        npo = get_method("npo")
        config = npo.validate_config({**short, "alpha": 0.0, "gradient_checkpointing": checkpointing}, "test")
        npo.train(TrainRequest(model=base, forget=[forget_file], out=out, config=config, progress=False))
        runs[("npo", checkpointing)] = _adapter(out)
        assert json.loads((out / "spunge.json").read_text())["config"]["gradient_checkpointing"] is checkpointing
    for method in ("tvn", "npo"):
        plain, checkpointed = runs[(method, False)], runs[(method, True)]
        assert plain.keys() == checkpointed.keys()
        moved = [k for k in plain if "lora_B" in k and plain[k].abs().sum() > 0]
        assert moved, f"{method}: no lora_B moved in 3 steps"
        for key in plain:
            torch.testing.assert_close(plain[key], checkpointed[key], rtol=1e-5, atol=1e-7, msg=f"{method} {key}")


# ------------------------------------------------------------------------------------------------ quantize: nf4


@pytest.mark.parametrize("method", ["tvn", "npo"])
def test_nf4_without_bitsandbytes_is_one_line_before_any_model_loads(method, tiny_model, forget_file, tmp_path, monkeypatch):
    """bitsandbytes made unfindable (as where it is not installed), whether or not this environment has it."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the check")

    monkeypatch.setattr("spunge_merge.unlearn.lora.load_causal_lm", no_loading)
    out = tmp_path / "out"
    argv = ["unlearn", method, "--model", str(tiny_model), "--forget", str(forget_file), "--out", str(out), "--quantize", "nf4",
            "--device", "cpu"] + (["--alpha", "0"] if method == "npo" else [])
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["Error: quantize nf4: needs the bitsandbytes package, which is not installed (pip install bitsandbytes, "
                     "or pip install 'spunge-merge[qlora]'); or leave quantize at none"]
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_nf4_cannot_be_combined_with_full():
    with pytest.raises(SpungeError, match="unlearn.config: quantize: nf4 trains a LoRA adapter .* full"):
        get_method("ga").validate_config({"full": True, "quantize": "nf4"}, "unlearn.config")  # as a pipeline validates
    from spunge_merge.config import build_config

    with pytest.raises(SpungeError, match="--quantize nf4: .*set quantize to none, or full to false"):
        build_config(get_method("ga").config_class, overrides={"full": True, "quantize": "nf4"})


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (pip install 'spunge-merge[qlora]')")
def test_nf4_base_computes_what_its_dequantised_weights_do(wide_base):
    import bitsandbytes as bnb

    config = TVNConfig(quantize="nf4", device="cpu")
    trainer = _Trainer(wide_base, config, progress=False)
    quantized, tokenizer = trainer._load()
    assert isinstance(quantized.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert not any(p.requires_grad for p in quantized.parameters())
    # The same model in float32 with each 4-bit weight replaced by its dequantised value, built by hand.
    reference = load_causal_lm(wide_base)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                reference.get_submodule(name).weight.copy_(weight.float())
    _, batch = _batch(tokenizer)
    with torch.no_grad():
        got = quantized(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        want = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes (pip install 'spunge-merge[qlora]')")
def test_nf4_runs_write_ordinary_adapters_that_apply_to_the_full_precision_base(wide_base, forget_file, tmp_path):
    from peft import PeftModel

    short = {"lr": 5e-3, "max_steps": 2, "batch_size": 4, "eval_samples": 2, "device": "cpu", "quantize": "nf4",
             "gradient_checkpointing": True, "target_modules": "q_proj,v_proj"}
    lam = 0.5
    tvn = tmp_path / "tvn"
    train_tvn(wide_base, forget_file, tvn, {**short, "lam": lam}, progress=False)
    npo = tmp_path / "npo"
    method = get_method("npo")
    method.train(TrainRequest(model=wide_base, forget=[forget_file], out=npo, config=method.validate_config({**short, "alpha": 0.0}, "t"),
                              progress=False))
    record = json.loads((npo / "spunge.json").read_text())
    assert record["config"]["quantize"] == "nf4" and record["result"]["steps"] == 2
    full = load_causal_lm(wide_base)
    scale = 16 / 16  # lora_alpha / rank, both at their defaults
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    for run in (tvn / "unnegated", tvn, npo):
        tensors = _adapter(run)
        assert all(t.dtype == torch.float32 for t in tensors.values())
        a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
        assert b.abs().sum() > 0
        # peft loads it onto the float32 base and merges W + scale·B·A, as computed here from the files.
        merged = PeftModel.from_pretrained(load_causal_lm(wide_base), str(run)).merge_and_unload()
        expected = full.model.layers[0].self_attn.q_proj.weight + scale * b @ a
        torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight, expected, rtol=1e-6, atol=1e-7)
    # TVN's negated adapter: lora_B is −λ × the trained one.
    trained_b = _adapter(tvn / "unnegated")
    negated_b = _adapter(tvn)
    for key, value in trained_b.items():
        if "lora_B" in key:
            torch.testing.assert_close(negated_b[key], -lam * value)
    # The merge path (to_model) gives the same model as peft's merge of the run.
    out = tmp_path / "npo-model"
    method.to_model(wide_base, npo, None, out)
    from transformers import AutoModelForCausalLM

    written = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    merged = PeftModel.from_pretrained(load_causal_lm(wide_base), str(npo)).merge_and_unload()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(written.state_dict()[name], value, msg=name)


@pytest.mark.parametrize("quantize", ["none", "nf4"])
def test_loading_with_the_options_uses_no_deprecated_checkpointing_call(quantize, wide_base):
    """transformers 5 deprecates gradient_checkpointing_enable (a FutureWarning); spunge calls its current name,
    and turns checkpointing on itself rather than through peft's prepare_model_for_kbit_training, which calls
    the old one. (peft's own PeftModel reads `is_gradient_checkpointing`, which warns too: that one is peft's.)"""
    if quantize == "nf4" and not HAS_BNB:
        pytest.skip("needs bitsandbytes")
    import warnings

    from spunge_merge.unlearn.lora import load_training_base

    config = TVNConfig(gradient_checkpointing=True, quantize=quantize, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lm = load_training_base(wide_base, config, dtype=torch.float32, device=torch.device("cpu"))
    assert lm.is_activation_checkpointing
    deprecated = [str(w.message) for w in caught if "checkpointing" in str(w.message) and "deprecated" in str(w.message)]
    assert deprecated == []
