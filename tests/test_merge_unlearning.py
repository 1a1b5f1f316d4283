"""Merges made for unlearning (`anchored_ls`, `tsv_m`, `iso_cts`): each against its formula, written here independently,
the statistics pass against a hooks-free computation, and the whole merge through `spunge merge` and a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from spunge_merge.merge import merge_recipe, merge_runs
from spunge_merge.merge.methods import anchored_edit, iso_cts_merge, knots_ties_merge, tsv_merge
from spunge_merge.models import ResolvedModel
from spunge_merge.provenance import write_provenance

DOWN = "model.layers.{}.mlp.down_proj.weight"
LAYERS = (5, 6, 7)
FORGET = {"alpha": ["the quick brown fox jumps over the lazy dog", "cats and dogs live together in the small house"],
          "beta": ["paris is the capital of france and berlin is the capital of germany", "numbers like one two three"]}
RETAIN = ["water boils at one hundred degrees celsius at sea level", "the sun rises in the east and sets in the west",
          "a group of people walked to the market to buy bread"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPUNGE_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- the formulas


def _stacked_least_squares(xs, edits, x_retain, rho, eps):
    """argmin_D Σ‖X_i (D − Δ_i)ᵀ‖² + ρ‖X_r Dᵀ‖² + ε‖D‖², as one least-squares problem over stacked rows (numpy)."""
    dim = edits[0].shape[1]
    rows = [*xs, np.sqrt(rho) * x_retain, np.sqrt(eps) * np.eye(dim)]
    targets = [*(x @ d.T for x, d in zip(xs, edits, strict=True)), np.zeros((len(x_retain), edits[0].shape[0])),
               np.zeros((dim, edits[0].shape[0]))]
    solution, *_ = np.linalg.lstsq(np.vstack(rows), np.vstack(targets), rcond=None)
    return solution.T


def test_anchored_edit_is_the_least_squares_minimiser_and_reduces_to_its_limits():
    rng = np.random.default_rng(0)
    dim, out = 6, 4
    xs = [rng.normal(size=(20, dim)) * rng.uniform(0.2, 3, size=dim) for _ in range(3)]
    x_retain = rng.normal(size=(15, dim))
    edits = [rng.normal(size=(out, dim)) for _ in range(3)]
    grams = [torch.tensor(x.T @ x) for x in xs]
    retain = torch.tensor(x_retain.T @ x_retain)
    for rho, ridge in ((1.0, 1e-3), (0.3, 0.1), (0.0, 0.0)):
        eps = ridge * float(np.diag(sum(x.T @ x for x in xs) + rho * x_retain.T @ x_retain).mean())
        expected = _stacked_least_squares(xs, edits, x_retain, rho, eps)
        got = anchored_edit([torch.tensor(e) for e in edits], grams, retain, rho=rho, ridge=ridge)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-10)
    # equal Grams, no anchor, no ridge: the plain mean of the edits
    same = [grams[0]] * 3
    mean = anchored_edit([torch.tensor(e) for e in edits], same, retain, rho=0.0, ridge=0.0)
    np.testing.assert_allclose(mean.numpy(), sum(edits) / 3, rtol=1e-8, atol=1e-10)
    # an overwhelming anchor holds the base (edit → 0); one run is the anchored baseline (G_f + ρG_r + εI)⁻¹ G_f Δ
    held = anchored_edit([torch.tensor(e) for e in edits], grams, retain, rho=1e12, ridge=0.0)
    assert held.abs().max() < 1e-8
    single = anchored_edit([torch.tensor(edits[0])], [grams[0]], retain, rho=0.5, ridge=0.0)
    left = xs[0].T @ xs[0] + 0.5 * x_retain.T @ x_retain
    np.testing.assert_allclose(single.numpy(), np.linalg.solve(left, xs[0].T @ xs[0] @ edits[0].T).T, rtol=1e-8)


def _orthonormal(matrix):
    """X (XᵀX)^(-1/2): the polar factor, through an eigendecomposition (not the SVD the code uses)."""
    values, vectors = np.linalg.eigh(matrix.T @ matrix)
    return matrix @ vectors @ np.diag(values ** -0.5) @ vectors.T


def _top(matrix, k):
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return u[:, :k], s[:k], vt[:k].T


def test_tsv_m_is_the_papers_formula():
    """Gargiulo et al. 2025, Eq. 6 with orthogonalisation: each task's top rank/T triplets; U and V whitened."""
    rng = np.random.default_rng(1)
    edits = [rng.normal(size=(9, 6)) for _ in range(3)]
    parts = [_top(e, 2) for e in edits]  # rank 6 / 3 tasks
    u = _orthonormal(np.hstack([p[0] for p in parts]))
    v = _orthonormal(np.hstack([p[2] for p in parts]))
    expected = u @ np.diag(np.concatenate([p[1] for p in parts])) @ v.T
    np.testing.assert_allclose(tsv_merge([torch.tensor(e) for e in edits]).numpy(), expected, rtol=1e-7, atol=1e-9)


