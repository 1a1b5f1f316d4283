"""Bad input to every command, as a table: each case is refused cleanly.

The promise (docs/conventions.md): a user-fixable mistake makes `spunge` exit with code 2 and print
one line that names the file, key, option or tensor at fault, with no traceback; nothing is left in
the output location, and the inputs are byte-for-byte unchanged (hashed before and after).

Each case is (id, argv with {placeholders}, expected substring). Placeholders name inputs built once
per session by the `world` fixture (good and broken data files, model directories, runs, pipeline
files), plus {out}: a fresh output path in an empty working directory (the test's cwd, so default
outputs such as `merged/` or `eval/` are caught too). No case trains or loads a real model.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_llama
from safetensors.torch import load_file, save_file
from test_eval_toxicity import build_tiny_judge
from test_merge import make_rmu_run, make_tvn_runs, write_manifest
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.data.split import split_dataset
from spunge_merge.provenance import write_provenance

runner = CliRunner()


# --------------------------------------------------------------------------------------- the inputs


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _broken_models(base: Path, root: Path) -> dict[str, Path]:
    """Model directories with one thing wrong each (the config and tokenizer of `base` otherwise)."""
    models = {}
    weights = load_file(base / "model.safetensors")

    pickle_only = _copy_model(base, root / "pickle-only")
    (pickle_only / "model.safetensors").unlink()
    torch.save(weights, pickle_only / "pytorch_model.bin")
    models["pickle_model"] = pickle_only

    partial = _copy_model(base, root / "partial")
    save_file({k: v for k, v in weights.items() if ".layers.3." not in k}, partial / "model.safetensors",
              metadata={"format": "pt"})
    models["partial_model"] = partial

    truncated = _copy_model(base, root / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    models["truncated_model"] = truncated

    garbage = _copy_model(base, root / "garbage-header")
    (garbage / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"\0" * 64)
    models["garbage_model"] = garbage

    bad_config = _copy_model(base, root / "bad-config")
    (bad_config / "config.json").write_text('{"model_type": "llama", ', encoding="utf-8")
    models["badconfig_model"] = bad_config

    list_config = _copy_model(base, root / "list-config")
    (list_config / "config.json").write_text("[1, 2]", encoding="utf-8")
    models["listconfig_model"] = list_config

    no_type = _copy_model(base, root / "no-model-type")
    config = json.loads((no_type / "config.json").read_text())
    config.pop("model_type", None)
    config.pop("architectures", None)
    (no_type / "config.json").write_text(json.dumps(config), encoding="utf-8")
    models["notype_model"] = no_type

    no_config = _copy_model(base, root / "no-config")
    (no_config / "config.json").unlink()
    models["noconfig_model"] = no_config

    no_weights = _copy_model(base, root / "no-weights")
    (no_weights / "model.safetensors").unlink()
    models["noweights_model"] = no_weights

    no_tokenizer = _copy_model(base, root / "no-tokenizer")
    for file in no_tokenizer.glob("tokenizer*"):
        file.unlink()
    models["notok_model"] = no_tokenizer
    pickle_no_tokenizer = _copy_model(pickle_only, root / "pickle-only-no-tokenizer")
    for file in pickle_no_tokenizer.glob("tokenizer*"):
        file.unlink()
    models["picklenotok_model"] = pickle_no_tokenizer

    index = _copy_model(base, root / "index-missing-shard")
    (index / "model.safetensors").rename(index / "model-00001-of-00002.safetensors")
    (index / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors",
    }}), encoding="utf-8")
    models["index_model"] = index
    return models


@pytest.fixture(scope="session")
def world(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-inputs")
    w: dict[str, Path] = {"model": tiny_model}
    data = root / "data"
    data.mkdir()
    rows = [{"text": f"some text number {i} about things", "group": ["alpha", "beta", "gamma"][i % 3], "score": i % 5}
            for i in range(12)]
    w["datadir"] = data
    w["data"] = _write_jsonl(data / "data.jsonl", rows)
    lines = [json.dumps(r) for r in rows]
    lines[4] = '{"text": "broken line", "group": '
    (data / "bad-line.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    w["badline"] = data / "bad-line.jsonl"
    (data / "blank.jsonl").write_text("\n\n   \n\n", encoding="utf-8")
    w["blank"] = data / "blank.jsonl"
    (data / "blank.csv").write_text("\n\n", encoding="utf-8")
    w["blankcsv"] = data / "blank.csv"
    (data / "blank.txt").write_text("\n  \n", encoding="utf-8")
    w["blanktxt"] = data / "blank.txt"
    (data / "empty.jsonl").write_bytes(b"")
    w["empty"] = data / "empty.jsonl"
    (data / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9", "group": "a"}\n')
    w["latin1"] = data / "latin1.jsonl"
    (data / "arrays.jsonl").write_text("[1, 2]\n[3]\n", encoding="utf-8")
    w["arrays"] = data / "arrays.jsonl"
    (data / "doc.json").write_text('[\n {"text": "a", "group": "x"},\n {"text": "b" "group": "y"}\n]\n', encoding="utf-8")
    w["baddoc"] = data / "doc.json"
    (data / "data.xyz").write_text("hello\n", encoding="utf-8")
    w["xyz"] = data / "data.xyz"
    (data / "fake.parquet").write_bytes(b"this is not parquet at all")
    w["badparquet"] = data / "fake.parquet"
    (data / "plain-dir").mkdir()
    (data / "plain-dir" / "notes.txt").write_text("x\n", encoding="utf-8")
    w["plaindir"] = data / "plain-dir"
    _write_jsonl(data / "notext.jsonl", [{"body": "x", "group": "a"}])
    w["notext"] = data / "notext.jsonl"
    (data / "retain.txt").write_text("\n".join(f"retain line number {i} with some words" for i in range(20)) + "\n",
                                     encoding="utf-8")
    w["retain"] = data / "retain.txt"
    w["nofile"] = data / "missing.jsonl"
    w["facts"] = _write_jsonl(data / "facts.jsonl", [{"question": "where is paris", "paraphrased_answer": "in france",
                                                      "perturbed_answer": ["in spain", "in the east"]}])
    (data / "header-only.csv").write_text("text,group\n", encoding="utf-8")
    w["headercsv"] = data / "header-only.csv"
    (data / "empty-list.json").write_text("[]\n", encoding="utf-8")
    w["emptylist"] = data / "empty-list.json"
    (data / "empty-objects.jsonl").write_text("{}\n{}\n", encoding="utf-8")
    w["emptyobjects"] = data / "empty-objects.jsonl"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([], pa.string()), "group": pa.array([], pa.string())}), data / "header-only.parquet")
    w["headerparquet"] = data / "header-only.parquet"

    split_dir = root / "split"
    split_dataset(w["data"], by="group", out=split_dir)
    w["split"] = split_dir

    configs = root / "configs"
    configs.mkdir()
    (configs / "bad.yaml").write_text("lr: [1, 2\n", encoding="utf-8")
    w["badyaml"] = configs / "bad.yaml"
    (configs / "unknown.yaml").write_text("lr: 1.0e-4\nbogus_key: 3\n", encoding="utf-8")
    w["unknownkey"] = configs / "unknown.yaml"
    (configs / "list.yaml").write_text("- 1\n- 2\n", encoding="utf-8")
    w["listyaml"] = configs / "list.yaml"
    (configs / "nan.yaml").write_text("lam: .nan\n", encoding="utf-8")
    w["nanyaml"] = configs / "nan.yaml"
    (configs / "relearn.yaml").write_text(yaml.safe_dump({"measure_settings": {"facts": str(w["data"])}}), encoding="utf-8")
    w["relearn_cfg"] = configs / "relearn.yaml"

    w.update(_broken_models(tiny_model, root / "models"))

    runs = root / "runs"
    tvn = make_tvn_runs(tiny_model, runs / "tvn", seeds=(1, 2))
    write_manifest(runs / "tvn", tvn)
    w["tvn_runs"], w["tvn_run"] = runs / "tvn", tvn[0]
    corrupt = _copy_model(tvn[1], runs / "tvn-corrupt")
    weights = corrupt / "unnegated" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    w["tvn_corrupt"] = corrupt
    no_unnegated = _copy_model(tvn[1], runs / "tvn-no-unnegated")
    shutil.rmtree(no_unnegated / "unnegated")
    w["tvn_nounneg"] = no_unnegated

    rmu = [make_rmu_run(tiny_model, runs / "rmu" / v, seed=i, value=v, rows=5) for i, v in enumerate(("alpha", "beta"))]
    write_manifest(runs / "rmu", rmu)
    w["rmu_runs"], w["rmu_run"] = runs / "rmu", rmu[0]
    truncated = _copy_model(rmu[1], runs / "rmu-truncated")
    delta = truncated / "delta.safetensors"
    delta.write_bytes(delta.read_bytes()[:-100])
    w["rmu_truncated"] = truncated
    foreign = runs / "rmu-foreign"
    foreign.mkdir()
    save_file({"model.layers.99.mlp.down_proj.weight": torch.zeros(32, 64)}, foreign / "delta.safetensors")
    write_provenance(foreign, kind="rmu-delta", fingerprint="x", method="rmu", base_model=None)
    w["rmu_foreign"] = foreign
    wrong_kind = _copy_model(rmu[1], runs / "rmu-wrong-kind")
    record = json.loads((wrong_kind / "spunge.json").read_text())
    (wrong_kind / "spunge.json").write_text(json.dumps({**record, "kind": "tvn-adapter"}), encoding="utf-8")
    w["rmu_wrongkind"] = wrong_kind
    w["norun"] = w["plaindir"]

    recipes = root / "recipes"
    recipes.mkdir()
    for name, parameters in (("nan", {"lambda": float("nan")}), ("neg", {"lambda": -1.0}), ("dens", {"density": 2.0})):
        recipe = {"merge_method": "ties", "base_model": str(tiny_model), "parameters": {"normalize": True, **parameters},
                  "models": [{"model": str(r), "parameters": {"density": 0.5, "weight": 1.0}} for r in rmu]}
        if name == "dens":
            recipe["parameters"] = {"normalize": True}
            for entry in recipe["models"]:
                entry["parameters"]["density"] = 2.0
        (recipes / f"{name}.yml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
        w[f"recipe_{name}"] = recipes / f"{name}.yml"
    anchored = {"merge_method": "anchored_ls", "base_model": str(tiny_model), "parameters": {"rho": 0.0},
                "models": [{"model": str(r), "parameters": {"gram": str(root / "no-stats" / "gram.safetensors")}} for r in rmu]}
    (recipes / "anchored.yml").write_text(yaml.safe_dump(anchored), encoding="utf-8")
    w["recipe_anchored"] = recipes / "anchored.yml"
    (recipes / "broken.yml").write_text("merge_method: ties\nmodels: [\n", encoding="utf-8")
    w["recipe_broken"] = recipes / "broken.yml"

    evals = root / "eval"
    gens = evals / "gens"
    gens.mkdir(parents=True)
    (gens / "generations.jsonl").write_text('{"prompt": "a", "generation": "b", "group": "x"}\n{"prompt": \n',
                                            encoding="utf-8")
    w["badgens"] = gens / "generations.jsonl"
    good_gens = evals / "good-gens"
    good_gens.mkdir()
    _write_jsonl(good_gens / "generations.jsonl", [{"prompt": "a", "generation": "some words here", "group": "women", "label": "hate"}])
    w["gens"] = good_gens / "generations.jsonl"
    (evals / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "target_group": "women", "label": 1}) + "\n"
                                                 for i in range(4)), encoding="utf-8")
    w["prompts"] = evals / "prompts.jsonl"
    broken_result = evals / "broken-result"
    broken_result.mkdir()
    (broken_result / "toxicity.json").write_text('{"groups": ', encoding="utf-8")
    w["brokenresult"] = broken_result
    for name, form, facts in (("kchoice", "choice", "a"), ("kcompletion", "completion", "a"), ("kotherfacts", "completion", "b")):
        (evals / name).mkdir()
        (evals / name / "knowledge.json").write_text(json.dumps({
            "kind": "knowledge", "fingerprint": name, "model": {"ref": name}, "settings": {"form": form},
            "facts": {"sha256": facts, "where": []}, "domains": {"bio": {"n": 4, "correct": 2, "accuracy": 0.5}}}), encoding="utf-8")
        w[name] = evals / name
    other_truth = evals / "truth-other-facts"
    other_truth.mkdir()
    (other_truth / "truth_ratio.json").write_text(json.dumps({"kind": "truth_ratio", "fingerprint": "x", "facts": 1,
                                                              "data": {"facts_sha256": "0" * 64}}), encoding="utf-8")
    (other_truth / "truth_ratio.jsonl").write_text('{"truth_ratio": 0.5}\n', encoding="utf-8")
    w["truth_other"] = other_truth
    judge = build_tiny_judge(evals / "judge", tiny_model)
    headless = _copy_model(judge, evals / "judge-headless")
    save_file({k: v for k, v in load_file(judge / "model.safetensors").items() if not k.startswith("score.")},
              headless / "model.safetensors", metadata={"format": "pt"})
    w["judge"], w["headless_judge"] = judge, headless
    truncated_judge = _copy_model(judge, evals / "judge-truncated")
    (truncated_judge / "model.safetensors").write_bytes((judge / "model.safetensors").read_bytes()[:-8])
    w["truncated_judge"] = truncated_judge

    push = root / "push"
    secret = _copy_model(tiny_model, push / "with-secret")
    (secret / "notes.txt").write_text("my token is hf_" + "A" * 34 + "\n", encoding="utf-8")
    w["push_secret"] = secret

    pipelines = root / "pipelines"
    pipelines.mkdir()
    good = {"name": "bad-input-test", "model": str(tiny_model), "split": {"data": {"path": str(w["data"])}, "by": "group"},
            "unlearn": {"method": "tvn", "config": {"max_steps": 1}}, "eval": {"perplexity": {"data": str(w["retain"])}}}
    w["pipeline"] = pipelines / "good.yaml"
    w["pipeline"].write_text(yaml.safe_dump(good), encoding="utf-8")
    for name, change in PIPELINE_CHANGES.items():
        path = pipelines / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_deep_merge(good, change)), encoding="utf-8")
        w[f"pipe_{name}"] = path
    (pipelines / "broken.yaml").write_text("name: x\nsplit: [\n", encoding="utf-8")
    w["pipe_broken"] = pipelines / "broken.yaml"
    (pipelines / "list.yaml").write_text("- name\n", encoding="utf-8")
    w["pipe_list"] = pipelines / "list.yaml"
    return w


def _deep_merge(base: dict, change: dict) -> dict:
    merged = dict(base)
    for key, value in change.items():
        if value is _DROP:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_DROP = object()
NAN = float("nan")
PIPELINE_CHANGES = {
    "unknown_top": {"bogus": 1},
    "lam_neg": {"merge": {"lambda": [-1.0]}},
    "lam_nan": {"merge": {"lambda": [NAN]}},
    "lam_inf": {"merge": {"lambda": math.inf}},
    "dens0": {"merge": {"density": 0}},
    "dens15": {"merge": {"density": 1.5}},
    "dtype": {"merge": {"dtype": "float8"}},
    "merge_typo": {"merge": {"densty": 0.5}},
    "method": {"unlearn": {"method": "sgd"}},
    "lr_nan": {"unlearn": {"config": {"lr": NAN}}},
    "lr_neg": {"unlearn": {"config": {"lr": -1}}},
    "tvn_lam_nan": {"unlearn": {"config": {"lam": NAN}}},
    "cfg_typo": {"unlearn": {"config": {"rnak": 4}}},
    "no_split": {"split": _DROP},
    "no_eval": {"eval": {"perplexity": None}},
    "push_lam": {"push": {"repo_id": "a/b", "lambda": 0.5}},
    "baseline_nan": {"baseline": {"lambda": [NAN]}},
    "limit0": {"split": {"data": {"limit": 0}}},
    "block0": {"split": {"by": "block:0"}},
    "block_float": {"split": {"by": {"block": {"size": 2.5}}}},
    "block_text": {"split": {"by": "block:twenty"}},
    "block_limit": {"split": {"by": "block:4", "data": {"limit": 6}}},
    "name": {"name": "has space"},
    "rmu_no_retain": {"unlearn": {"method": "rmu"}},
    "npo_no_retain": {"unlearn": {"method": "npo"}},
    "npo_beta0": {"unlearn": {"method": "npo", "config": {"beta": 0, "alpha": 0}}},
    "graddiff_no_retain": {"unlearn": {"method": "graddiff"}},
    "ga_retain": {"unlearn": {"method": "ga", "retain": {"path": "retain.jsonl"}}},
    "unknown_method": {"unlearn": {"method": "sgd"}},
    "eval_kw": {"eval": {"perplexity": {"strid": 3}}},
    "resources": {"unlearn": {"resources": {"cpus": 0}}},
}


# --------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: str  # substring of the one line printed; may use {placeholders}
    prepare: str | None = None  # "file": {out} is an existing file; "nonempty": {out} holds a file of the user's


def case(id: str, argv: str | list[str], expect: str, prepare: str | None = None) -> Case:
    return Case(id, tuple(argv.split() if isinstance(argv, str) else argv), expect, prepare)


CASES = [
    # ------------------------------------------------------------------ split
    case("split-missing-file", "split {nofile} --by group --out {out}", "{nofile}: no such file"),
    case("split-bad-jsonl-line", "split {badline} --by group --out {out}", "{badline}:5: not valid JSON"),
    case("split-blank-lines", "split {blank} --by group --out {out}", "{blank}: holds only blank lines"),
    case("split-blank-csv", "split {blankcsv} --by group --out {out}", "{blankcsv}: holds only blank lines"),
    case("split-empty-file", "split {empty} --by group --out {out}", "{empty}: file is empty"),
    case("split-not-utf8", "split {latin1} --by group --out {out}", "{latin1}: not UTF-8"),
    case("split-array-lines", "split {arrays} --by group --out {out}", "{arrays}:1: expected one JSON object per line"),
    case("split-broken-json-document", "split {baddoc} --by group --out {out}", "{baddoc}:3: not valid JSON"),
    case("split-unknown-suffix", "split {xyz} --by group --out {out}", "{xyz}: unsupported file type"),
    case("split-not-parquet", "split {badparquet} --by group --out {out}", "{badparquet}: cannot parse as parquet"),
    case("split-plain-directory", "split {plaindir} --by group --out {out}", "{plaindir} is a directory but not"),
    case("split-unknown-column", "split {data} --by nope --out {out}", "no column 'nope'"),
    case("split-unknown-text-column", "split {data} --by group --text-column body --out {out}", "no text column 'body'"),
    case("split-where-unknown-column", "split {data} --by group --where zzz==1 --out {out}", "unknown column 'zzz'"),
    case("split-where-bad-syntax", "split {data} --by group --where score --out {out}", "score"),
    case("split-where-keeps-nothing", "split {data} --by group --where score>100 --out {out}", "no rows left"),
    case("split-values-absent", "split {data} --by group --values alpha,delta --out {out}", "'delta' of column 'group'"),
    case("split-bad-format", "split {data} --by group --format xml --out {out}", "unknown format 'xml'"),
    case("split-out-is-a-file", "split {data} --by group --out {out}", "{out} exists and is not a directory", "file"),
    case("split-out-not-empty", "split {data} --by group --out {out}", "{out} is not empty", "nonempty"),
    case("split-block-zero", "split {data} --by block:0 --out {out}", "--by block: block.size: Input should be greater than or equal to 1"),
    case("split-block-negative", "split {data} --by block:-3 --out {out}", "block.size: Input should be greater than or equal to 1"),
    case("split-block-not-whole", "split {data} --by block:2.5 --out {out}", "--by block:2.5: N must be a whole number of rows"),
    case("split-block-not-a-number", "split {data} --by block:author --out {out}", "--by block:author: N must be a whole number"),
    case("split-block-without-size", "split {data} --by block --out {out}", "--by block: give the rows per block (block:N"),
    case("split-block-larger-than-data", "split {data} --by block:13 --out {out}",
         "{data}: 12 row(s), fewer than one block of 13 (block:13); give N <= 12"),
    case("split-block-larger-than-data-after-where", "split {data} --by block:20 --where score>=3 --out {out}",
         "{data}: 12 row(s), fewer than one block of 20"),
    case("split-block-cluster-option", "split {data} --by block:4 --seed 3 --out {out}", "--seed do(es) not apply to --by block"),
    case("split-block-label-column-exists", "split {data} --by block:4 --label-column group --out {out}",
         "{data}: the data already has a column 'group'"),
    # ------------------------------------------------------------------ unlearn tvn
    case("tvn-model-missing", "unlearn tvn --model {nofile}-model --forget {data} --out {out}", "not found"),
    case("tvn-model-is-a-file", "unlearn tvn --model {data} --forget {data} --out {out}", "{data} is a file"),
    case("tvn-model-pickle-only", "unlearn tvn --model {pickle_model} --forget {data} --out {out} --device cpu",
         "{pickle_model} has only pickled weights (pytorch_model.bin)"),
    case("tvn-model-missing-layers", "unlearn tvn --model {partial_model} --forget {data} --out {out} --device cpu "
         "--eval-samples 0 --max-steps 1", "{partial_model} lacks model.layers.3."),
    case("tvn-model-truncated", "unlearn tvn --model {truncated_model} --forget {data} --out {out} --device cpu",
         "{truncated_model}/model.safetensors: corrupt or truncated"),
    case("tvn-model-garbage-header", "unlearn tvn --model {garbage_model} --forget {data} --out {out}",
         "{garbage_model}/model.safetensors: corrupt or truncated"),
    case("tvn-model-bad-config", "unlearn tvn --model {badconfig_model} --forget {data} --out {out}",
         "{badconfig_model}/config.json: not valid JSON"),
    case("tvn-model-config-list", "unlearn tvn --model {listconfig_model} --forget {data} --out {out}",
         "{listconfig_model}/config.json: expected a JSON object"),
    case("tvn-model-config-no-type", "unlearn tvn --model {notype_model} --forget {data} --out {out}",
         "{notype_model}/config.json: no 'model_type'"),
    case("tvn-model-no-config", "unlearn tvn --model {noconfig_model} --forget {data} --out {out}", "{noconfig_model} has no config.json"),
    case("tvn-model-no-weights", "unlearn tvn --model {noweights_model} --forget {data} --out {out}", "{noweights_model} has no weights"),
    case("tvn-model-index-missing-shard", "unlearn tvn --model {index_model} --forget {data} --out {out}",
         "lists model-00002-of-00002.safetensors, which is missing"),
    case("tvn-lambda-nan", "unlearn tvn --model {model} --forget {data} --out {out} --lambda nan",
         "--lambda nan: Input should be a finite number"),
    case("tvn-lambda-inf", "unlearn tvn --model {model} --forget {data} --out {out} --lambda inf",
         "--lambda inf: Input should be a finite number"),
    case("tvn-lambda-negative", "unlearn tvn --model {model} --forget {data} --out {out} --lambda -1", "--lambda must be >= 0"),
    case("tvn-lr-zero", "unlearn tvn --model {model} --forget {data} --out {out} --lr 0", "--lr must be > 0 (got 0)"),
    case("tvn-lr-nan", "unlearn tvn --model {model} --forget {data} --out {out} --lr nan", "--lr nan: Input should be a finite number"),
    case("tvn-rank-zero", "unlearn tvn --model {model} --forget {data} --out {out} --rank 0", "--rank must be >= 1 (got 0)"),
    case("tvn-dropout-one", "unlearn tvn --model {model} --forget {data} --out {out} --lora-dropout 1",
         "--lora-dropout must be < 1 (got 1)"),
    case("tvn-warmup-nan", "unlearn tvn --model {model} --forget {data} --out {out} --warmup nan",
         "--warmup nan: Input should be a finite"),
    case("tvn-max-length-one", "unlearn tvn --model {model} --forget {data} --out {out} --max-length 1",
         "--max-length must be >= 2 (got 1)"),
    case("tvn-scheduler", "unlearn tvn --model {model} --forget {data} --out {out} --lr-scheduler wavy",
         "--lr-scheduler wavy: Input should be"),
    case("tvn-grad-norm-inf", "unlearn tvn --model {model} --forget {data} --out {out} --max-grad-norm inf",
         "--max-grad-norm inf: Input should be a finite"),
    case("tvn-batch-size-text", "unlearn tvn --model {model} --forget {data} --out {out} --batch-size many", "'--batch-size'"),
    case("tvn-config-bad-yaml", "unlearn tvn --model {model} --forget {data} --out {out} --config {badyaml}", "{badyaml}: not valid YAML"),
    case("tvn-config-unknown-key", "unlearn tvn --model {model} --forget {data} --out {out} --config {unknownkey}",
         "{unknownkey}: bogus_key: Extra inputs are not permitted"),
    case("tvn-config-not-mapping", "unlearn tvn --model {model} --forget {data} --out {out} --config {listyaml}",
         "{listyaml}: expected a mapping"),
    case("tvn-config-lambda-nan", "unlearn tvn --model {model} --forget {data} --out {out} --config {nanyaml}",
         "{nanyaml}: lam: Input should be a finite number"),
    case("tvn-config-missing", "unlearn tvn --model {model} --forget {data} --out {out} --config {nofile}", "{nofile}: file not found"),
    case("tvn-forget-bad-line", "unlearn tvn --model {model} --forget {badline} --out {out}", "{badline}:5: not valid JSON"),
    case("tvn-forget-blank", "unlearn tvn --model {model} --forget {blank} --out {out}", "{blank}: holds only blank lines"),
    case("tvn-forget-blank-txt", "unlearn tvn --model {model} --forget {blanktxt} --out {out}", "{blanktxt}: holds only blank lines"),
    case("tvn-forget-missing", "unlearn tvn --model {model} --forget {nofile} --out {out}", "{nofile}: no such file"),
    case("tvn-forget-plain-dir", "unlearn tvn --model {model} --forget {plaindir} --out {out}", "{plaindir} is a directory without"),
    case("tvn-forget-no-text-column", "unlearn tvn --model {model} --forget {notext} --out {out}", "{notext}: no column 'text'"),
    case("tvn-forget-text-column", "unlearn tvn --model {model} --forget {data} --out {out} --text-column body", "no column 'body'"),
    # ------------------------------------------------------------------ unlearn rmu
    case("rmu-model-pickle-only", "unlearn rmu --model {pickle_model} --forget {data} --retain {retain} --out {out} --device cpu",
         "{pickle_model} has only pickled weights"),
    case("rmu-model-truncated", "unlearn rmu --model {truncated_model} --forget {data} --retain {retain} --out {out} --device cpu",
         "{truncated_model}/model.safetensors: corrupt or truncated"),
    case("rmu-model-bad-config", "unlearn rmu --model {badconfig_model} --forget {data} --retain {retain} --out {out}",
         "{badconfig_model}/config.json: not valid JSON"),
    case("rmu-model-missing-layers", "unlearn rmu --model {partial_model} --forget {data} --retain {retain} --out {out} "
         "--device cpu --max-num-batches 1", "model.layers.3"),
    case("rmu-alpha-nan", "unlearn rmu --model {model} --forget {data} --retain {retain} --out {out} --alpha nan",
         "--alpha nan: Input should be a finite number"),
    case("rmu-lr-nan", "unlearn rmu --model {model} --forget {data} --retain {retain} --out {out} --lr nan",
         "--lr nan: Input should be a finite"),
    case("rmu-lr-negative", "unlearn rmu --model {model} --forget {data} --retain {retain} --out {out} --lr -1",
         "--lr must be > 0 (got -1)"),
    case("rmu-cosine-nan", "unlearn rmu --model {model} --forget {data} --retain {retain} --out {out} --early-stop-cosine nan",
         "--early-stop-cosine nan: Input should be a finite number"),
    case("rmu-layer-too-deep", "unlearn rmu --model {model} --forget {data} --retain {retain} --out {out} --layer 99 --device cpu",
         "--layer 99"),
    case("rmu-retain-missing", "unlearn rmu --model {model} --forget {data} --retain {nofile} --out {out}", "{nofile}"),
    case("rmu-retain-blank", "unlearn rmu --model {model} --forget {data} --retain {blanktxt} --out {out}", "{blanktxt}"),
    case("rmu-forget-bad-line", "unlearn rmu --model {model} --forget {badline} --retain {retain} --out {out}", "{badline}:5"),
    case("rmu-config-unknown-key", "unlearn rmu --model {model} --forget {data} --retain {retain} --out {out} --config {unknownkey}",
         "bogus_key: Extra inputs"),
    # ------------------------------------------------------------------ negate
    case("negate-lambda-nan", "negate {tvn_run} --lambda nan --out {out}", "--lambda nan: λ must be a finite number >= 0"),
    case("negate-lambda-inf", "negate {tvn_run} --lambda inf --out {out}", "--lambda inf: λ must be a finite number >= 0"),
    case("negate-lambda-negative", "negate {tvn_run} --lambda -1 --out {out}", "--lambda -1.0: λ must be a finite number >= 0"),
    case("negate-all-lambda-nan", "negate {tvn_runs} --lambda nan --out {out}", "--lambda nan"),
    case("negate-in-place-lambda-nan", "negate {tvn_run} --lambda nan", "--lambda nan"),
    case("negate-not-a-run", "negate {plaindir} --lambda 1 --out {out}", "{plaindir} is not a TVN run"),
    case("negate-missing", "negate {nofile} --lambda 1 --out {out}", "{nofile}: no such run directory"),
    case("negate-rmu-run", "negate {rmu_run} --lambda 1 --out {out}", "{rmu_run} is not a TVN run"),
    case("negate-corrupt-adapter", "negate {tvn_corrupt} --lambda 0.5 --out {out}",
         "{tvn_corrupt}/unnegated/adapter_model.safetensors: corrupt or truncated"),
    case("negate-no-unnegated", "negate {tvn_nounneg} --lambda 0.5 --out {out}", "unnegated/adapter_model.safetensors: missing"),
    case("negate-out-not-empty", "negate {tvn_run} --lambda 0.5 --out {out}", "{out} is not empty", "nonempty"),
    # ------------------------------------------------------------------ materialize
    case("materialize-not-a-run", "materialize {plaindir} --out {out}", "{plaindir} is not an RMU run"),
    case("materialize-several-runs", "materialize {rmu_runs} --out {out}", "{rmu_runs} holds several runs"),
    case("materialize-truncated-delta", "materialize {rmu_truncated} --out {out} --model {model}",
         "{rmu_truncated}/delta.safetensors: corrupt or truncated"),
    case("materialize-wrong-kind", "materialize {rmu_wrongkind} --out {out}", "has kind 'tvn-adapter'"),
    case("materialize-foreign-tensor", "materialize {rmu_foreign} --out {out} --model {model}",
         "tensor model.layers.99.mlp.down_proj.weight is not in"),
    case("materialize-base-pickle", "materialize {rmu_run} --out {out} --model {pickle_model}", "{pickle_model} has only pickled weights"),
    case("materialize-base-truncated", "materialize {rmu_run} --out {out} --model {truncated_model}",
         "{truncated_model}/model.safetensors: corrupt or truncated"),
    case("materialize-base-bad-config", "materialize {rmu_run} --out {out} --model {badconfig_model}",
         "{badconfig_model}/config.json: not valid JSON"),
    case("materialize-out-not-empty", "materialize {rmu_run} --out {out}", "{out} is not empty", "nonempty"),
    # ------------------------------------------------------------------ merge
    case("merge-lambda-nan", "merge {rmu_runs} --base {model} --out {out} --lambda nan", "--lambda nan: Input should be a finite number"),
    case("merge-lambda-inf", "merge {rmu_runs} --base {model} --out {out} --lambda inf", "--lambda inf: Input should be a finite number"),
    case("merge-lambda-negative", "merge {rmu_runs} --base {model} --out {out} --lambda -1",
         "--lambda -1.0: Input should be greater than or equal to 0"),
    case("merge-density-zero", "merge {rmu_runs} --base {model} --out {out} --density 0", "--density 0.0: Input should be greater than 0"),
    case("merge-density-above-one", "merge {rmu_runs} --base {model} --out {out} --density 1.5",
         "--density 1.5: Input should be less than or equal to 1"),
    case("merge-density-nan", "merge {rmu_runs} --base {model} --out {out} --density nan",
         "--density nan: Input should be a finite number"),
    case("merge-density-one-of-two", "merge {rmu_runs} --base {model} --out {out} --density 0.5 --density 2", "--density[1] 2.0"),
    case("merge-weight-inf", "merge {rmu_runs} --base {model} --out {out} --weight inf", "--weight inf: Input should be a finite number"),
    case("merge-dtype-float8", "merge {rmu_runs} --base {model} --out {out} --dtype float8", "--dtype 'float8'"),
    case("merge-dry-run-lambda-nan", "merge {rmu_runs} --base {model} --out {out} --lambda nan --dry-run", "--lambda nan"),
    case("merge-method", "merge {rmu_runs} --base {model} --out {out} --method bogus", "unknown merge method 'bogus'"),
    case("merge-param-syntax", "merge {rmu_runs} --base {model} --out {out} --param int8_mask", "--param 'int8_mask'"),
    case("merge-param-unknown", "merge {rmu_runs} --base {model} --out {out} --param foo=1", "Unknown parameter(s) for ties: foo"),
    case("merge-shard-size", "merge {rmu_runs} --base {model} --out {out} --shard-size 0", "--shard-size '0'"),
    case("merge-no-base", "merge {rmu_runs} --out {out}", "--base is required"),
    case("merge-no-runs", "merge --base {model} --out {out}", "give the runs to merge"),
    case("merge-base-pickle", "merge {rmu_runs} --base {pickle_model} --out {out}", "{pickle_model} has only pickled weights"),
    case("merge-base-truncated", "merge {rmu_runs} --base {truncated_model} --out {out}",
         "{truncated_model}/model.safetensors: corrupt or truncated"),
    case("merge-base-bad-config", "merge {rmu_runs} --base {badconfig_model} --out {out}", "{badconfig_model}/config.json"),
    case("merge-truncated-run", "merge {rmu_run} {rmu_truncated} --base {model} --out {out}",
         "{rmu_truncated}/delta.safetensors: corrupt or truncated"),
    case("merge-run-missing", "merge {nofile} --base {model} --out {out}", "{nofile}"),
    case("merge-recipe-lambda-nan", "merge --recipe {recipe_nan} --out {out}", "{recipe_nan}: parameters.lambda: Input should be a finite"),
    case("merge-recipe-lambda-negative", "merge --recipe {recipe_neg} --out {out}",
         "{recipe_neg}: parameters.lambda: Input should be greater"),
    case("merge-recipe-density", "merge --recipe {recipe_dens} --out {out}", "{recipe_dens}: models[0].parameters.density"),
    case("merge-recipe-broken-yaml", "merge --recipe {recipe_broken} --out {out}", "{recipe_broken}: not valid YAML"),
    case("merge-recipe-and-lambda", "merge --recipe {recipe_nan} --out {out} --lambda 1", "drop --lambda"),
    case("merge-out-not-empty", "merge {rmu_runs} --base {model} --out {out}", "{out} is not empty", "nonempty"),
    case("merge-anchored-rho-negative", "merge {rmu_runs} --base {model} --out {out} --method anchored_ls --param rho=-1",
         "parameters.rho: Input should be greater than or equal to 0"),
    case("merge-anchored-no-retain", "merge {rmu_runs} --base {model} --out {out} --method anchored_ls",
         "anchored_ls with rho > 0 needs retain data"),
    case("merge-anchored-no-forget", "merge {rmu_runs} --base {model} --out {out} --method anchored_ls --param rho=0",
         "records no forget data"),
    case("merge-anchored-gram-inputs", "merge {rmu_runs} --base {model} --out {out} --method anchored_ls --gram-inputs other",
         "--gram-inputs 'other'"),
    case("merge-recipe-stats-missing", "merge --recipe {recipe_anchored} --out {out}",
         "{recipe_anchored}: models[0].parameters.gram: "),
    # ------------------------------------------------------------------ eval
    case("ppl-model-pickle-only", "eval perplexity --model {pickle_model} --data {retain} --out {out} --device cpu",
         "{pickle_model} has only pickled weights"),
    case("ppl-model-missing-layers", "eval perplexity --model {partial_model} --data {retain} --out {out} --device cpu",
         "{partial_model} lacks model.layers.3."),
    case("ppl-model-truncated", "eval perplexity --model {truncated_model} --data {retain} --out {out}",
         "{truncated_model}/model.safetensors: corrupt or truncated"),
    case("ppl-model-bad-config", "eval perplexity --model {badconfig_model} --data {retain} --out {out}", "{badconfig_model}/config.json"),
    case("ppl-data-bad-line", "eval perplexity --model {model} --data {badline} --out {out} --device cpu", "{badline}:5: not valid JSON"),
    case("ppl-data-blank", "eval perplexity --model {model} --data {blank} --out {out} --device cpu", "{blank}: holds only blank lines"),
    case("ppl-data-missing", "eval perplexity --model {model} --data {nofile} --out {out} --device cpu", "{nofile}"),
    case("ppl-text-column", "eval perplexity --model {model} --data {data} --text-column body --out {out} --device cpu",
         "no column 'body'"),
    case("tox-model-pickle-only", "eval toxicity --model {pickle_model} --prompts {prompts} --out {out} --device cpu",
         "{pickle_model} has only pickled weights"),
    case("tox-model-truncated", "eval toxicity --model {truncated_model} --prompts {prompts} --out {out} --device cpu",
         "{truncated_model}/model.safetensors: corrupt or truncated"),
    case("tox-judge-without-head", "eval toxicity --model {model} --prompts {prompts} --classifier {headless_judge} --out {out} "
         "--device cpu", "{headless_judge} lacks score.weight"),
    case("tox-judge-truncated", "eval toxicity --model {model} --prompts {prompts} --classifier {truncated_judge} --out {out} "
         "--device cpu", "{truncated_judge}/model.safetensors: corrupt or truncated"),
    case("tox-prompts-missing", "eval toxicity --model {model} --prompts {nofile} --out {out} --device cpu", "{nofile}"),
    case("fluency-generations-missing", "eval fluency --generations {nofile} --judge {model} --out {out}", "{nofile}"),
    case("fluency-generations-bad-line", "eval fluency --generations {badgens} --judge {model} --out {out} --device cpu",
         "{badgens}:2"),
    case("fluency-judge-pickle-only", "eval fluency --generations {gens} --judge {pickle_model} --out {out}",
         "{pickle_model} has only pickled weights"),
    case("harness-model-pickle-only", "eval harness --model {pickle_model} --tasks arc_easy --out {out}",
         "{pickle_model} has only pickled weights"),
    case("harness-model-truncated", "eval harness --model {truncated_model} --tasks arc_easy --out {out}",
         "{truncated_model}/model.safetensors: corrupt or truncated"),
    case("relearn-steps-zero", "eval relearn --model {model} --data {data} --config {relearn_cfg} --base {model} --steps 0 --out {out}",
         "--steps must be >= 1 (got 0)"),
    case("relearn-k-beyond-data", "eval relearn --model {model} --data {data} --config {relearn_cfg} --base {model} --k 50 --out {out}",
         "--k 50: {data} has 12 texts"),
    case("relearn-measure-not-drivable", "eval relearn --model {model} --data {data} --config {relearn_cfg} --base {model} "
         "--measure perplexity --out {out}", "--measure perplexity: relearn cannot drive it"),
    case("relearn-eval-step-beyond", "eval relearn --model {model} --data {data} --config {relearn_cfg} --base {model} --steps 2 "
         "--eval-at-steps 0,5 --out {out}", "eval_at_steps: step 5 is outside 0..2"),
    case("relearn-fewshot-without-domains", "eval relearn --model {model} --data {data} --config {relearn_cfg} --base {model} "
         "--probes fewshot --out {out}", "--probes fewshot: give --fewshot-domains"),
    case("relearn-measure-settings-not-a-mapping", ["eval", "relearn", "--model", "{model}", "--data", "{data}", "--base", "{model}",
                                                   "--measure-settings", "[1, 2]", "--out", "{out}"],
         "--measure-settings [1, 2]: expected a YAML mapping"),
    case("relearn-no-base", "eval relearn --model {model} --data {data} --config {relearn_cfg} --out {out}",
         "relearn needs the base model's accuracy"),
    case("compare-nothing", "eval compare --out {out}", "nothing to compare"),
    case("compare-broken-result", "eval compare a={brokenresult} b={brokenresult} --out {out}", "{brokenresult}/toxicity.json"),
    case("compare-missing-result", "eval compare a={nofile} --out {out}", "{nofile}"),
    case("compare-base-without-arm", "eval compare a={brokenresult} --base {brokenresult} --out {out}", "frontier mode"),
    case("frontier-not-a-run", "eval frontier {model} --out {out}", "{model}: not a `spunge run` directory"),
    case("frontier-bad-keep-drop", "eval frontier {model} --keep-drop 0 --out {out}", "--keep-drop 0"),
    # ------------------------------------------------------------------ push (checks only: --dry-run)
    case("push-missing-dir", "push {nofile} --repo alice/x --dry-run", "{nofile}"),
    case("push-secret", "push {push_secret} --repo alice/x --dry-run", "notes.txt"),
    case("push-bad-repo", "push {model} --repo not/a/repo --dry-run", "not/a/repo"),
    case("push-truncated", "push {truncated_model} --repo alice/x --dry-run", "{truncated_model}: model.safetensors: not a readable"),
    case("push-pickle-only", "push {pickle_model} --repo alice/x --dry-run", "pytorch_model.bin"),
    case("push-bad-config", "push {badconfig_model} --repo alice/x --dry-run", "{badconfig_model}/config.json"),
    # ------------------------------------------------------------------ run (pipeline files and --set)
    case("run-missing-file", "run {nofile} --run-dir {out}", "{nofile}' does not exist"),
    case("run-broken-yaml", "run {pipe_broken} --run-dir {out}", "{pipe_broken}: not valid YAML"),
    case("run-not-a-mapping", "run {pipe_list} --run-dir {out}", "{pipe_list}: expected a mapping"),
    case("run-unknown-key", "run {pipe_unknown_top} --run-dir {out}", "{pipe_unknown_top}: bogus: Extra inputs"),
    case("run-merge-lambda-negative", "run {pipe_lam_neg} --run-dir {out}",
         "{pipe_lam_neg}: merge.lambda.0: Input should be greater than or equal to 0"),
    case("run-merge-lambda-nan", "run {pipe_lam_nan} --run-dir {out}", "{pipe_lam_nan}: merge.lambda.0: Input should be a finite number"),
    case("run-merge-lambda-inf", "run {pipe_lam_inf} --run-dir {out}", "merge.lambda.0: Input should be a finite number"),
    case("run-merge-density-zero", "run {pipe_dens0} --run-dir {out}", "{pipe_dens0}: merge.density: Input should be greater than 0"),
    case("run-merge-density-above-one", "run {pipe_dens15} --run-dir {out}", "merge.density: Input should be less than or equal to 1"),
    case("run-merge-dtype", "run {pipe_dtype} --run-dir {out}", "merge.dtype: Input should be 'float32'"),
    case("run-merge-typo", "run {pipe_merge_typo} --run-dir {out}", "merge.densty: Extra inputs"),
    case("run-unlearn-method", "run {pipe_method} --run-dir {out}", "unlearn.method"),
    case("run-unlearn-lr-nan", "run {pipe_lr_nan} --run-dir {out}", "{pipe_lr_nan}: unlearn.config.lr: Input should be a finite number"),
    case("run-unlearn-lr-negative", "run {pipe_lr_neg} --run-dir {out}", "unlearn.config.lr: Input should be greater than 0"),
    case("run-unlearn-lambda-nan", "run {pipe_tvn_lam_nan} --run-dir {out}", "unlearn.config.lam: Input should be a finite number"),
    case("run-unlearn-config-typo", "run {pipe_cfg_typo} --run-dir {out}", "unlearn.config.rnak: Extra inputs"),
    case("run-no-split", "run {pipe_no_split} --run-dir {out}", "split: Field required"),
    case("run-no-evaluation", "run {pipe_no_eval} --run-dir {out}", "no evaluation chosen"),
    case("run-push-lambda", "run {pipe_push_lam} --run-dir {out}", "push.lambda 0.5 is not one of merge.lambda"),
    case("run-baseline-lambda-nan", "run {pipe_baseline_nan} --run-dir {out}", "baseline.lambda.0: Input should be a finite number"),
    case("run-split-limit-zero", "run {pipe_limit0} --run-dir {out}", "split.data.limit: Input should be greater than or equal to 1"),
    case("run-split-block-zero", "run {pipe_block0} --run-dir {out}", "split.by: split.by block: block.size: Input should be greater"),
    case("run-split-block-float", "run {pipe_block_float} --run-dir {out}", "block.size: Input should be a valid integer"),
    case("run-split-block-text", "run {pipe_block_text} --run-dir {out}", "split.by block:twenty: N must be a whole number"),
    case("run-split-block-with-limit", "run {pipe_block_limit} --run-dir {out}", "split: data.limit does not go with by block:N"),
    case("run-name-pattern", "run {pipe_name} --run-dir {out}", "name: String should match pattern"),
    case("run-rmu-without-retain", "run {pipe_rmu_no_retain} --run-dir {out}", "unlearn: method 'rmu' needs `retain` data"),
    case("run-npo-without-retain", "run {pipe_npo_no_retain} --run-dir {out}", "unlearn: method 'npo' needs `retain` data"),
    case("run-npo-beta-zero", "run {pipe_npo_beta0} --run-dir {out}", "unlearn.config.beta: Input should be greater than 0"),
    case("run-graddiff-without-retain", "run {pipe_graddiff_no_retain} --run-dir {out}", "method 'graddiff' needs `retain` data"),
    case("run-ga-with-retain", "run {pipe_ga_retain} --run-dir {out}", "method 'ga' uses no retain data"),
    case("run-unknown-method", "run {pipe_unknown_method} --run-dir {out}", "unlearn.method: unknown unlearning method 'sgd'"),
    case("npo-beta-zero", "unlearn npo --model {model} --forget {data} --out {out} --beta 0 --alpha 0", "--beta must be > 0"),
    case("npo-without-retain", "unlearn npo --model {model} --forget {data} --out {out}", "retain"),
    case("simnpo-beta-negative", "unlearn simnpo --model {model} --forget {data} --out {out} --beta -1 --alpha 0",
         "--beta must be > 0"),
    case("ga-lr-zero", "unlearn ga --model {model} --forget {data} --out {out} --lr 0", "--lr must be > 0 (got 0)"),
    case("run-eval-keyword", "run {pipe_eval_kw} --run-dir {out}", "eval.perplexity.strid: unknown setting"),
    case("run-resources", "run {pipe_resources} --run-dir {out}", "unlearn.resources.cpus"),
    case("run-only-unknown-stage", "run {pipeline} --run-dir {out} --only mergee", "--only mergee"),
    case("run-set-lambda-negative", "run {pipeline} --run-dir {out} --set merge.lambda=-1",
         "--set merge.lambda=-1: merge.lambda.0: Input should be greater than or equal to 0"),
    case("run-set-lambda-nan", "run {pipeline} --run-dir {out} --set merge.lambda=.nan", "--set merge.lambda=.nan: merge.lambda.0"),
    case("run-set-density", "run {pipeline} --run-dir {out} --set merge.density=2",
         "--set merge.density=2: merge.density: Input should be less than or equal to 1"),
    case("run-set-lr-nan", "run {pipeline} --run-dir {out} --set unlearn.config.lr=.nan",
         "--set unlearn.config.lr=.nan: unlearn.config.lr: Input should be a finite number"),
    case("run-set-config-typo", "run {pipeline} --run-dir {out} --set unlearn.config.rnak=4",
         "--set unlearn.config.rnak=4: unlearn.config.rnak"),
    case("run-set-whole-section", "run {pipeline} --run-dir {out} --set merge={density:0}", "--set merge={density:0}: merge.density"),
    case("run-set-mapping", ["run", "{pipeline}", "--run-dir", "{out}", "--set", "merge={lambda: [1, -2]}"],
         "--set merge={lambda: [1, -2]}: merge.lambda.1: Input should be greater than or equal to 0"),
    case("run-set-no-equals", "run {pipeline} --run-dir {out} --set merge.lambda", "--set 'merge.lambda': expected KEY.PATH=VALUE"),
    case("run-set-bad-yaml", "run {pipeline} --run-dir {out} --set merge.lambda=[1,", "--set merge.lambda: value is not valid YAML"),
    case("run-set-through-scalar", "run {pipeline} --run-dir {out} --set name.x=1", "--set name.x: name is not a mapping"),
    case("run-set-name", "run {pipeline} --run-dir {out} --set name=a/b", "--set name=a/b: name: String should match pattern"),
    case("eval-mia-same-texts", "eval mia --model {model} --members {data} --nonmembers {data} --out {out}", "also in"),
    case("eval-mia-k-zero", "eval mia --model {model} --members {data} --nonmembers {data} --out {out} --k 0", "--k"),
    case("eval-privleak-no-reference", "eval privleak --model {model} --members {data} --nonmembers {blank} --out {out}", "--reference"),
    case("eval-extraction-no-column", "eval extraction --model {model} --data {data} --out {out} --text-column body", "no column 'body'"),
    case("eval-truth-ratio-no-column", "eval truth_ratio --model {model} --data {data} --out {out}", "no column 'question'"),
    case("eval-truth-ratio-reference-not-a-result", "eval truth_ratio --model {model} --data {facts} --reference {plaindir} --out {out}",
         "{plaindir}: not a truth_ratio result"),
    case("eval-truth-ratio-reference-other-facts", "eval truth_ratio --model {model} --data {facts} --reference {truth_other} --out {out}",
         "{truth_other}: scored other facts than {facts}"),
    case("ga-prompt-without-answer", "unlearn ga --model {model} --forget {data} --out {out} --prompt-column text",
         "prompt_column and answer_column"),
    case("ga-answer-column-missing", "unlearn ga --model {model} --forget {data} --out {out} --prompt-column text --answer-column body",
         "no column 'body'"),
    case("tvn-quantize-unknown", "unlearn tvn --model {model} --forget {data} --out {out} --quantize int4",
         "--quantize int4: Input should be 'none' or 'nf4'"),
    case("ga-quantize-with-full", "unlearn ga --model {model} --forget {data} --out {out} --full --quantize nf4",
         "--quantize nf4: Value error, nf4 trains a LoRA adapter on a 4-bit base, which full does not use"),
    # ------------------------------------------------------------------ an output over, into or around an input (--force too)
    case("split-force-out-is-the-data-folder", "split {data} --by group --out {datadir} --force",
         "--out {datadir} contains the input {data}; spunge never writes over or into its inputs, even with --force"),
    case("split-force-over-a-folder-of-the-users", "split {data} --by group --out {out} --force",
         "--out {out} holds files that spunge did not write", "nonempty"),
    case("ga-force-out-is-the-model", "unlearn ga --model {model} --forget {data} --out {model} --force",
         "--out {model} is the input {model}"),
    case("tvn-force-out-inside-the-model", "unlearn tvn --model {model} --forget {data} --out {model}/runs --force",
         "--out {model}/runs lies inside the input {model}"),
    case("rmu-force-out-holds-the-retain-data", "unlearn rmu --model {model} --forget {split} --retain {retain} --out {datadir} --force",
         "--out {datadir} contains the input {retain}"),
    case("negate-force-out-is-the-runs", "negate {tvn_runs} --lambda 0.5 --out {tvn_runs} --force",
         "--out {tvn_runs} is the input {tvn_runs}"),
    case("materialize-force-out-is-the-run", "materialize {rmu_run} --out {rmu_run} --model {model} --force",
         "--out {rmu_run} is the input {rmu_run}"),
    case("merge-force-out-is-the-base", "merge {rmu_runs} --base {model} --out {model} --force", "--out {model} is the input"),
    case("merge-force-over-a-folder-of-the-users", "merge {rmu_runs} --base {model} --out {out} --force",
         "--out {out} holds files that spunge did not write", "nonempty"),
    case("eval-perplexity-out-is-the-model", "eval perplexity --model {model} --data {retain} --out {model}", "--out {model} is the input"),
    case("eval-perplexity-out-holds-the-data", "eval perplexity --model {model} --data {retain} --out {datadir} --force",
         "--out {datadir} contains the input {retain}"),
    case("run-dir-holds-the-data", "run {pipeline} --run-dir {datadir} --force", "--run-dir {datadir} contains the input {data}"),
    # ------------------------------------------------------------------ files that parse but hold no rows, unclear operators, names
    case("split-header-only-csv", "split {headercsv} --by group --out {out}",
         "{headercsv}: holds only a header line (text,group), no rows"),
    case("split-empty-json-list", "split {emptylist} --by group --out {out}", "{emptylist}: holds no rows"),
    case("split-empty-objects", "split {emptyobjects} --by group --out {out}", "{emptyobjects}: holds no rows"),
    case("split-header-only-parquet", "split {headerparquet} --by group --out {out}",
         "{headerparquet}: holds 0 rows (columns: text, group)"),
    case("tvn-forget-header-only-csv", "unlearn tvn --model {model} --forget {headercsv} --out {out}", "{headercsv}: holds only a header"),
    case("ppl-data-header-only-parquet", "eval perplexity --model {model} --data {headerparquet} --out {out}",
         "{headerparquet}: holds 0 rows"),
    case("split-where-triple-equals", ["split", "{data}", "--by", "group", "--where", "label === hate", "--out", "{out}"],
         "filter 'label === hate': '===' is not an operator"),
    case("split-where-arrow", ["split", "{data}", "--by", "group", "--where", "score => 3", "--out", "{out}"],
         "filter 'score => 3': '=>' is not an operator"),
    case("push-bad-repo-before-token", ["push", "{model}", "--repo", "not a repo/../x"], "--repo 'not a repo/../x' must be OWNER/NAME"),
    case("push-bad-repo-dots-before-token", ["push", "{model}", "--repo", "alice/bad..name"], "--repo 'alice/bad..name' is not a valid"),
    case("ppl-model-no-tokenizer", "eval perplexity --model {notok_model} --data {retain} --out {out}",
         "{notok_model} has no tokenizer files"),
    case("tvn-model-no-tokenizer", "unlearn tvn --model {notok_model} --forget {data} --out {out}", "{notok_model} has no tokenizer files"),
    case("rmu-model-no-tokenizer", "unlearn rmu --model {notok_model} --forget {data} --retain {retain} --out {out}",
         "{notok_model} has no tokenizer files"),
    case("tox-model-no-tokenizer", "eval toxicity --model {notok_model} --prompts {prompts} --out {out}", "{notok_model} has no tokenizer"),
    case("compare-mixed-knowledge-forms", "eval compare base={kchoice} npo={kcompletion} --out {out}",
         "knowledge forms (4-option choice vs greedy completion) differ (base choice, npo completion)"),
    case("compare-mixed-fact-sets", "eval compare base={kcompletion} npo={kotherfacts} --out {out}",
         "knowledge fact sets differ (sha256: base a, npo b)"),
    case("pickle-allowed-no-tokenizer", "--allow-pickle eval perplexity --model {picklenotok_model} --data {retain} --out {out}",
         "{picklenotok_model} has no tokenizer files"),
    case("pickle-allowed-no-tokenizer-ga", "--allow-pickle unlearn ga --model {picklenotok_model} --forget {data} --out {out}",
         "{picklenotok_model} has no tokenizer files"),
]


# --------------------------------------------------------------------------------------- the check


def _tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` (or of `path` itself), keyed by relative name."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.is_dir():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _fill(text: str, values: dict[str, str]) -> str:
    for key in sorted(values, key=len, reverse=True):
        text = text.replace("{" + key + "}", values[key])
    return text


def test_the_table_is_large_and_covers_every_command():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 100
    commands = {c.argv[0] if c.argv[0] not in ("unlearn", "eval") else " ".join(c.argv[:2]) for c in CASES}
    assert commands >= {"split", "unlearn tvn", "unlearn rmu", "negate", "materialize", "merge", "eval toxicity",
                        "eval fluency", "eval perplexity", "eval harness", "eval compare", "push", "run"}


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_everything_as_it_was(bad, world, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("SPUNGE_CACHE", str(tmp_path / "cache"))
    out = work / "out"
    values = {name: str(path) for name, path in world.items()} | {"out": str(out)}
    argv = [_fill(part, values) for part in bad.argv]
    if bad.prepare == "file":
        out.write_text("a file of the user's\n", encoding="utf-8")
    elif bad.prepare == "nonempty":
        out.mkdir()
        (out / "keep.txt").write_text("the user's\n", encoding="utf-8")
    inputs = {name: path for name, path in world.items() if any(str(path) in part for part in argv)}
    before = {name: _tree_digest(path) for name, path in inputs.items()}
    workspace_before = _tree_digest(work)

    result = runner.invoke(app, argv)

    output = result.output.strip()
    print(f"\n[{bad.id}] {output}")  # pytest -s shows every message, for review
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{bad.id}: raised {type(result.exception).__name__}: {result.exception}\n{output}")
    assert result.exit_code == 2, f"{bad.id}: exit code {result.exit_code}\n{output}"
    assert "Traceback" not in output, output
    assert output.count("\n") == 0, f"{bad.id}: more than one line:\n{output}"
    expected = _fill(bad.expect, values)
    assert expected in output, f"{bad.id}: expected {expected!r} in:\n{output}"
    assert {name: _tree_digest(path) for name, path in inputs.items()} == before, f"{bad.id}: an input changed"
    assert _tree_digest(work) == workspace_before, f"{bad.id}: the output location changed"
    assert sorted(p.name for p in work.iterdir()) == (["out"] if bad.prepare else []), f"{bad.id}: left {list(work.iterdir())}"


# --------------------------------------------------------------------------------------- split names


def test_long_values_sharing_a_prefix_keep_every_row(tmp_path):
    """Two 300-character values that differ only at the end used to be written to one file (rows lost)."""
    long_a, long_b = "x" * 300, "x" * 300 + "y"
    rows = [{"text": f"t{i}", "g": value} for i, value in enumerate([long_a, long_b, long_b, "short", long_a])]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    result = runner.invoke(app, ["split", str(data), "--by", "g", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    files = {entry["value"]: entry["file"] for entry in manifest["subsets"]}
    assert len(set(files.values())) == 3
    for entry in manifest["subsets"]:
        written = [json.loads(line) for line in (out / entry["file"]).read_text().splitlines()]
        assert [r["g"] for r in written] == [entry["value"]] * entry["rows"]
        assert len(entry["file"]) < 255
    assert sum(entry["rows"] for entry in manifest["subsets"]) == len(rows)


def test_values_equal_but_for_case_get_names_distinct_on_a_case_insensitive_disk(tmp_path):
    rows = [{"text": f"t{i}", "g": value} for i, value in enumerate(["Women", "women", "WOMEN", "men", "women"])]
    data = _write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    result = runner.invoke(app, ["split", str(data), "--by", "g", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    names = [entry["file"].casefold() for entry in manifest["subsets"]]
    assert len(set(names)) == 4
    assert {e["value"]: e["rows"] for e in manifest["subsets"]} == {"Women": 1, "women": 2, "WOMEN": 1, "men": 1}
    assert next(e["file"] for e in manifest["subsets"] if e["value"] == "men") == "men.jsonl"  # no clash: kept as is


# --------------------------------------------------------------------------------------- pickles on request


def test_a_pickle_only_model_loads_with_allow_pickle_and_gives_the_same_logits(world):
    """--allow-pickle is the explicit opt-in; then the weights are the real ones, not random."""
    from spunge_merge.models import allow_pickle, load_causal_lm, resolve_model

    ids = torch.tensor([[1, 2, 3, 4]])
    reference = load_causal_lm(resolve_model(world["model"]))(ids).logits
    allow_pickle(True)
    try:
        loaded = load_causal_lm(resolve_model(world["pickle_model"]))(ids).logits
    finally:
        allow_pickle(False)
    assert torch.equal(loaded, reference)


def test_tied_embeddings_are_not_reported_missing(tmp_path):
    from spunge_merge.models import load_causal_lm, resolve_model

    tied = build_tiny_llama(tmp_path / "tied", layers=2, tie_word_embeddings=True)
    lm = load_causal_lm(resolve_model(tied))
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()


def test_allow_pickle_on_the_command_line_scores_the_real_weights(world, tmp_path):
    """`spunge --allow-pickle` loads the pickle; its perplexity is the safetensors twin's, not a random model's."""
    scores = {}
    for label, model, flags in (("safetensors", world["model"], []), ("pickle", world["pickle_model"], ["--allow-pickle"])):
        out = tmp_path / label
        result = runner.invoke(app, [*flags, "eval", "perplexity", "--model", str(model), "--data", str(world["retain"]),
                                     "--out", str(out), "--device", "cpu", "--max-length", "32", "--stride", "16"])
        assert result.exit_code == 0, result.output
        scores[label] = json.loads((out / "perplexity.json").read_text())["perplexity"]
    assert scores["pickle"] == pytest.approx(scores["safetensors"], rel=1e-6)
    refused = runner.invoke(app, ["eval", "perplexity", "--model", str(world["pickle_model"]), "--data", str(world["retain"]),
                                  "--out", str(tmp_path / "again"), "--device", "cpu"])
    assert refused.exit_code == 2 and "--allow-pickle" in refused.output  # the flag lasts one command, not the process


def test_a_write_error_names_what_was_written_not_the_input(world, tmp_path, monkeypatch):
    import datasets

    from spunge_merge.data.loading import load_table
    from spunge_merge.errors import SpungeError

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x", encoding="utf-8")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", blocker / "cache")
    with pytest.raises(SpungeError) as error:
        load_table(world["data"])
    message = str(error.value)
    assert message.startswith(f"cannot write {blocker / 'cache'}") and "cannot parse" not in message


def test_merge_ranges_are_defined_once():
    """The pipeline's merge section and `spunge merge` validate each setting with the same declaration."""
    from spunge_merge.merge.settings import MergeOptions, MergeSettings
    from spunge_merge.pipeline.schema import MergeSection

    assert issubclass(MergeSection, MergeOptions) and issubclass(MergeSettings, MergeOptions)
    for name in ("method", "density", "weight", "normalize", "dtype"):
        assert name not in MergeSection.__dict__.get("__annotations__", {}), name
        assert name not in MergeSettings.__dict__.get("__annotations__", {}), name
    assert MergeSection.model_fields["lambdas"].annotation.__args__[0] is MergeSettings.model_fields["lam"].annotation.__args__[0]


def test_a_safe_value_that_looks_like_another_values_hashed_name_gets_its_own_name():
    import hashlib as _hashlib

    from spunge_merge.data.split import subset_names

    lookalike = "a_b-" + _hashlib.sha256(b"a/b").hexdigest()[:8]  # what `a/b` is named on its own
    names = subset_names([lookalike, "a/b", "a_b"])
    assert len({n.casefold() for n in names.values()}) == 3
    assert all("/" not in n and not n.startswith(".") for n in names.values())
