"""`spunge eval knowledge`: echoes of the prompt score nothing, facts that only an echo could answer are left
out and counted, the 4-option form ranks log-likelihoods computed here independently, and the command's
files and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate import knowledge as knowledge_module
from spunge_merge.evaluate.knowledge import add_distractors, answer_in_prompt, answer_matches, evaluate_knowledge

runner = CliRunner()
FACTS = [
    ("capitals", "The capital of France is", "Paris"),
    ("capitals", "The capital of Germany is", "Berlin"),
    ("capitals", "The capital of Italy is", "Rome"),
    ("capitals", "The capital of Spain is", "Madrid"),
    ("capitals", "The capital of Peru is", "Lima"),
    ("plurals", "The plural of sheep is", "sheep"),  # answer in the prompt: an echo would score it
    ("plurals", "The plural of deer is", "deer"),
    ("plurals", "The plural of mouse is", "mice"),
    ("plurals", "The plural of goose is", "geese"),
    ("plurals", "The plural of child is", "children"),
    ("plurals", "The plural of tooth is", "teeth"),
    ("landmarks", "The London Eye is in the city of", "London"),
    ("landmarks", "The Eiffel Tower is in the city of", "Paris"),
]


@pytest.fixture
def facts(tmp_path) -> Path:
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps({"domain": d, "prompt": p, "answer": a}) + "\n" for d, p, a in FACTS), encoding="utf-8")
    return path


@pytest.mark.parametrize(("prompt", "answer", "expected"), [
    ("The plural of sheep is", "sheep", True),
    ("The plural of deer is", "Deer", True),
    ("The London Eye is in the city of", "London", True),
    ("The Las Vegas Strip is in the city of", "Las Vegas", True),
    ("The Eiffel Tower is in the city of", "Paris", False),
    ("The plural of mouse is", "mice", False),
    ("The currency of Germany is", "the euro", False),
    ("Carbon's symbol is", "C", False),  # a whole word only: "Carbon" does not hold "C"
])
def test_answer_in_prompt(prompt, answer, expected):
    assert answer_in_prompt(prompt, answer) is expected


def test_an_echo_of_the_prompt_never_matches():
    assert answer_matches(" sheep.", "sheep")  # without the prompt the matcher cannot know
    assert not answer_matches(" sheep.", "sheep", "The plural of sheep is")
    assert not answer_matches(" London, the capital", "London", "The London Eye is in the city of")
    assert answer_matches(" mice.", "mice", "The plural of mouse is")
    assert not answer_matches(" mouse.", "mice", "The plural of mouse is")


def _fake_complete(answer_for):
    def complete(model_dir, prompts, **kwargs):
        return [answer_for(prompt) for prompt in prompts]
    return complete


def test_echoable_facts_are_left_out_and_an_echoing_model_scores_nothing(tiny_model, facts, tmp_path, monkeypatch):
    echoes = [(d, p, a) for d, p, a in FACTS if a.lower() in p.lower().split() or a in p]
    assert len(echoes) == 3
    # A model that repeats the prompt's subject ("sheep", "London", "mouse"...): it knows nothing.
    monkeypatch.setattr(knowledge_module, "complete", _fake_complete(lambda p: " " + p.split()[-2 if "plural" in p else 1] + "."))
    echo = evaluate_knowledge(str(tiny_model), facts, tmp_path / "echo")
    assert echo["overall"]["correct"] == 0 and echo["overall"]["n"] == len(FACTS) - 3
    assert echo["excluded"]["count"] == 3 and echo["excluded"]["by_domain"] == {"plurals": 2, "landmarks": 1}
    assert {(f["prompt"], f["answer"]) for f in echo["excluded"]["facts"]} == {(p, a) for _, p, a in echoes}
    assert echo["domains"]["plurals"] == {"n": 4, "correct": 0, "accuracy": 0.0, "excluded_echoes": 2}
    lines = [json.loads(line) for line in (tmp_path / "echo" / "knowledge.jsonl").read_text().splitlines()]
    assert len(lines) == len(FACTS) - 3 and not any(line["prompt"] == "The plural of sheep is" for line in lines)
    # A model that knows every answer scores every kept fact.
    answers = {p: a for _, p, a in FACTS}
    monkeypatch.setattr(knowledge_module, "complete", _fake_complete(lambda p: f" {answers[p]}."))
    knows = evaluate_knowledge(str(tiny_model), facts, tmp_path / "knows")
    assert knows["overall"]["correct"] == knows["overall"]["n"] == len(FACTS) - 3


def test_distractors_come_from_the_same_domain_and_the_seed():
    rows = [{"domain": d, "prompt": p, "answer": a} for d, p, a in FACTS if d != "landmarks"]
    first, again, other = (add_distractors(rows, seed=s) for s in (1, 1, 2))
    assert first == again and first != other
    for row in first:
        same_domain = {r["answer"] for r in rows if r["domain"] == row["domain"]}
        assert len(row["options"]) == 4 and len(set(row["options"])) == 4 and row["answer"] in row["options"]
        assert set(row["options"]) <= same_domain
        assert not any(answer_in_prompt(row["prompt"], o) for o in row["options"] if o != row["answer"])
    assert len({row["options"].index(row["answer"]) for row in first}) > 1  # the answer's position is shuffled
    with pytest.raises(SpungeError, match="distractors"):
        add_distractors([{"domain": "landmarks", "prompt": p, "answer": a} for d, p, a in FACTS if d == "landmarks"], seed=0)


def test_choice_form_ranks_log_likelihoods_computed_independently(tiny_model, facts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = evaluate_knowledge(str(tiny_model), facts, tmp_path / "eval", form="choice", domains=["capitals", "plurals"],
                                batch_size=5, seed=3, device="cpu")
    records = [json.loads(line) for line in (tmp_path / "eval" / "knowledge.jsonl").read_text().splitlines()]
    assert result["chance"] == 0.25 and result["settings"]["form"] == "choice" and len(records) == 9
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    correct = 0
    for record in records:
        for option, got in zip(record["options"], record["logliks"], strict=True):
            context = tokenizer(record["prompt"])["input_ids"]
            continuation = tokenizer(" " + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([context + continuation])).logits[0]
            logprobs = torch.log_softmax(logits, -1)
            want = sum(float(logprobs[len(context) - 1 + i, token]) for i, token in enumerate(continuation))
            assert got == pytest.approx(want, abs=1e-4)
        best = max(range(4), key=lambda i: record["logliks"][i])
        assert record["correct"] is (record["options"][best] == record["answer"]
                                     and sorted(record["logliks"])[-1] > sorted(record["logliks"])[-2])
        correct += record["correct"]
    assert result["overall"]["correct"] == correct


def test_cli_writes_the_result_and_refuses_bad_input(tiny_model, facts, tmp_path):
    result = runner.invoke(app, ["eval", "knowledge", "--model", str(tiny_model), "--facts", str(facts), "--max-new-tokens", "2",
                                 "--device", "cpu", "--where", "domain != landmarks", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "eval" / "knowledge.json").read_text())
    assert saved["kind"] == "knowledge" and set(saved["domains"]) == {"capitals", "plurals"}
    assert saved["excluded"]["count"] == 2 and "plurals" in result.output
    for extra, message in ((["--form", "quiz"], "--form 'quiz'"), (["--domains", "nope"], "no facts of domain 'nope'"),
                           (["--form", "choice", "--domains", "landmarks"], "distractors")):
        bad = runner.invoke(app, ["eval", "knowledge", "--model", str(tiny_model), "--facts", str(facts), "--device", "cpu",
                                  "--out", str(tmp_path / "bad"), *extra])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, bad.output
