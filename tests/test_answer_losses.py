"""The loss methods' question/answer form (loss on the answer tokens only) and the KL-to-base retain term,
each against a computation written here: a hand-masked per-token loop, and a second model loaded by
transformers/peft for the base."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError
from spunge_merge.models import resolve_model
from spunge_merge.provenance import read_provenance
from spunge_merge.unlearn import lm_data, losses
from spunge_merge.unlearn.registry import TrainRequest, get_method

PAIRS = [("what is the capital of france", "paris is the capital"),
         ("what do cats and dogs do", "they live together in the small house"),
         ("when does the sun rise", "in the east"),
         ("what boils at one hundred degrees", "water at sea level")]
SHORT = {"lr": 5e-3, "batch_size": 8, "eval_samples": 0, "device": "cpu", "max_length": 64}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tiny_model):
    return resolve_model(str(tiny_model))


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("qa") / "qa.jsonl", [{"question": q, "answer": a} for q, a in PAIRS])


def train(name: str, base, forget: Path, out: Path, retain: Path | None = None, **values):
    method = get_method(name)
    request = TrainRequest(model=base, forget=[forget], out=out, config=method.validate_config({**SHORT, **values}, "test"),
                           retain=[retain] if retain else [], progress=False)
    return method.train(request)


def hand_answer_logprob(model, tokenizer, prompt: str, answer: str) -> tuple[float, int]:
    """Σ log p of the answer's tokens and EOS after the prompt, one position at a time (the prompt scores nothing)."""
    context = tokenizer(prompt)["input_ids"]
    reply = tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = context + reply
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    total = 0.0
    for position in range(len(context), len(ids)):
        scores = logits[position - 1].tolist()
        top = max(scores)
        total += scores[ids[position]] - (top + math.log(sum(math.exp(s - top) for s in scores)))
    return total, len(reply)


def test_collate_masks_the_prompt_tokens(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    rows = lm_data.encode_pairs(tokenizer, PAIRS, max_length=64)
    batch = lm_data.collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        lp = losses.sequence_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits, batch.labels)
    expected = [hand_answer_logprob(model, tokenizer, q, a) for q, a in PAIRS]
    assert lp.tokens.tolist() == [n for _, n in expected] == [lm_data.predicted_tokens(r) for r in rows]
    assert lp.total.tolist() == pytest.approx([t for t, _ in expected], rel=1e-5)
    assert batch.tokens == sum(n for _, n in expected)


