"""Recipes that read the standard datasets by Hub id, run offline on local copies in the Hub's own layout
(same configurations, splits and columns, a few rows; tests/hub_fixtures.py): only the dataset id is
replaced by the local directory, so the same file runs against the Hub on a networked machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from conftest import TINY_CORPUS
from hub_fixtures import muse_news, tofu, wikitext, wmdp_corpora
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.models import resolve_model
from spunge_merge.provenance import read_provenance
from spunge_merge.unlearn.registry import get_method

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
runner = CliRunner()


def replace_paths(node: Any, mapping: dict[str, str]) -> Any:
    """Every data source whose `path` is a key of `mapping` pointed at its local copy (model ids untouched)."""
    if isinstance(node, dict):
        return {k: (mapping.get(v, v) if k == "path" and isinstance(v, str) else replace_paths(v, mapping)) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_paths(v, mapping) for v in node]
    return node


def test_muse_news_recipe_runs_on_a_local_copy(tiny_model, tmp_path):
    recipe = yaml.safe_load((RECIPES / "muse-news-npo.yaml").read_text(encoding="utf-8"))
    local = muse_news(tmp_path / "MUSE-News", TINY_CORPUS)
    data = replace_paths(recipe, {"muse-bench/MUSE-News": str(local)})
    # a tiny model and CPU sizes; every data source, split name and column stays as the recipe has it
    data["model"], data["run_dir"] = str(tiny_model), str(tmp_path / "run")
    data["unlearn"]["config"].update(epochs=1, max_steps=1, max_length=32, batch_size=2, grad_accum=1, device="cpu",
                                     target_modules="q_proj,v_proj")
    data["unlearn"]["resources"] = {"cpus": 1, "gpus": 0}
    data["eval"]["device"] = "cpu"
    data["eval"]["privleak"]["reference"] = str(tiny_model)
    for name in ("mia", "privleak"):
        data["eval"][name].update(max_length=32, resamples=20)
    data["eval"]["extraction"].update(prefix_tokens=3, continuation_tokens=4, resamples=20)
    data["eval"]["perplexity"].update(max_length=32, stride=32)
    (tmp_path / "muse.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")

    result = runner.invoke(app, ["run", str(tmp_path / "muse.yaml")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    manifest = json.loads((run / "split" / "manifest.json").read_text())
    assert [(s["value"], s["rows"]) for s in manifest["subsets"]] == [(f"forget_{i}", 4) for i in range(1, 5)]
    first = [json.loads(line)["text"] for line in (run / "split" / "forget_1.jsonl").read_text().splitlines()]
    assert first == [f"{TINY_CORPUS[(50 + i) % len(TINY_CORPUS)]} (article {50 + i})" for i in range(4)]
    assert read_provenance(run / "baseline" / "run")["data"]["forget"][0]["rows"] == 16
    for label in ("base", "baseline", "spunge"):
        mia = json.loads((run / "eval" / label / "mia.json").read_text())
        assert (mia["members"]["texts"], mia["nonmembers"]["texts"]) == (4, 6)
        for name in ("privleak", "extraction", "perplexity"):
            assert json.loads((run / "eval" / label / f"{name}.json").read_text())["kind"] == name


def test_wmdp_recipe_reads_its_corpora_by_configuration(tiny_model, tmp_path):
    recipe = yaml.safe_load((RECIPES / "wmdp-zephyr-rmu.yaml").read_text(encoding="utf-8"))
    bio = tmp_path / "bio-forget-corpus.jsonl"  # gated on the Hub: the recipe reads it from a local file
    bio.write_text("".join(json.dumps({"text": f"{t} (bio)"}) + "\n" for t in TINY_CORPUS), encoding="utf-8")
    data = replace_paths(recipe, {"cais/wmdp-corpora": str(wmdp_corpora(tmp_path / "wmdp-corpora", TINY_CORPUS)),
                                  "wikitext": str(wikitext(tmp_path / "wikitext", TINY_CORPUS)),
                                  "../data/bio-forget-corpus.jsonl": str(bio)})
    data["model"], data["run_dir"] = str(tiny_model), str(tmp_path / "run")
    (tmp_path / "wmdp.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")

    result = runner.invoke(app, ["run", str(tmp_path / "wmdp.yaml"), "--only", "split"])
    assert result.exit_code == 0, result.output
    split = tmp_path / "run" / "split"
    texts = {name: [json.loads(line)["text"] for line in (split / f"{name}.jsonl").read_text().splitlines()] for name in ("bio", "cyber")}
    assert texts["bio"] == [f"{t} (bio)" for t in TINY_CORPUS]
    assert texts["cyber"] == [f"{t} (cyber-forget-corpus {i})" for i, t in enumerate(TINY_CORPUS)]


def test_tofu_runs_by_its_columns_through_the_commands(tiny_model, tmp_path):
    """TOFU as a user exports it (`load_dataset("locuslab/TOFU", CONFIG, split="train").to_json(...)`): GradDiff on
    forget01's answers given its questions, retain99 read the same way, then the truth ratio on forget01_perturbed."""
    import datasets

    local = tofu(tmp_path / "TOFU")
    files = {}
    for config in ("forget01", "retain99", "forget01_perturbed"):
        files[config] = tmp_path / f"{config}.jsonl"
        datasets.load_dataset(str(local), config, split="train").to_json(str(files[config]), lines=True)
    result = runner.invoke(app, ["unlearn", "graddiff", "--model", str(tiny_model), "--forget", str(files["forget01"]),
                                 "--retain", str(files["retain99"]), "--out", str(tmp_path / "run"), "--prompt-column", "question",
                                 "--answer-column", "answer", "--retain-loss", "kl", "--max-steps", "1", "--device", "cpu",
                                 "--eval-samples", "0"])
    assert result.exit_code == 0, result.output
    record = read_provenance(tmp_path / "run")
    assert record["result"]["form"].startswith("question/answer") and record["data"]["retain_rows_used"] > 0
    get_method("graddiff").to_model(resolve_model(str(tiny_model)), tmp_path / "run", 1.0, tmp_path / "model")
    result = runner.invoke(app, ["eval", "truth_ratio", "--model", str(tmp_path / "model"), "--data", str(files["forget01_perturbed"]),
                                 "--out", str(tmp_path / "eval"), "--device", "cpu", "--resamples", "20"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "eval" / "truth_ratio.json").read_text())
    assert written["facts"] == 4 and 0 < written["forget"]["mean"] <= 1