def test_iso_cts_is_the_papers_formula():
    """Marczak et al. 2025, Alg. 1: common subspace of the summed edit, each task's own directions outside it,
    orthogonalised, one isotropic singular value (the mean of those kept)."""
    rng = np.random.default_rng(2)
    edits = [rng.normal(size=(10, 8)) for _ in range(2)]
    total = sum(edits)
    common, per_task = 6, 1  # rank 8 × 0.8 = 6 common, (8 − 6) / 2 tasks
    uc, sc, vc = _top(total, common)
    tops = [_top(e - uc @ uc.T @ e, per_task) for e in edits]
    u = _orthonormal(np.hstack([uc, *(t[0] for t in tops)]))
    v = _orthonormal(np.hstack([vc, *(t[2] for t in tops)]))
    sigma = np.concatenate([sc, *(t[1] for t in tops)]).mean()
    got = iso_cts_merge([torch.tensor(e) for e in edits], 0.8)
    np.testing.assert_allclose(got.numpy(), sigma * u @ v.T, rtol=1e-7, atol=1e-9)
    # common fraction 1: Iso-C, the summed edit with all its singular values set to their mean
    u_all, s_all, vt_all = np.linalg.svd(total, full_matrices=False)
    np.testing.assert_allclose(iso_cts_merge([torch.tensor(e) for e in edits], 1.0).numpy(), s_all.mean() * u_all @ vt_all,
                               rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("failures", [1, 2])
def test_tsv_m_and_iso_cts_survive_an_svd_that_fails_to_converge(monkeypatch, failures):
    """LAPACK's SVD can fail to converge (met with one thread on NPO's LoRA edits): the merges then take the same
    factors from the transpose's SVD, else numpy's, and give the paper's result all the same."""
    rng = np.random.default_rng(3)
    edits = [torch.tensor(rng.normal(size=(10, 8))) for _ in range(2)]
    expected = {"tsv": tsv_merge(edits).numpy(), "iso": iso_cts_merge(edits, 0.8).numpy()}
    real_svd = torch.linalg.svd
    calls = {"n": 0}

    def flaky(matrix, *args, **kwargs):  # every first (and with 2, every second) attempt of a decomposition fails
        calls["n"] += 1
        if calls["n"] % (failures + 1) != 0:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return real_svd(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    np.testing.assert_allclose(tsv_merge(edits).numpy(), expected["tsv"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(iso_cts_merge(edits, 0.8).numpy(), expected["iso"], rtol=1e-9, atol=1e-12)
    assert calls["n"] > 0


def _ties_rows(rows, density):
    """TIES (Yadav et al. 2023) over the rows of `rows` (one per task): trim, elect the sign of the sum, disjoint mean."""
    trimmed = []
    for row in rows:
        k = int(density * row.size)
        cut = np.sort(np.abs(row))[::-1][k - 1]
        trimmed.append(np.where(np.abs(row) >= cut, row, 0.0))
    trimmed = np.array(trimmed)
    sign = np.where(trimmed.sum(axis=0) >= 0, 1.0, -1.0)
    agree = (np.sign(trimmed) == sign) & (trimmed != 0)
    return (trimmed * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)


def test_knots_ties_is_the_papers_alignment_then_ties():
    """Stoica et al. 2025: [ΔW_1 … ΔW_T] = U Σ [V_1ᵀ … V_Tᵀ]; merge the V_iᵀ with TIES; ΔW = U Σ V_mergedᵀ."""
    rng = np.random.default_rng(3)
    edits = [rng.normal(size=(8, 2)) @ rng.normal(size=(2, 7)) for _ in range(3)]  # rank-2 LoRA-like edits
    u, s, vt = np.linalg.svd(np.hstack(edits), full_matrices=False)
    r = int((s > 1e-6 * s[0]).sum())
    assert r == 6
    blocks = np.split(vt[:r], 3, axis=1)
    for density in (1.0, 0.5):
        merged = _ties_rows(np.array([b.ravel() for b in blocks]), density).reshape(r, 7)
        got = knots_ties_merge([torch.tensor(e) for e in edits], [density] * 3)
        np.testing.assert_allclose(got.numpy(), u[:, :r] @ np.diag(s[:r]) @ merged, rtol=1e-7, atol=1e-9)
    # one edit given three times: the alignment is exact and TIES of equal rows is the row itself
    same = knots_ties_merge([torch.tensor(edits[0])] * 3, [1.0] * 3)
    np.testing.assert_allclose(same.numpy(), edits[0], rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- the statistics pass


def test_gram_statistics_match_a_hooks_free_computation(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spunge_merge.merge.gram import input_grams

    name = "model.layers.2.self_attn.q_proj.weight"
    texts = FORGET["alpha"] + RETAIN
    grams, tokens = input_grams(ResolvedModel(str(tiny_model), tiny_model), texts, {name}, max_length=32, batch_size=2)
    assert set(grams) == {name}
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    expected, count = torch.zeros(32, 32, dtype=torch.float64), 0
    with torch.no_grad():
        for text in texts:  # one text at a time: no padding at all
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=32)["input_ids"]
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[2]  # the input of layer 2
            x = model.model.layers[2].input_layernorm(hidden)[0].double()
            expected += x.T @ x
            count += ids.shape[1]
    assert tokens == count
    torch.testing.assert_close(grams[name].double(), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- through spunge merge


def _read_model(directory: Path) -> dict[str, torch.Tensor]:
    return {name: tensor for file in sorted(directory.glob("*.safetensors")) for name, tensor in load_file(file).items()}


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict:
    """Two RMU-format runs (delta.safetensors) recording their forget and retain data, as `spunge unlearn rmu` does."""
    root = tmp_path_factory.mktemp("anchored")
    retain = _write_jsonl(root / "retain.jsonl", RETAIN)
    weights = load_file(tiny_model / "model.safetensors")
    made = []
    for seed, (value, texts) in enumerate(FORGET.items()):
        forget = _write_jsonl(root / f"{value}.jsonl", texts)
        generator = torch.Generator().manual_seed(seed)
        delta = {DOWN.format(i): weights[DOWN.format(i)] + 0.05 * torch.randn(weights[DOWN.format(i)].shape, generator=generator)
                 for i in LAYERS}
        run = root / "runs" / value
        run.mkdir(parents=True)
        save_file(delta, run / "delta.safetensors", metadata={"format": "pt"})
        write_provenance(run, kind="rmu-delta", fingerprint=f"rmu-{seed}", method="rmu",
                         base_model=ResolvedModel(str(tiny_model), tiny_model).describe(), config={},
                         data={"forget": [{"path": str(forget), "rows": len(texts)}], "retain": [{"path": str(retain), "rows": 3}]},
                         attribute={"column": "group", "value": value})
        made.append(run)
    return {"root": root, "runs": made, "weights": weights, "deltas": [load_file(r / "delta.safetensors") for r in made]}


def test_spunge_merge_anchored_ls_writes_the_closed_form_and_a_model_transformers_loads(tiny_model, runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from spunge_merge.cli import app

    out = tmp_path / "anchored"
    result = CliRunner().invoke(app, ["merge", *map(str, runs["runs"]), "--base", str(tiny_model), "--out", str(out),
                                      "--method", "anchored_ls", "--lambda", "0.8", "--param", "rho=2", "--param", "ridge=0.01",
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert recipe["merge_method"] == "anchored_ls" and recipe["parameters"]["rho"] == 2
    grams = [load_file(entry["parameters"]["gram"]) for entry in recipe["models"]]
    tokens = [int(json.loads((Path(e["parameters"]["gram"]).parent / "spunge.json").read_text())["result"]["tokens"])
              for e in recipe["models"]]
    retain_file = Path(recipe["parameters"]["retain_gram"])
    retain_record = json.loads((retain_file.parent / "spunge.json").read_text())
    assert retain_record["result"]["bytes"] == retain_file.stat().st_size and retain_record["result"]["seconds"] >= 0
    retain = load_file(retain_file)
    base, merged = runs["weights"], _read_model(out)
    for name in base:
        if name not in runs["deltas"][0]:
            assert torch.equal(merged[name], base[name]), name
            continue
        g = [gram[name].double() / n for gram, n in zip(grams, tokens, strict=True)]
        g_r = retain[name].double() / retain_record["result"]["tokens"]
        left = sum(g) + 2 * g_r
        left = left + 0.01 * left.diagonal().mean() * torch.eye(left.shape[0], dtype=torch.float64)
        right = sum(gi @ (d[name] - base[name]).double().T for gi, d in zip(g, runs["deltas"], strict=True))
        expected = base[name].double() + 0.8 * torch.linalg.solve(left, right).T
        torch.testing.assert_close(merged[name].double(), expected, rtol=1e-4, atol=1e-6)
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model.state_dict()[DOWN.format(6)], merged[DOWN.format(6)])

    # the statistics are reused by the next merge; the written recipe runs again through merge_recipe, same tensors
    files = sorted((tmp_path / "cache" / "merge-stats").iterdir())
    again = merge_recipe(out / "mergekit_config.yml", tmp_path / "again", progress=False)
    assert sorted((tmp_path / "cache" / "merge-stats").iterdir()) == files
    assert all(torch.equal(t, merged[n]) for n, t in _read_model(again).items())


@pytest.mark.parametrize("method", ["tsv_m", "iso_cts"])
def test_weights_only_methods_through_merge_runs(tiny_model, runs, tmp_path, method):
    out = merge_runs(str(tiny_model), runs["runs"], tmp_path / method, method=method, lam=0.5, progress=False)
    base, merged = runs["weights"], _read_model(out)
    edits = lambda name: [(d[name] - base[name]).double() for d in runs["deltas"]]  # noqa: E731
    for name in runs["deltas"][0]:
        formula = tsv_merge(edits(name)) if method == "tsv_m" else iso_cts_merge(edits(name), 0.8)
        torch.testing.assert_close(merged[name].double(), base[name].double() + 0.5 * formula, rtol=1e-4, atol=1e-6)
    assert sum(not torch.equal(merged[n], base[n]) for n in base) == len(LAYERS)
    assert json.loads((out / "spunge.json").read_text())["result"]["copied_from_base"] == len(base) - len(LAYERS)


def test_plain_mergekit_yaml_runs_an_anchored_recipe_once_spunge_registers_its_methods(tiny_model, runs, tmp_path):
    import os
    import subprocess
    import sys

    out = merge_runs(str(tiny_model), runs["runs"], tmp_path / "spunge", method="anchored_ls", lam=1.0, progress=False)
    by_mergekit = tmp_path / "mergekit"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "spunge_merge.merge.mergekit_yaml", str(out / "mergekit_config.yml"),
                           str(by_mergekit)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ours, theirs = _read_model(out), _read_model(by_mergekit)
    assert set(ours) == set(theirs) and all(torch.equal(ours[n], theirs[n]) for n in ours)


def test_anchored_ls_on_lora_runs_anchors_the_materialised_edit(tiny_model, runs, tmp_path):
    """TVN adapters: the edit is peft's own merge of B·A·scale (computed here by peft), anchored like a delta."""
    from test_merge import make_tvn_runs, peft_merged

    adapters = make_tvn_runs(tiny_model, tmp_path / "tvn", seeds=(3, 4))
    for run, value in zip(adapters, FORGET, strict=True):
        record = json.loads((run / "spunge.json").read_text())
        write_provenance(run, kind=record["kind"], fingerprint=record["fingerprint"], method="tvn", base_model=record["base_model"],
                         config=record["config"], data={"forget": [{"path": str(runs["root"] / f"{value}.jsonl")}]},
                         attribute=record["attribute"])
    out = merge_runs(str(tiny_model), adapters, tmp_path / "merged", method="anchored_ls", lam=1.0,
                     parameters={"rho": 0.0, "ridge": 0.01}, progress=False)
    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert "retain_gram" not in recipe["parameters"]  # rho 0: no retain statistics needed
    grams = [load_file(entry["parameters"]["gram"]) for entry in recipe["models"]]
    tuned = [peft_merged(tiny_model, run) for run in adapters]
    base, merged = runs["weights"], _read_model(out)
    name = "model.layers.3.self_attn.v_proj.weight"
    g = [gram[name].double() for gram in grams]
    tokens = [int(json.loads((Path(e["parameters"]["gram"]).parent / "spunge.json").read_text())["result"]["tokens"])
              for e in recipe["models"]]
    g = [gi / n for gi, n in zip(g, tokens, strict=True)]
    right = sum(gi @ (t[name] - base[name]).double().T for gi, t in zip(g, tuned, strict=True))
    left = sum(g) + 0.01 * sum(g).diagonal().mean() * torch.eye(32, dtype=torch.float64)
    expected = base[name].double() + torch.linalg.solve(left, right).T
    torch.testing.assert_close(merged[name].double(), expected, rtol=1e-3, atol=1e-5)
    assert torch.equal(merged["model.layers.3.mlp.down_proj.weight"], base["model.layers.3.mlp.down_proj.weight"])

    # KnOTS-TIES on the same adapters: aligned through one SVD, merged with TIES (density 1)
    knots = _read_model(merge_runs(str(tiny_model), adapters, tmp_path / "knots", method="knots_ties", density=1.0, lam=1.0,
                                   progress=False))
    expected = base[name].double() + knots_ties_merge([(t[name] - base[name]).double() for t in tuned], [1.0, 1.0])
    torch.testing.assert_close(knots[name].double(), expected, rtol=1e-3, atol=1e-5)


def test_statistics_settings_choose_the_inputs_rows_and_retain_data(tiny_model, runs, tmp_path):
    from spunge_merge.merge.gram import recorded_texts

    def grams(out):
        recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
        files = [Path(e["parameters"]["gram"]) for e in recipe["models"]] + [Path(recipe["parameters"]["retain_gram"])]
        return [(load_file(f), json.loads((f.parent / "spunge.json").read_text())) for f in files]

    on_base = grams(merge_runs(str(tiny_model), runs["runs"], tmp_path / "base", method="anchored_ls", progress=False))
    retain = _write_jsonl(tmp_path / "other-retain.jsonl", ["a group of people walked to the market to buy bread"] * 3)
    on_runs = grams(merge_runs(str(tiny_model), runs["runs"], tmp_path / "run", method="anchored_ls", progress=False,
                               statistics={"inputs": "run", "rows": 1, "retain_data": str(retain)}))
    name = DOWN.format(7)  # layer 7's down_proj inputs depend on layers 5-6, which the runs changed
    assert [record["data"]["rows"] for _, record in on_runs] == [1, 1, 1]
    assert [record["data"]["rows"] for _, record in on_base] == [2, 2, 3]
    assert on_runs[0][1]["model"] != on_base[0][1]["model"] and "merge-views" in on_runs[0][1]["model"]
    assert not torch.allclose(on_runs[0][0][name], on_base[0][0][name])
    # a TVN run records its one forget subset as `data` itself
    assert recorded_texts({"data": {"path": str(runs["root"] / "alpha.jsonl")}}, "forget", tmp_path) == FORGET["alpha"]
