"""Model resolution: local directories, Hub ids offline, and the smollm2-135m alias."""

from __future__ import annotations

import json

import pytest

from spunge_merge.errors import SpungeError
from spunge_merge.models import SMOLLM2_ALIAS, load_causal_lm, load_tokenizer, resolve_model


def test_local_directory(tiny_model):
    resolved = resolve_model(str(tiny_model))
    assert resolved.path == tiny_model.resolve()
    assert resolved.describe()["fingerprint"] == resolve_model(tiny_model).fingerprint
    assert load_causal_lm(resolved).config.num_hidden_layers == 8


def test_fingerprint_changes_with_weights(tiny_model, tmp_path):
    from conftest import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other", layers=4)
    assert resolve_model(other).fingerprint != resolve_model(tiny_model).fingerprint


@pytest.mark.parametrize("make", ["missing", "file", "no_config"])
def test_bad_local_paths(tmp_path, make):
    target = tmp_path / "model"
    if make == "file":
        target.write_text("x")
    elif make == "no_config":
        target.mkdir()
    with pytest.raises(SpungeError, match="model"):
        resolve_model(f"./{target.relative_to(tmp_path)}" if make == "missing" else target)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpungeError, match="could not be fetched from the Hugging Face Hub"):
        resolve_model("some-org/some-model-that-is-not-cached")


@pytest.mark.slow
def test_smollm2_alias_converts_once_and_generates(tmp_path, monkeypatch):
    """The alias dequantizes the packaged GGUF into a plain safetensors model (fresh cache)."""
    pytest.importorskip("gguf")
    monkeypatch.setenv("SPUNGE_CACHE", str(tmp_path / "cache"))
    resolved = resolve_model(SMOLLM2_ALIAS)
    assert resolved.path == tmp_path / "cache" / "models" / SMOLLM2_ALIAS
    config = json.loads((resolved.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_hidden_layers"] == 30
    assert "quantization_config" not in config
    assert list(resolved.path.glob("*.safetensors")) and not list(resolved.path.glob("*.gguf"))

    tokenizer = load_tokenizer(resolved)
    model = load_causal_lm(resolved)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][inputs["input_ids"].shape[1]:])

    mtime = (resolved.path / "config.json").stat().st_mtime_ns
    assert resolve_model(SMOLLM2_ALIAS).path == resolved.path
    assert (resolved.path / "config.json").stat().st_mtime_ns == mtime  # no second conversion
