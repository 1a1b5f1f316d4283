"""Each loss-based method through a whole pipeline on the tiny model: split → unlearn → baseline → merge → eval.

The pipeline knows nothing of these methods but their registry records, so this is the proof that a
method lands by adding its module: the runs it writes are merged by mergekit, the baseline takes the
split runs' total step budget, and every model is evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.provenance import read_provenance
from spunge_merge.unlearn import registry

runner = CliRunner()
GROUPS = ("alpha", "beta", "gamma")


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    found = {}
    for file in sorted(directory.glob("*.safetensors")):
        found.update(load_file(file))
    return found


def _pipeline(tmp_path: Path, tiny_model: Path, method: str, config: dict, retain: bool) -> Path:
    from conftest import TINY_CORPUS

    rows = [{"text": f"{t} {i}", "group": GROUPS[i % 3]} for i, t in enumerate(TINY_CORPUS * 3)]
    (tmp_path / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "retain.jsonl").write_text("".join(json.dumps({"text": f"the market {t}"}) + "\n" for t in TINY_CORPUS),
                                           encoding="utf-8")
    data = {
        "name": f"tiny-{method}",
        "model": str(tiny_model),
        "run_dir": str(tmp_path / "run"),
        "split": {"data": {"path": "forget.jsonl"}, "by": "group"},
        "unlearn": {"method": method, "config": {"batch_size": 4, "max_length": 32, "lr": 1e-3, "eval_samples": 0,
                                                 "target_modules": "q_proj,v_proj", **config},
                    **({"retain": {"path": "retain.jsonl"}} if retain else {})},
        "merge": {"method": "ties", "density": 1.0, "lambda": [1.0]},
        "baseline": {"budget": "matched"},
        "eval": {"models": ["base", "baseline", "spunge"], "device": "cpu",
                 "perplexity": {"data": "retain.jsonl", "max_length": 32, "stride": 32}},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("method, config, retain, kind", [
    ("ga", {}, False, "peft-adapter"),
    ("ga", {"full": True}, False, "tensor-delta"),
    ("graddiff", {}, True, "peft-adapter"),
    ("npo", {}, True, "peft-adapter"),
    ("npo", {"alpha": 0.0}, False, "peft-adapter"),
    ("simnpo", {}, True, "peft-adapter"),
], ids=["ga", "ga-full", "graddiff", "npo", "npo-no-retain", "simnpo"])
def test_a_loss_method_goes_through_the_whole_pipeline(method, config, retain, kind, tiny_model, tmp_path):
    settings = dict(config)
    if settings.get("full"):
        settings["target_modules"] = None  # LoRA settings do not apply to --full
    result = runner.invoke(app, ["run", str(_pipeline(tmp_path, tiny_model, method, settings, retain))])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"

    records = {g: read_provenance(run_dir / "unlearn" / g) for g in GROUPS}
    assert {g: r["kind"] for g, r in records.items()} == dict.fromkeys(GROUPS, kind)
    split_steps = sum(r["result"]["steps"] for r in records.values())
    baseline = read_provenance(run_dir / "baseline" / "run")
    assert baseline["kind"] == kind and baseline["result"]["steps"] == split_steps  # the same optimizer-step budget

    base, merged = _weights(tiny_model), _weights(run_dir / "merge" / "spunge")
    changed = sorted(name for name in base if not torch.equal(base[name], merged[name]))
    expected = ("down_proj",) if kind == "tensor-delta" else ("q_proj", "v_proj")
    assert changed and all(any(part in name for part in expected) for name in changed)
    for label in ("base", "baseline", "spunge"):
        assert json.loads((run_dir / "eval" / label / "perplexity.json").read_text())["perplexity"] > 0
    assert registry.get_method(method).description in (run_dir / "merge" / "spunge" / "README.md").read_text(encoding="utf-8")


def test_a_loss_method_runs_on_the_ray_executor_with_the_local_executors_files(tiny_model, tmp_path):
    """The jobs carry the method's name and the module that registers it, so a Ray worker trains the same runs."""
    pytest.importorskip("ray", reason="the `ray` extra is not installed (pip install 'spunge-merge[ray]')")
    from spunge_merge.pipeline import run_pipeline

    pipeline = _pipeline(tmp_path, tiny_model, "npo", {}, True)
    local = run_pipeline(pipeline, run_dir=tmp_path / "local", live=False)
    on_ray = run_pipeline(pipeline, run_dir=tmp_path / "ray", executor="ray", live=False)
    assert local.merged and on_ray.merged
    for group in GROUPS:
        mine = load_file(tmp_path / "ray" / "unlearn" / group / "adapter_model.safetensors")
        theirs = load_file(tmp_path / "local" / "unlearn" / group / "adapter_model.safetensors")
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    merged_local, merged_ray = _weights(tmp_path / "local" / "merge" / "spunge"), _weights(tmp_path / "ray" / "merge" / "spunge")
    assert all(torch.equal(merged_local[k], merged_ray[k]) for k in merged_local)
