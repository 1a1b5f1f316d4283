"""Perplexity (token-weighted, sliding window) and fluency against direct computations on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.fluency import evaluate_fluency
from spunge_merge.evaluate.perplexity import corpus_nll, evaluate_perplexity

runner = CliRunner()
SHORT_TEXTS = ["the quick brown fox jumps over the lazy dog", "cats and dogs", "water boils at one hundred degrees",
               "a", "paris is the capital of france and berlin is the capital of germany"]
LONG_TEXT = " ".join(["the sun rises in the east and sets in the west", "numbers like one two three four five",
                      "a group of people walked to the market to buy bread"] * 2)


@pytest.fixture(scope="module")
def lm_and_tokenizer(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def _manual_nll(lm, ids: list[int], context_start) -> tuple[float, int]:
    """Sum of -log p(token t | ids[context_start(t):t]), one forward pass per token."""
    import torch

    total, count = 0.0, 0
    for t in range(1, len(ids)):
        start = context_start(t)
        if start >= t:
            continue  # no context: the token is not predicted
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([ids[start:t]])).logits[0, -1].double()
        total -= float(torch.log_softmax(logits, dim=-1)[ids[t]])
        count += 1
    return total, count


def test_short_texts_batched_match_full_context_loop(lm_and_tokenizer):
    lm, tokenizer = lm_and_tokenizer
    got = corpus_nll(lm, tokenizer, SHORT_TEXTS, max_length=64, stride=32, progress=False)
    total, count = 0.0, 0
    for text in SHORT_TEXTS:
        nll, n = _manual_nll(lm, tokenizer(text)["input_ids"], lambda t: 0)
        total, count = total + nll, count + n
    assert got["tokens"] == count
    assert got["nll_sum"] == pytest.approx(total, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


@pytest.mark.parametrize(("max_length", "stride"), [(16, 1), (16, 5), (16, 16)])
def test_sliding_window_matches_manual_context(lm_and_tokenizer, max_length, stride):
    lm, tokenizer = lm_and_tokenizer
    ids = tokenizer(LONG_TEXT)["input_ids"]
    assert len(ids) > 3 * max_length

    def context_start(t: int) -> int:
        # Token t is new in the first window [b, b + max_length) that holds it, b a multiple of stride.
        return max(0, math.ceil((t - max_length + 1) / stride) * stride)

    total, count = _manual_nll(lm, ids, context_start)
    got = corpus_nll(lm, tokenizer, [LONG_TEXT], max_length=max_length, stride=stride, progress=False)
    assert got["tokens"] == count
    assert got["nll_sum"] == pytest.approx(total, rel=1e-5)


def test_evaluate_perplexity_writes_result(tiny_model, tmp_path, lm_and_tokenizer):
    lm, tokenizer = lm_and_tokenizer
    data = tmp_path / "retain.jsonl"
    data.write_text("".join(json.dumps({"body": t}) + "\n" for t in SHORT_TEXTS + [LONG_TEXT]), encoding="utf-8")
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "perplexity", "--model", str(tiny_model), "--data", str(data), "--text-column",
                                 "body", "--max-length", "32", "--stride", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "perplexity.json").read_text())
    direct = corpus_nll(lm, tokenizer, SHORT_TEXTS + [LONG_TEXT], max_length=32, stride=8, progress=False)
    assert stored["kind"] == "perplexity" and stored["model"]["ref"] == str(tiny_model)
    assert stored["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)
    assert stored["texts"] == 6 and f"{stored['perplexity']:.3f}" in result.output
    assert json.loads((out / "spunge.json").read_text())["evaluations"]["perplexity"]["files"] == ["perplexity.json"]


def test_perplexity_errors(tiny_model, tmp_path):
    data = tmp_path / "retain.jsonl"
    data.write_text(json.dumps({"text": "cats and dogs"}) + "\n", encoding="utf-8")
    with pytest.raises(SpungeError, match="--stride"):
        evaluate_perplexity(str(tiny_model), data, tmp_path / "o", max_length=8, stride=16)
    result = runner.invoke(app, ["eval", "perplexity", "--model", str(tiny_model), "--data", str(data), "--text-column",
                                 "missing", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no column 'missing'" in result.output


def test_fluency_is_generation_perplexity_under_the_judge(tiny_model, tmp_path, lm_and_tokenizer):
    """The tiny model stands in for the judge LM; empty generations are skipped."""
    lm, tokenizer = lm_and_tokenizer
    generations = tmp_path / "tox" / "generations.jsonl"
    generations.parent.mkdir()
    rows = [{"id": str(i), "group": "women", "label": "hate", "prompt": "- x\n-", "generation": g, "score": 0.1}
            for i, g in enumerate(SHORT_TEXTS + [""])]
    generations.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (generations.parent / "toxicity.json").write_text(json.dumps({"kind": "toxicity", "model": {"ref": "gen-model"}}))
    result = evaluate_fluency(generations, str(tiny_model), generations.parent, progress=False)
    total, count = 0.0, 0
    for text in SHORT_TEXTS:
        nll, n = _manual_nll(lm, tokenizer(text)["input_ids"], lambda t: 0)
        total, count = total + nll, count + n
    assert result["kind"] == "fluency" and result["model"] == {"ref": "gen-model"}
    assert result["judge"]["ref"] == str(tiny_model)
    assert result["generations"]["empty"] == 1 and result["tokens"] == count
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert json.loads((generations.parent / "fluency.json").read_text())["perplexity"] == result["perplexity"]


def test_fluency_cli_errors(tiny_model, tmp_path):
    result = runner.invoke(app, ["eval", "fluency", "--generations", str(tmp_path / "none.jsonl"), "--judge", str(tiny_model)])
    assert result.exit_code == 2 and "no such generations file" in result.output
    bad = tmp_path / "g.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["eval", "fluency", "--generations", str(bad), "--judge", str(tiny_model)])
    assert result.exit_code == 2 and "no string field 'generation'" in result.output
    good = tmp_path / "ok.jsonl"
    good.write_text(json.dumps({"generation": "cats and dogs"}) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["eval", "fluency", "--generations", str(good), "--judge", str(tmp_path / "missing.gguf")])
    assert result.exit_code == 2 and "no such GGUF file" in result.output
