"""One `runtime` setting moves every stage of a pipeline to a device and a dtype.

End to end on the tiny model: `runtime: {device: cpu, dtype: bfloat16}` makes the unlearning runs
(split and baseline) train in bf16 and record it, the merge write a bf16 model that transformers
loads, and every evaluation load its model in bf16 and record it. Unit checks: what the runtime
fills in, and that a stage's own setting wins; `auto` adds nothing, so existing run directories keep
their fingerprints; a `cuda` runtime is honoured by every stage (refused here when no GPU exists).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from spunge_merge.errors import SpungeError
from spunge_merge.pipeline import run_pipeline
from spunge_merge.pipeline import runtime as runtime_mod
from spunge_merge.pipeline.evals import accepted_keywords
from spunge_merge.pipeline.schema import parse_pipeline

GROUPS = ("alpha", "beta")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workspace(tiny_model, tmp_path_factory) -> Path:
    from conftest import TINY_CORPUS

    root = tmp_path_factory.mktemp("device-dtype")
    write_jsonl(root / "forget.jsonl", [{"text": f"{t} {i}", "group": GROUPS[i % 2]} for i, t in enumerate(TINY_CORPUS * 2)])
    write_jsonl(root / "retain.jsonl", [{"text": f"the market {t}"} for t in TINY_CORPUS])
    write_jsonl(root / "facts.jsonl", [{"domain": d, "prompt": p, "answer": a} for d, p, a in [
        ("alpha", "the quick brown", "fox"), ("beta", "cats and dogs live", "together")]])
    (root / "model").symlink_to(tiny_model)
    return root


def pipeline_data(method: str, **top) -> dict:
    if method == "tvn":
        unlearn = {"method": "tvn", "config": {"lr": 1e-2, "batch_size": 4, "max_length": 32, "seed": 0, "eval_samples": 2}}
    else:
        unlearn = {"method": "rmu", "retain": "retain.jsonl",
                   "config": {"layer": 3, "update_layers": [2, 3], "alpha": 10.0, "lr": 1e-3, "batch_size": 2, "seed": 0,
                              "forget_max_length": 32, "retain_max_length": 32}}
    return {"name": f"tiny-{method}", "model": "./model", "split": {"data": "forget.jsonl", "by": "group"}, "unlearn": unlearn,
            "merge": {"method": "ties", "density": 0.5}, "baseline": {"lambda": [1.0]},
            "eval": {"models": ["base", "baseline", "spunge"], "knowledge": {"facts": "facts.jsonl", "max_new_tokens": 2},
                     "perplexity": {"data": "retain.jsonl", "max_length": 32, "stride": 32}},
            **top}


def write_pipeline(root: Path, data: dict, name: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def dtypes_in(directory: Path) -> set[torch.dtype]:
    found = set()
    for file in directory.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            found |= {handle.get_slice(name).get_dtype() for name in handle.keys()}
    return found


@pytest.mark.parametrize("method", ["tvn", "rmu"])
def test_runtime_bfloat16_reaches_every_stage(workspace, method, tmp_path):
    from transformers import AutoModelForCausalLM

    data = pipeline_data(method, runtime={"device": "cpu", "dtype": "bfloat16"})
    summary = run_pipeline(write_pipeline(workspace, data, f"bf16-{method}"), run_dir=tmp_path / "run", live=False)
    run_dir = tmp_path / "run"
    assert summary.ran == ["split", "unlearn", "baseline", "merge", "eval"]

    # unlearn (each subset) and the baseline's run: settings and the run's own record say bf16 on the CPU
    for run in [run_dir / "unlearn" / g for g in GROUPS] + [run_dir / "baseline" / "run"]:
        record = json.loads((run / "spunge.json").read_text())
        assert record["config"]["dtype"] == "bfloat16" and record["config"]["device"] == "cpu", run
        assert record["result"]["dtype"] == "bfloat16" and record["result"]["device"] == "cpu", run
    if method == "rmu":  # the delta holds the bf16-trained tensors as trained
        assert dtypes_in(run_dir / "unlearn" / "alpha") == {"BF16"}

    # merge: a bf16 model (weights, config and record) that transformers loads
    merged = summary.merged["spunge"]
    assert dtypes_in(merged) == {"BF16"}
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    assert yaml.safe_load((merged / "mergekit_config.yml").read_text())["dtype"] == "bfloat16"
    lm = AutoModelForCausalLM.from_pretrained(merged, dtype="auto")
    assert lm.dtype == torch.bfloat16
    assert torch.isfinite(lm(torch.tensor([[1, 2, 3]])).logits).all()

    # eval: every model's evaluations ran in bf16 on the CPU and say so
    for label in ("base", "baseline", "spunge"):
        perplexity = json.loads((run_dir / "eval" / label / "perplexity.json").read_text())
        knowledge = json.loads((run_dir / "eval" / label / "knowledge.json").read_text())
        assert perplexity["config"]["dtype"] == "bfloat16" and perplexity["config"]["device"] == "cpu", label
        assert knowledge["settings"]["dtype"] == "bfloat16", label


def test_runtime_fills_only_what_a_stage_leaves_unset():
    base = pipeline_data("tvn")
    given = parse_pipeline({**base, "runtime": {"device": "cuda:1", "dtype": "bfloat16"}})
    config_class = type(given.unlearn.config)  # the method's own settings class (TVNConfig)
    filled = runtime_mod.method_settings(given, config_class(lr=1e-3))
    assert (filled.lr, filled.device, filled.dtype) == (1e-3, "cuda:1", "bfloat16")
    own_dtype = runtime_mod.method_settings(given, config_class(dtype="float32"))
    assert (own_dtype.device, own_dtype.dtype) == ("cuda:1", "float32")
    assert runtime_mod.merge_cuda(given) is True and runtime_mod.merge_dtype(given) == "bfloat16"
    perplexity = runtime_mod.eval_settings(given, accepted_keywords("perplexity"), {"max_length": 32})
    assert perplexity == {"max_length": 32, "device": "cuda:1", "dtype": "bfloat16"}
    assert runtime_mod.eval_settings(given, {"max_length"}, {}) == {}  # a function without device/dtype gets neither

    own = parse_pipeline({**base, "runtime": {"device": "cuda", "dtype": "bfloat16"},
                          "merge": {"cuda": False, "dtype": "float32"}, "eval": {**base["eval"], "device": "cpu"}})
    assert runtime_mod.merge_cuda(own) is False and runtime_mod.merge_dtype(own) == "float32"
    assert runtime_mod.eval_settings(own, {"device", "dtype"}, {})["device"] == "cpu"
    assert runtime_mod.eval_settings(own, {"device", "dtype"}, {"dtype": "float16"})["dtype"] == "float16"

    cpu = parse_pipeline({**base, "runtime": {"device": "cpu"}})
    assert runtime_mod.merge_cuda(cpu) is False and runtime_mod.merge_dtype(cpu) is None

    # auto (the default): nothing added, so fingerprints of existing run directories do not change
    auto = parse_pipeline(base)
    untouched = config_class(lr=1e-3)
    assert runtime_mod.method_settings(auto, untouched) is untouched
    assert runtime_mod.merge_cuda(auto) is None and runtime_mod.merge_dtype(auto) is None
    assert runtime_mod.eval_settings(auto, {"device", "dtype"}, {}) == {"device": "auto"}


@pytest.mark.parametrize("runtime, message", [({"device": "gpu"}, "runtime.device"), ({"dtype": "bf16"}, "runtime.dtype"),
                                              ({"devices": "cpu"}, "runtime.devices")])
def test_runtime_errors_name_the_key(runtime, message):
    with pytest.raises(SpungeError, match=message):
        parse_pipeline({**pipeline_data("tvn"), "runtime": runtime})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_cuda_runtime_is_honoured_by_unlearning(workspace, tmp_path):
    data = pipeline_data("tvn", runtime={"device": "cuda"})
    with pytest.raises(SpungeError, match="device 'cuda' requested but CUDA is not available"):
        run_pipeline(write_pipeline(workspace, data, "cuda"), run_dir=tmp_path / "run", live=False)


def test_spunge_demo_device_and_dtype_reach_every_stage_of_the_shipped_demo(monkeypatch, tmp_path):
    """`spunge demo --device cuda --dtype bfloat16` becomes runtime overrides, and the shipped demo sets no
    stage-level device or dtype that would win over them."""
    from typer.testing import CliRunner

    import spunge_merge.cli.run as run_cli
    from spunge_merge.cli import app
    from spunge_merge.config import apply_overrides, load_yaml

    seen: dict = {}

    def fake_run(pipeline, **kwargs):
        seen.update(kwargs, pipeline=pipeline)
        raise SpungeError("stopped by the test")

    monkeypatch.setattr(run_cli, "run_pipeline", fake_run)
    result = CliRunner().invoke(app, ["demo", "--device", "cuda", "--dtype", "bfloat16", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2 and "stopped by the test" in result.output
    assert seen["overrides"] == ["runtime.device=cuda", "runtime.dtype=bfloat16"]

    demo = parse_pipeline(apply_overrides(load_yaml(seen["pipeline"]), seen["overrides"], "demo"))
    settings = runtime_mod.method_settings(demo, demo.unlearn.config)
    assert (settings.device, settings.dtype) == ("cuda", "bfloat16")
    assert runtime_mod.merge_cuda(demo) is True and runtime_mod.merge_dtype(demo) == "bfloat16"
    for section in ("knowledge", "perplexity"):
        kwargs = runtime_mod.eval_settings(demo, accepted_keywords(section), dict(getattr(demo.eval, section)))
        assert (kwargs["device"], kwargs["dtype"]) == ("cuda", "bfloat16"), section
    shipped = parse_pipeline(load_yaml(seen["pipeline"]))  # without the options: the CPU, as before
    assert shipped.runtime.device == "cpu" and runtime_mod.method_settings(shipped, shipped.unlearn.config).device == "cpu"
