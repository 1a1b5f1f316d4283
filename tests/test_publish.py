"""Publishing any spunge output: a per-subset run's LoRA adapter, a tensor-delta run materialized on request,
and cards that fit what was unlearned (warning, usage, retain data, results table and `model-index`).

The runs are real NPO runs on the tiny model; pushes go to the local fake Hub (tests/fake_hub.py) and what
lands there is loaded back with peft, transformers and huggingface_hub's card classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_push
import torch
from conftest import TINY_CORPUS
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors.torch import load_file
from typer.testing import CliRunner

from spunge_merge.card import build_model_card
from spunge_merge.cli import app
from spunge_merge.data.split import split_dataset
from spunge_merge.evaluate.registry import card_metrics
from spunge_merge.models import resolve_model
from spunge_merge.unlearn.registry import TrainRequest, get_method

REPO = test_push.REPO
hub, hub_env = test_push.hub, test_push.hub_env  # the fake Hub fixtures
ALIAS_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SHORT = {"lr": 5e-3, "max_steps": 2, "batch_size": 4, "eval_samples": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """NPO on a two-subset split with retain data: one LoRA run per subset, and one `full` (tensor-delta) run."""
    root = tmp_path_factory.mktemp("publish")
    facts = root / "facts.jsonl"
    facts.write_text("".join(json.dumps({"text": t, "domain": ["geography", "science"][i % 2]}) + "\n"
                             for i, t in enumerate(TINY_CORPUS * 2)), encoding="utf-8")
    retain = root / "retain.jsonl"
    retain.write_text("".join(json.dumps({"text": f"{t} (kept)"}) + "\n" for t in TINY_CORPUS), encoding="utf-8")
    split_dataset(facts, by="domain", out=root / "split")
    base = resolve_model(str(tiny_model))
    npo = get_method("npo")
    npo.train(TrainRequest(model=base, forget=[root / "split"], out=root / "npo", config=npo.validate_config(SHORT, "test"),
                           retain=[retain], progress=False))
    npo.train(TrainRequest(model=base, forget=[root / "split" / "science.jsonl"], out=root / "full", retain=[retain],
                           config=npo.validate_config({**SHORT, "full": True}, "test"), progress=False))
    return {"root": root, "adapter": root / "npo" / "geography", "delta": root / "full", "retain": retain}


def _as_alias_run(run: Path, tmp_path: Path) -> Path:
    """A copy of the run as if trained from the `smollm2-135m` alias (the tiny model stands in for its weights)."""
    import shutil

    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    record = json.loads((copy / "spunge.json").read_text())
    record["base_model"]["ref"] = "smollm2-135m"
    (copy / "spunge.json").write_text(json.dumps(record))
    return copy


def _pull(fake, repo: str, out: Path) -> Path:
    out.mkdir(parents=True)
    for path, data in fake.files(repo).items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(data)
    return out


def _push(*args: str):
    return CliRunner().invoke(app, ["push", *args], catch_exceptions=False)


def test_a_run_adapter_is_published_with_spunge_card_and_the_base_hub_id(hub_env, runs, tiny_model, tmp_path):
    run = _as_alias_run(runs["adapter"], tmp_path)
    local_config = (run / "adapter_config.json").read_bytes()
    assert b"More Information Needed" in (run / "README.md").read_bytes()  # peft's template, as training left it

    result = _push(str(run), "--repo", REPO)
    assert result.exit_code == 0, result.output
    assert "Checks passed (LoRA adapter): loads (LORA adapter)" in result.output
    pulled = _pull(hub_env, REPO, tmp_path / "pulled")
    assert {"adapter_config.json", "adapter_model.safetensors", "spunge.json", "README.md"} <= {p.name for p in pulled.iterdir()}

    config = json.loads((pulled / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == ALIAS_HUB_ID  # the Hub id, not this machine's path
    assert (run / "adapter_config.json").read_bytes() == local_config  # the local run is left as trained
    card_text = (pulled / "README.md").read_text()
    card = ModelCard(card_text)
    assert card.data.base_model == ALIAS_HUB_ID and card.data.library_name == "peft"
    assert card.data.base_model_relation == "adapter"
    assert "More Information Needed" not in card_text and str(tmp_path) not in card_text and "~/.cache" not in card_text
    assert not any("base_model:adapter:" in tag for tag in card.data.tags)
    assert "the subset `domain = geography`" in card_text and "AutoPeftModelForCausalLM" in card_text

    # what was pushed is an adapter peft loads on the base, with the trained weights
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(pulled))
    trained = load_file(str(run / "adapter_model.safetensors"))
    state = loaded.state_dict()
    name = next(k for k in trained if "lora_B" in k)
    assert state[name.replace(".weight", ".default.weight")].equal(trained[name])


def test_a_delta_run_is_refused_alone_and_pushed_as_a_model_when_materialized(hub_env, runs, tiny_model, tmp_path):
    run = runs["delta"]
    refused = _push(str(run), "--repo", REPO, "--dry-run")
    assert refused.exit_code == 2 and "tensor-delta run" in refused.output and "--materialize" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    before = sorted(p.name for p in run.iterdir())

    result = _push(str(run), "--repo", REPO, "--materialize")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir()) == before and not list(run.parent.glob(".spunge-publish*"))
    pulled = _pull(hub_env, REPO, tmp_path / "pulled")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(pulled, dtype=torch.float32).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    delta = load_file(str(run / "delta.safetensors"))
    for name, value in base.items():  # the base with the run's new tensors, nothing else changed
        assert model[name].equal(delta[name].to(value.dtype) if name in delta else value), name
    assert any(not delta[name].equal(base[name]) for name in delta)
    card = ModelCard((pulled / "README.md").read_text())
    assert card.data.library_name == "transformers" and "npo" in card.data.tags


def test_the_card_names_retain_data_and_fits_the_task(runs, tmp_path):
    run = _as_alias_run(runs["adapter"], tmp_path)
    card = build_model_card(run, repo_id=REPO, metrics=card_metrics)
    rows = sum(1 for _ in runs["retain"].open())
    assert f"- retain.jsonl: {rows} texts" in card.text
    assert "taken from facts.jsonl" in card.text
    assert "**Unlearned knowledge.**" in card.text and "Content warning" not in card.text  # a domain of facts
    assert "know about geography" in card.text.split("## How to use")[1] and "neighbours" not in card.text

    toxic = build_model_card(run, repo_id=REPO, task="toxicity")
    assert "**Content warning.**" in toxic.text and "neighbours" in toxic.text and "Unlearned knowledge" not in toxic.text
    assert "toxicity" in toxic.data.tags
    other = build_model_card(run, repo_id=REPO, task="other")
    assert "measured, not guaranteed" in other.text and "about geography" in other.text.split("## How to use")[1]


def test_results_are_a_table_and_valid_model_index_metadata(runs, tmp_path):
    run = _as_alias_run(runs["adapter"], tmp_path)
    (run / "eval").mkdir()
    knowledge = {"kind": "knowledge", "model": {"ref": str(run)}, "settings": {"batch_size": 8, "echo_rule": "x"},
                 "facts": {"path": "/data/facts.jsonl"}, "overall": {"accuracy": 0.3},
                 "domains": {"geography": {"accuracy": 0.125, "n": 8}, "science": {"accuracy": 0.5, "n": 8}}}
    (run / "eval" / "knowledge.json").write_text(json.dumps(knowledge))
    toxicity = {"kind": "toxicity", "model": {"ref": str(run)}, "overall": {"pct": 12.5, "count": 25, "n": 200}}
    (run / "eval" / "toxicity.json").write_text(json.dumps(toxicity))
    base_eval = tmp_path / "base-eval"  # another model's result: shown, but not this model's model-index
    base_eval.mkdir()
    (base_eval / "toxicity.json").write_text(json.dumps({"kind": "toxicity", "model": {"path": "/elsewhere"},
                                                         "overall": {"pct": 40.0}}))
    card = build_model_card(run, repo_id=REPO, metrics=card_metrics, extra_eval={"eval/base": base_eval})

    parsed = ModelCard(card.content)  # the Hub's own parser reads the metadata back
    assert isinstance(parsed.data, ModelCardData) and parsed.data.model_name == REPO.split("/")[1]
    found = {(r.task_name, r.metric_type): r for r in parsed.data.eval_results}
    assert all(isinstance(r, EvalResult) for r in found.values())
    expected = {("knowledge", "knowledge_geography"): 0.125, ("knowledge", "knowledge_science"): 0.5,
                ("toxicity", "toxicity_pct"): 12.5}
    assert {key: r.metric_value for key, r in found.items()} == expected
    assert found[("knowledge", "knowledge_geography")].dataset_name == "facts.jsonl"
    assert "| toxicity | toxicity % | 12.5 | lower | toxicity | `eval/toxicity.json` |" in card.text
    assert "| knowledge | knowledge science | 0.5 | – | facts.jsonl | `eval/knowledge.json` |" in card.text
    assert "settings.batch_size" not in card.text and "echo_rule" not in card.text  # no flattened settings dump
    assert "| overall.pct | 40 |" in card.text  # the base's figure stays in its own section
