"""bench/edit_interference.py's geometry of two edits against numbers worked out by hand, what the anchored solve does to
one edit against a direct solve on the inputs themselves, and that edit against the one a merge of its run alone writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from edit_interference import UNSPLIT, anchoring, edit_record, edits, geometry, input_effect, merged_alone, run_statistics  # noqa: E402


def test_ties_elects_the_sign_of_the_sum_and_averages_the_agreeing_entries():
    a = {"w": torch.tensor([2.0, 1.0, -3.0, 0.0])}
    b = {"w": torch.tensor([4.0, -3.0, 1.0, 5.0])}
    union = {"w": torch.tensor([3.0, -1.0, -1.0, 2.0])}
    g = geometry(a, b, union)
    # sum = [6, -2, -2, 5]: signs +, -, -, +. Entry 0: both agree → mean 3; entry 1: only b agrees → -3;
    # entry 2: only a agrees → -3; entry 3: only b is non-zero → 5.
    ties = torch.tensor([3.0, -3.0, -3.0, 5.0])
    total = torch.tensor([6.0, -2.0, -2.0, 5.0])
    assert g["norm_ties_over_sum"] == pytest.approx(float(ties.norm() / total.norm()))
    assert g["norm_ties_over_union"] == pytest.approx(float(ties.norm() / union["w"].norm()))
    # entries where both are non-zero: 0, 1, 2; their signs disagree at 1 and 2
    assert g["sign_disagree"] == pytest.approx(2 / 3)
    assert g["cosine_a_b"] == pytest.approx((8 - 3 - 3 + 0) / (14 ** 0.5 * 51 ** 0.5))
    assert g["norm_a"] == pytest.approx(14 ** 0.5)


def test_edits_over_several_tensors_are_flattened_together():
    a = {"x": torch.tensor([1.0]), "y": torch.tensor([[0.0, 1.0]])}
    b = {"x": torch.tensor([1.0]), "y": torch.tensor([[1.0, 0.0]])}
    g = geometry(a, b, {"x": torch.tensor([2.0]), "y": torch.tensor([[1.0, 1.0]])})
    assert g["cosine_a_b"] == pytest.approx(0.5)
    assert g["cosine_sum_union"] == pytest.approx(1.0)
    assert g["norm_sum_over_union"] == pytest.approx(1.0)


def test_runs_that_change_different_tensors_are_refused():
    with pytest.raises(SystemExit, match="different tensors"):
        geometry({"x": torch.ones(1)}, {"y": torch.ones(1)}, {"x": torch.ones(1)})


# --------------------------------------------------------------------------- what the anchored solve does to one edit

def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_input_effect_is_the_norm_of_the_edit_acting_on_the_inputs():
    x, delta = _random(50, 7, seed=0), _random(3, 7, seed=1)  # 50 tokens of 7 inputs; a layer of 3 outputs (x Δᵀ)
    assert input_effect(delta, x.T @ x) == pytest.approx(float(torch.linalg.norm(x @ delta.T)), rel=1e-9)
    # a Gram of the outputs' side would not even fit: the orientation is the layer's, in × in
    with pytest.raises(RuntimeError):
        input_effect(delta, (x @ delta.T).T @ (x @ delta.T))


def test_anchoring_against_a_direct_solve_on_the_inputs():
    x_f, x_r, delta = _random(40, 6, seed=2), _random(60, 6, seed=3), _random(4, 6, seed=4).float()
    bias = torch.tensor([0.5, -0.5])  # a tensor without statistics keeps its edit
    rho, ridge = 0.7, 0.05
    g_f, g_r = x_f.T @ x_f / 40, x_r.T @ x_r / 60  # per token, as the merge reads them with gram_normalize
    x_p = _random(25, 6, seed=7)  # other inputs (the evaluated prompts): only measured, not solved on
    found = anchoring({"w": delta, "b": bias}, {"w": g_f}, {"w": g_r}, rho=rho, ridge=ridge, probes={"p": {"w": x_p.T @ x_p}})
    left = g_f + rho * g_r
    solved = torch.linalg.solve(left + ridge * float(left.diagonal().mean()) * torch.eye(6, dtype=torch.float64),
                                g_f @ delta.double().T).T
    before, after = torch.cat([delta.double().flatten(), bias.double()]), torch.cat([solved.flatten(), bias.double()])
    assert found["norm_ratio"] == pytest.approx(float(after.norm() / before.norm()), rel=1e-5)
    assert found["cosine"] == pytest.approx(float(before @ after / (before.norm() * after.norm())), rel=1e-5)
    layer = found["layers"]["w"]
    effect_f, effect_r = (float(torch.linalg.norm(x @ delta.double().T) / n ** 0.5) for x, n in ((x_f, 40), (x_r, 60)))
    anchored_f, anchored_r = (float(torch.linalg.norm(x @ solved.T) / n ** 0.5) for x, n in ((x_f, 40), (x_r, 60)))
    assert layer["ratio_plain"] == pytest.approx(effect_f / effect_r, rel=1e-5)
    assert layer["ratio_anchored"] == pytest.approx(anchored_f / anchored_r, rel=1e-5)
    assert layer["forget_kept"] == pytest.approx(anchored_f / effect_f, rel=1e-5)
    assert layer["retain_kept"] == pytest.approx(anchored_r / effect_r, rel=1e-5)
    assert layer["p_kept"] == pytest.approx(float(torch.linalg.norm(x_p @ solved.T) / torch.linalg.norm(x_p @ delta.double().T)), rel=1e-5)
    assert set(found["layers"]) == {"w"}


def test_shared_inputs_shrink_the_whole_edit_and_separate_inputs_keep_the_forget_effect():
    delta = _random(3, 6, seed=5).float()
    x = _random(30, 6, seed=6)
    shared = anchoring({"w": delta}, {"w": x.T @ x}, {"w": x.T @ x}, rho=1.0, ridge=0.0)
    # the same inputs: (G + G) Δ'ᵀ = G Δᵀ, Δ' = Δ/2; the forget/retain ratio does not move
    assert shared["norm_ratio"] == pytest.approx(0.5, rel=1e-5)
    assert shared["cosine"] == pytest.approx(1.0, rel=1e-6)
    assert shared["layers"]["w"]["ratio_anchored"] == pytest.approx(shared["layers"]["w"]["ratio_plain"], rel=1e-5)
    apart_f, apart_r = x.clone(), x.clone()
    apart_f[:, 3:], apart_r[:, :3] = 0, 0  # forget inputs on the first three coordinates, retain inputs on the others
    apart = anchoring({"w": delta}, {"w": apart_f.T @ apart_f}, {"w": apart_r.T @ apart_r}, rho=1.0, ridge=0.0)
    assert apart["layers"]["w"]["forget_kept"] == pytest.approx(1.0, rel=1e-5)
    assert apart["layers"]["w"]["retain_kept"] == pytest.approx(0.0, abs=1e-6)
    assert apart["norm_ratio"] == pytest.approx(float(delta[:, :3].norm() / delta.norm()), rel=1e-5)


def test_an_edit_owns_its_domain_and_the_unsplit_edit_owns_both():
    acc = {"a": 10.0, "b": 80.0, "keep": 95.0}
    assert edit_record(acc, "a", ["a", "b"]) == {"own": 10.0, "other": 80.0, "keep": 95.0}
    assert edit_record(acc, "b", ["a", "b"]) == {"own": 80.0, "other": 10.0, "keep": 95.0}
    assert edit_record(acc, UNSPLIT, ["a", "b"]) == {"own": 45.0, "other": None, "keep": 95.0}


DOWN = "model.layers.{}.mlp.down_proj.weight"


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def test_the_anchored_edit_measured_is_the_one_a_merge_of_the_run_alone_writes(tiny_model, tmp_path, monkeypatch):
    from spunge_merge.models import ResolvedModel
    from spunge_merge.provenance import write_provenance

    monkeypatch.setenv("SPUNGE_CACHE", str(tmp_path / "cache"))
    base = ResolvedModel(str(tiny_model), tiny_model)
    forget = _write_jsonl(tmp_path / "alpha.jsonl", ["the quick brown fox jumps over the lazy dog", "paris is in france"])
    retain = _write_jsonl(tmp_path / "retain.jsonl", ["water boils at one hundred degrees", "the sun rises in the east"])
    weights = load_file(tiny_model / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    changed = {DOWN.format(i): weights[DOWN.format(i)] + 0.05 * torch.randn(weights[DOWN.format(i)].shape, generator=generator)
               for i in (0, 1)}
    run = tmp_path / "unlearn" / "alpha"  # an RMU-format run recording its forget and retain data
    run.mkdir(parents=True)
    save_file(changed, run / "delta.safetensors", metadata={"format": "pt"})
    write_provenance(run, kind="rmu-delta", fingerprint="rmu-alpha", method="rmu", base_model=base.describe(), config={},
                     data={"forget": [{"path": str(forget), "rows": 2}], "retain": [{"path": str(retain), "rows": 2}]}, attribute=None)
    entry = {"method": "anchored_ls", "parameters": {"rho": 2.0, "ridge": 0.01}}
    views = tmp_path / "views"
    plain = edits(run, base, views)
    assert set(plain) == set(changed)
    grams, retained = run_statistics(run, base, views, entry)
    found = anchoring(plain, grams, retained, rho=2.0, ridge=0.01)
    out = tmp_path / "merged"
    merged_alone(base, run, 1.0, views, entry, out, tmp_path / "scratch")
    written = {name: t for file in sorted(out.glob("*.safetensors")) for name, t in load_file(file).items()}
    for name in plain:  # λ 1: the merge wrote base + Δ'; its effect on each kind of input is the one measured
        anchored = written[name] - weights[name]
        assert input_effect(anchored, grams[name]) == pytest.approx(found["layers"][name]["forget_anchored"], rel=1e-4)
        assert input_effect(anchored, retained[name]) == pytest.approx(found["layers"][name]["retain_anchored"], rel=1e-4)
    before = torch.cat([plain[n].flatten() for n in sorted(plain)])
    after = torch.cat([(written[n] - weights[n]).flatten() for n in sorted(plain)])
    assert found["norm_ratio"] == pytest.approx(float(after.norm() / before.norm()), rel=1e-4)
    assert found["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(before, after, dim=0)), rel=1e-4)
    assert found["cosine"] < 0.99  # the anchor did change the edit (ρ 2): a measurement of something, not of Δ itself
    assert set(found["layers"]) == set(changed)


def _row(seed: int, own: float, through: float) -> dict:
    acc = {"a": own, "b": 90.0, "keep": 97.0}
    layer = {"ratio_plain": 2.0, "ratio_anchored": 2.0 + seed, "forget_kept": 0.5, "retain_kept": 0.25}
    anchoring_ = {"norm_ratio": 0.5, "cosine": 0.9, "layers": {"model.layers.5.mlp.down_proj.weight": layer}}
    geometry_ = {"norm_a": 1.0, "norm_b": 1.0, "norm_union": 1.0, "cosine_a_b": 0.0, "sign_disagree": 0.5, "cosine_sum_union": 1.0,
                 "norm_ties_over_sum": 1.0, "norm_ties_over_union": 1.0, "norm_sum_over_union": 1.0,
                 "anchoring": {edit: anchoring_ for edit in ("a", "b", UNSPLIT)}}
    records = {edit: {"plain": edit_record(acc, edit, ["a", "b"]),
                      "through": edit_record({**acc, "a": through}, edit, ["a", "b"])} for edit in ("a", "b", UNSPLIT)}
    return {"seed": seed, "lambda": 1.0, "geometry": geometry_, "base": acc, "alone": {"a": acc, "b": acc},
            "through": {edit: {**acc, "a": through} for edit in ("a", "b", UNSPLIT)}, "edits": records, "baseline": acc}


def test_the_summary_gives_each_edit_plain_and_through_the_merge_with_its_mean_over_seeds():
    from edit_interference import render

    text = render({"method": "rmu", "model": "m", "forget": ["a", "b"], "merge": {"name": "anchored_ls", "settings": {}},
                   "rows": [_row(0, 10.0, 30.0), _row(1, 20.0, 50.0)]})
    # edit a: own plain 10, 20 → mean 15; through 30, 50 → 40; other (b) 90; keep 97
    assert "| 1 | a | mean | 15.0 | 40.0 | 90.0 | 90.0 | 97.0 | 97.0 |" in text
    # the un-split edit owns both: (10 + 90)/2, (20 + 90)/2 → 52.5; through (30 + 90)/2, (50 + 90)/2 → 65; no other
    assert "| 1 | un-split | mean | 52.5 | 65.0 | – | – | 97.0 | 97.0 |" in text
    assert "| 0 | 1 | un-split edit through anchored_ls | 30.0 | 90.0 | 97.0 |" in text
    # anchoring: ratio anchored 2 (seed 0) and 3 (seed 1) → mean 2.5
    assert "| a | mean | all | 0.500 | 0.900 | 2.000 | 2.500 | 0.500 | 0.250 | – | – |" in text
