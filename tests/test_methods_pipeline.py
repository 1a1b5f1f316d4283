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