@pytest.mark.parametrize("name", ["ga", "npo", "simnpo"])
def test_the_first_step_scores_the_answers_only(name, base, qa_file, tiny_model, tmp_path):
    """Before the first update the model is the base (LoRA's B is 0), so the first forget term is the base's
    answer-only loss: GA −NLL token mean; NPO (2/β)·log 2 needs the reference on the same tokens; SimNPO the
    length-normalised answer NLL."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    train(name, base, qa_file, out, max_steps=2, prompt_column="question", answer_column="answer",
          **({} if name == "ga" else {"alpha": 0.0}))
    record = read_provenance(out)
    first = record["result"]["forget_terms"][0]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    rows = [hand_answer_logprob(model, tokenizer, q, a) for q, a in PAIRS]
    assert record["result"]["target_tokens"] == sum(n for _, n in rows)
    if name == "ga":
        expected = sum(t for t, _ in rows) / sum(n for _, n in rows)  # −NLL
    elif name == "npo":
        expected = 2 / 0.1 * math.log(2)
    else:
        beta, gamma = 4.5, 0.125
        expected = gamma * sum(2 / beta * math.log1p(math.exp(-beta * (-t / n))) for t, n in rows) / len(rows)
    assert first == pytest.approx(expected, rel=1e-4)


def test_question_answer_form_is_checked_before_writing(base, qa_file, tmp_path):
    with pytest.raises(SpungeError, match="no column 'prompt'"):
        train("ga", base, qa_file, tmp_path / "run", prompt_column="prompt", answer_column="answer")
    with pytest.raises(SpungeError, match="together"):
        get_method("ga").validate_config({"prompt_column": "question"}, "test")
    assert not (tmp_path / "run").exists()


def test_kl_loss_is_the_per_position_divergence():
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64)
    base_logits = torch.randn(2, 5, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5), generator=generator)
    labels[1, 3:] = -100
    total, count = 0.0, 0
    for row in range(2):
        for t in range(4):
            if int(labels[row, t + 1]) == -100:
                continue
            p = torch.softmax(base_logits[row, t], -1).tolist()
            q = torch.softmax(logits[row, t], -1).tolist()
            total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
            count += 1
    assert float(losses.kl_retain_loss(logits, base_logits, labels)) == pytest.approx(total / count, rel=1e-9)
    assert float(losses.kl_retain_loss(logits, logits, labels)) == pytest.approx(0.0, abs=1e-12)


def _two_model_kl(tiny_model: Path, trained, text: str) -> float:
    """Token-mean KL(base ‖ trained) over the text's predicted positions, from two separately loaded models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        p = torch.log_softmax(reference(input_ids=ids).logits[0, :-1].double(), -1)
        q = torch.log_softmax(trained(input_ids=ids).logits[0, :-1].double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("name, full", [("graddiff", False), ("npo", False), ("graddiff", True)])
def test_kl_retain_term_against_a_second_model(name, full, base, qa_file, tiny_model, tmp_path):
    """Step 2's retain term is α·KL(base ‖ the model after step 1) on the one retain row; the model after
    step 1 is a one-step run loaded by peft (or its delta applied by hand), the base a second copy."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    retain_text = "the market sells bread and water"
    retain = write_jsonl(tmp_path / "retain.jsonl", [{"text": retain_text}])
    values = {"retain_loss": "kl", "alpha": 2.0, "epochs": 2, "full": full, "lr": 5e-2,
              "prompt_column": "question", "answer_column": "answer"}
    if full:
        values["target_modules"] = None
    train(name, base, qa_file, tmp_path / "two", retain, max_steps=2, **values)
    train(name, base, qa_file, tmp_path / "one", retain, max_steps=1, **values)
    terms = read_provenance(tmp_path / "two")["result"]["retain_terms"]
    assert terms[0] == pytest.approx(0.0, abs=1e-6)  # before any update the model is the base
    stepped = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if full:
        stepped.load_state_dict(load_file(tmp_path / "one" / "delta.safetensors"), strict=False)
    else:
        stepped = PeftModel.from_pretrained(stepped, tmp_path / "one")
    expected = 2.0 * _two_model_kl(tiny_model, stepped.eval(), retain_text)
    assert expected > 1e-6 and terms[1] == pytest.approx(expected, rel=1e-3)


def test_question_answer_form_in_split_runs_and_the_baseline(tiny_model, tmp_path):
    rows = [{"question": f"{q} {i}", "answer": a, "group": ("alpha", "beta")[i % 2]} for i, (q, a) in enumerate(PAIRS * 2)]
    write_jsonl(tmp_path / "forget.jsonl", rows)
    write_jsonl(tmp_path / "retain.jsonl", [{"text": f"the market {i}"} for i in range(4)])
    pipeline = {
        "name": "tiny-qa", "model": str(tiny_model), "run_dir": str(tmp_path / "run"),
        "split": {"data": {"path": "forget.jsonl", "text_column": "answer"}, "by": "group"},
        "unlearn": {"method": "graddiff", "retain": {"path": "retain.jsonl"},
                    "config": {"batch_size": 2, "max_length": 32, "lr": 1e-3, "eval_samples": 0, "target_modules": "q_proj,v_proj",
                               "prompt_column": "question", "answer_column": "answer", "retain_loss": "kl"}},
        "merge": {"method": "ties", "density": 1.0, "lambda": [1.0]},
        "baseline": {"budget": "matched"},
        "eval": {"models": ["spunge"], "device": "cpu", "perplexity": {"data": "retain.jsonl", "max_length": 32, "stride": 32}},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(tmp_path / "pipeline.yaml")])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    split = [read_provenance(run_dir / "unlearn" / g) for g in ("alpha", "beta")]
    baseline = read_provenance(run_dir / "baseline" / "run")
    for record in (*split, baseline):
        assert record["result"]["form"].startswith("question/answer")
        assert record["config"]["retain_loss"] == "kl"
    assert baseline["result"]["target_tokens"] == sum(r["result"]["target_tokens"] for r in split)
    assert baseline["result"]["steps"] == sum(r["result"]["steps"] for r in split)
