"""`spunge eval harness` with a local lm_eval task (offline), checked against a direct log-likelihood computation."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError

pytest.importorskip("lm_eval")

from spunge_merge.evaluate.harness import evaluate_harness  # noqa: E402

runner = CliRunner()
DOCS = [
    {"question": "the capital of france is", "choices": ["paris", "berlin", "water"], "answer": 0},
    {"question": "the sun rises in the", "choices": ["west", "east"], "answer": 1},
    {"question": "cats and dogs live in the", "choices": ["small house", "sea"], "answer": 0},
    {"question": "water boils at one hundred", "choices": ["degrees", "numbers", "dogs"], "answer": 0},
    {"question": "the quick brown fox jumps over the", "choices": ["lazy dog", "market"], "answer": 0},
    {"question": "a group of people walked to the market to buy", "choices": ["bread", "germany"], "answer": 0},
]
TASK_YAML = """task: spunge_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    (folder / "tiny_mc.yaml").write_text(TASK_YAML.format(data=data), encoding="utf-8")
    return folder


def _manual_accuracy(tiny_model) -> float:
    """Argmax over choices of sum log p(" " + choice | question), split as lm_eval splits context and continuation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    correct = 0
    for doc in DOCS:
        scores = []
        for choice in doc["choices"]:
            context_ids = tokenizer(doc["question"])["input_ids"]
            whole = tokenizer(doc["question"] + " " + choice)["input_ids"]
            continuation = whole[len(context_ids):]
            with torch.no_grad():
                logprobs = torch.log_softmax(lm(input_ids=torch.tensor([whole])).logits[0].double(), dim=-1)
            scores.append(sum(float(logprobs[len(context_ids) - 1 + i, token]) for i, token in enumerate(continuation)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    return correct / len(DOCS)


def test_local_task_runs_offline_and_matches_direct_accuracy(tiny_model, task_dir, tmp_path):
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "harness", "--model", str(tiny_model), "--tasks", "spunge_tiny_mc",
                                 "--include-path", str(task_dir), "--batch-size", "2", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "harness.json").read_text())
    assert stored["kind"] == "harness" and stored["model"]["ref"] == str(tiny_model)
    entry = stored["tasks"]["spunge_tiny_mc"]
    assert entry["primary_metric"] == "acc" and entry["samples"] == len(DOCS)
    assert entry["primary"] == pytest.approx(_manual_accuracy(tiny_model))
    assert stored["utility"] == entry["primary"]
    assert stored["lm_eval_version"] and (out / "harness.md").is_file()


def test_unknown_task_is_a_clear_error(tiny_model, task_dir, tmp_path):
    with pytest.raises(SpungeError, match="unknown harness task.*no_such_task.*lm_eval ls tasks"):
        evaluate_harness(str(tiny_model), "no_such_task", tmp_path / "o", include_path=task_dir)


def test_hub_task_offline_fails_with_a_message(tiny_model, task_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["eval", "harness", "--model", str(tiny_model), "--tasks", "arc_easy", "--include-path",
                                 str(task_dir), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "harness task 'arc_easy': its data could not be loaded" in result.output
    assert "--include-path" in result.output and not (tmp_path / "o" / "harness.json").exists()
