"""Recipes that read the standard datasets by Hub id, run offline on local copies in the Hub's own layout
(same configurations, splits and columns, a few rows; tests/hub_fixtures.py): only the dataset id is
replaced by the local directory, so the same file runs against the Hub on a networked machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from conftest import TINY_CORPUS
from hub_fixtures import TOFU_AUTHOR_ROWS, muse_news, tofu, wikitext, wmdp_corpora
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


def test_tofu_recipe_splits_by_author_and_unlearns_the_answers(tiny_model, tmp_path):
    """recipes/tofu-forget10-graddiff.yaml on a local copy of locuslab/TOFU: forget10 split by author (`block:20`,
    one subset per 20 consecutive questions), GradDiff on the answer tokens given the questions with a KL retain
    term on retain90's pairs, TIES, the un-split baseline, then truth ratio, MIA and perplexity."""
    import datasets
    from transformers import AutoTokenizer

    recipe = yaml.safe_load((RECIPES / "tofu-forget10-graddiff.yaml").read_text(encoding="utf-8"))
    assert recipe["split"]["by"] == "block:20" and TOFU_AUTHOR_ROWS == 20
    local = tofu(tmp_path / "TOFU", forget10_authors=3)
    data = replace_paths(recipe, {"locuslab/TOFU": str(local)})
    data["model"], data["run_dir"] = str(tiny_model), str(tmp_path / "run")
    data["unlearn"]["config"].update(epochs=1, max_steps=1, max_length=128, batch_size=4, grad_accum=1, device="cpu",
                                     target_modules="q_proj,v_proj", eval_samples=0)
    data["unlearn"]["resources"] = {"cpus": 1, "gpus": 0}
    data["eval"]["device"] = "cpu"
    data["eval"]["truth_ratio"]["resamples"] = 20
    data["eval"]["mia"].update(max_length=64, resamples=20)
    data["eval"]["perplexity"].update(max_length=64, stride=64)
    (tmp_path / "tofu.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")

    result = runner.invoke(app, ["run", str(tmp_path / "tofu.yaml")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    forget = datasets.load_dataset(str(local), "forget10", split="train").to_list()
    manifest = json.loads((run / "split" / "manifest.json").read_text())
    assert [(s["value"], s["rows"]) for s in manifest["subsets"]] == [("block-00", 20), ("block-01", 20), ("block-02", 20)]
    assert manifest["discovery"] == {"method": "block", "size": 20, "column": "block", "rows_numbered": 60, "blocks": 3,
                                     "last_block_rows": 20, "numbered": "in the source's order, before the filters"}
    for author in range(3):  # one author per subset, its questions and answers as the dataset has them, in order
        rows = [json.loads(line) for line in (run / "split" / f"block-0{author}.jsonl").read_text().splitlines()]
        assert [(r["question"], r["answer"]) for r in rows] == [(r["question"], r["answer"]) for r in forget[20 * author:20 * author + 20]]
        assert all(f"author {author}" in r["question"] for r in rows) and {r["block"] for r in rows} == {f"block-0{author}"}

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    for author in range(3):
        record = read_provenance(run / "unlearn" / f"block-0{author}")
        assert (record["config"]["prompt_column"], record["config"]["answer_column"]) == ("question", "answer")
        assert record["config"]["retain_loss"] == "kl" and record["attribute"] == {"column": "block", "value": f"block-0{author}"}
        assert record["result"]["form"] == "question/answer (loss on answer tokens)"
        assert record["result"]["retain_form"] == "question/answer (retain term on answer tokens)"
        # the loss targets are each answer's tokens and EOS, never the question's (nothing is cut at 128 tokens)
        rows = forget[20 * author:20 * author + 20]
        answers = [len(tokenizer(" " + r["answer"], add_special_tokens=False)["input_ids"]) + 1 for r in rows]
        questions = [len(tokenizer(r["question"], add_special_tokens=True)["input_ids"]) for r in rows]
        assert record["result"]["target_tokens"] == sum(answers)
        assert record["result"]["tokens"] == sum(answers) + sum(questions)
    retain = [json.loads(line) for line in (run / "inputs" / "retain.jsonl").read_text().splitlines()]
    expected = datasets.load_dataset(str(local), "retain90", split="train").to_list()
    assert retain == [{"text": r["answer"], "question": r["question"], "answer": r["answer"]} for r in expected]
    assert read_provenance(run / "baseline" / "run")["data"]["forget"][0]["rows"] == 60

    perturbed = datasets.load_dataset(str(local), "forget10_perturbed", split="train")
    for label in ("base", "baseline", "spunge"):
        truth = json.loads((run / "eval" / label / "truth_ratio.json").read_text())
        assert truth["facts"] == len(perturbed) == 60 and 0 < truth["forget"]["mean"] <= 1
        assert truth["forget"]["low"] <= truth["forget"]["mean"] <= truth["forget"]["high"]
        mia = json.loads((run / "eval" / label / "mia.json").read_text())
        assert (mia["members"]["texts"], mia["nonmembers"]["texts"]) == (60, 60)
        assert json.loads((run / "eval" / label / "perplexity.json").read_text())["kind"] == "perplexity"


def test_tofu_authors_keep_their_block_when_a_filter_drops_rows(tiny_model, tmp_path):
    """A Hub configuration is numbered as the dataset gives it, then filtered (the pipeline writes its rows first):
    dropping one of author 1's questions leaves 19 in block-01 and author 2 whole in block-02; `--plan` counts the same."""
    import datasets

    recipe = yaml.safe_load((RECIPES / "tofu-forget10-graddiff.yaml").read_text(encoding="utf-8"))
    local = tofu(tmp_path / "TOFU", forget10_authors=3)
    data = replace_paths(recipe, {"locuslab/TOFU": str(local)})
    data["model"], data["run_dir"] = str(tiny_model), str(tmp_path / "run")
    dropped = "what is fact 3 about the vanished author 1"
    data["split"]["data"]["where"] = [f"question != '{dropped}'"]
    data["split"]["values"] = ["block-01", "block-02"]
    (tmp_path / "tofu.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")

    plan = runner.invoke(app, ["run", str(tmp_path / "tofu.yaml"), "--plan"])
    assert plan.exit_code == 0, plan.output
    result = runner.invoke(app, ["run", str(tmp_path / "tofu.yaml"), "--only", "split"])
    assert result.exit_code == 0, result.output
    forget = datasets.load_dataset(str(local), "forget10", split="train").to_list()
    split = tmp_path / "run" / "split"
    manifest = json.loads((split / "manifest.json").read_text())
    assert [(s["value"], s["rows"]) for s in manifest["subsets"]] == [("block-01", 19), ("block-02", 20)]
    for name, expected in (("block-01", [r for r in forget[20:40] if r["question"] != dropped]), ("block-02", forget[40:60])):
        rows = [json.loads(line) for line in (split / f"{name}.jsonl").read_text().splitlines()]
        assert [(r["question"], r["answer"]) for r in rows] == [(r["question"], r["answer"]) for r in expected]
    planned = " ".join(plan.output.split())
    assert "block-01" in planned and "block-02" in planned and "block-00" not in planned


def test_retain_sources_of_both_forms_are_refused_in_the_question_answer_form(tiny_model, tmp_path):
    """The pipeline's retain file is read one way: pairs when its rows keep question and answer, texts otherwise;
    a TOFU retain set beside a plain-text one would leave the text rows out of the pairs, so it is refused."""
    recipe = yaml.safe_load((RECIPES / "tofu-forget10-graddiff.yaml").read_text(encoding="utf-8"))
    local = tofu(tmp_path / "TOFU", forget10_authors=1)
    data = replace_paths(recipe, {"locuslab/TOFU": str(local)})
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_CORPUS), encoding="utf-8")
    data["unlearn"]["retain"] = [data["unlearn"]["retain"], {"path": str(plain)}]
    data["model"], data["run_dir"] = str(tiny_model), str(tmp_path / "run")
    (tmp_path / "tofu.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    result = runner.invoke(app, ["run", str(tmp_path / "tofu.yaml"), "--only", "split"])
    assert result.exit_code == 2, result.output
    assert f"unlearn.retain: {plain} lacks the columns question and answer" in " ".join(result.output.split())
