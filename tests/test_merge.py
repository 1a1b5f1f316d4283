"""`spunge merge`: TIES against the paper's algorithm, parity with mergekit's own CLI, disk use, bad input.

Runs are fabricated here in the exact formats of the unlearn stages: a TVN run is a peft LoRA adapter
(random non-zero lora_B, saved by peft) whose lora_B is then scaled by -λ, with the trained adapter in
unnegated/; an RMU run is `delta.safetensors` holding new values of model.layers.{5,6,7}.mlp.down_proj.weight.
Both carry a spunge.json written by provenance.write_provenance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_llama
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from spunge_merge.fsutil import write_json
from spunge_merge.merge import merge_recipe, merge_runs
from spunge_merge.models import ResolvedModel
from spunge_merge.provenance import write_provenance

VALUES = ("alpha", "beta", "gamma")
RMU_LAYERS = (5, 6, 7)
LAM = 1.0
MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"


# --------------------------------------------------------------------------- fabricated runs


def _describe(base: Path) -> dict:
    return ResolvedModel(str(base), base).describe()


def make_rmu_run(base: Path, run: Path, *, seed: int, value: str, rows: int, scale: float = 0.05) -> Path:
    weights = load_file(base / "model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    delta = {}
    for layer in RMU_LAYERS:
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        delta[name] = weights[name] + scale * torch.randn(weights[name].shape, generator=generator)
    run.mkdir(parents=True)
    save_file(delta, run / "delta.safetensors", metadata={"format": "pt"})
    write_provenance(run, kind="rmu-delta", fingerprint=f"rmu-{seed}", method="rmu", base_model=_describe(base),
                     config={"layers": list(RMU_LAYERS), "steering_coeff": 6.5}, data={"rows": rows, "value": value},
                     attribute={"column": "group", "value": value}, result={"steps": 3})
    return run


def make_tvn_runs(base: Path, root: Path, *, seeds, lam: float = LAM) -> list[Path]:
    """One peft LoRA adapter per seed with random non-zero lora_B, saved negated as the TVN contract says."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    runs = []
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                parameter.data.normal_(0.0, 0.2)
        run = root / VALUES[i]
        model.save_pretrained(run / "unnegated", safe_serialization=True)
        negate_in_place(run, lam)
        write_provenance(run, kind="tvn-adapter", fingerprint=f"tvn-{seed}", method="tvn", base_model=_describe(base),
                         config={"rank": 4, "lora_alpha": 8, "lam": lam}, data={"rows": 10 + i},
                         attribute={"column": "group", "value": VALUES[i]}, result={"lambda": lam})
        runs.append(run)
    return runs


def negate_in_place(run: Path, lam: float) -> None:
    tensors = load_file(run / "unnegated" / "adapter_model.safetensors")
    negated = {k: (v * -lam).contiguous() if "lora_B" in k else v for k, v in tensors.items()}
    save_file(negated, run / "adapter_model.safetensors", metadata={"format": "pt"})
    shutil.copyfile(run / "unnegated" / "adapter_config.json", run / "adapter_config.json")


def write_manifest(root: Path, runs: list[Path]) -> None:
    write_json(root / "manifest.json", {"kind": "unlearn-runs", "method": "x", "attribute": "group",
                                        "runs": [{"name": r.name, "value": r.name, "rows": 10, "path": r.name} for r in runs]})


def peft_merged(base: Path, run: Path) -> dict[str, torch.Tensor]:
    """The run's full weights as peft itself merges the adapter (independent of spunge's LoRA code)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_model(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


# --------------------------------------------------------------------------- the paper's TIES, written here


def ties_reference(base: torch.Tensor, tuned: list[torch.Tensor], *, density: float, lam: float,
                   weights: list[float] | None = None) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023, Alg. 1) for one tensor: trim to the top-k magnitudes of each task
    vector, elect the sign of the sum, average the values agreeing with it (disjoint mean), scale by λ.
    With weights: mergekit's variant, where weighted task vectors enter the sign election and the mean
    is weighted (its issue #474)."""
    weights = weights or [1.0] * len(tuned)
    trimmed = []
    for theta in tuned:
        tau = (theta - base).flatten()
        keep = torch.zeros_like(tau)
        top = tau.abs().topk(int(density * tau.numel())).indices
        keep[top] = tau[top]
        trimmed.append(keep)
    w = torch.tensor(weights).unsqueeze(1)
    stacked = torch.stack(trimmed) * w
    elected = torch.sign(stacked.sum(dim=0))
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    merged = (stacked * agree).sum(dim=0) / (w * agree).sum(dim=0).clamp(min=1e-12)
    merged[agree.sum(dim=0) == 0] = 0
    return base + lam * merged.view_as(base)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPUNGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    rmu = [make_rmu_run(tiny_model, root / "rmu" / v, seed=i, value=v, rows=10 + i) for i, v in enumerate(VALUES)]
    write_manifest(root / "rmu", rmu)
    tvn = make_tvn_runs(tiny_model, root / "tvn", seeds=(11, 12, 13))
    write_manifest(root / "tvn", tvn)
    return {"root": root, "rmu": rmu, "tvn": tvn, "views": root / "views"}


def cli(*args: str):
    from spunge_merge.cli import app

    return CliRunner().invoke(app, ["merge", *map(str, args)])


# --------------------------------------------------------------------------- TIES against the paper


def test_ties_on_rmu_deltas_matches_the_paper_algorithm(tiny_model, runs, tmp_path):
    out = merge_runs(str(tiny_model), [runs["rmu"][0].parent], tmp_path / "merged", density=0.5, lam=0.8,
                     views_dir=runs["views"], progress=False)
    base = load_file(tiny_model / "model.safetensors")
    merged = read_model(out)
    deltas = [load_file(run / "delta.safetensors") for run in runs["rmu"]]
    assert set(merged) == set(base)
    for name, tensor in merged.items():
        if name in deltas[0]:
            expected = ties_reference(base[name], [d[name] for d in deltas], density=0.5, lam=0.8)
            torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6)
            assert not torch.equal(tensor, base[name])
        else:
            assert torch.equal(tensor, base[name]), name  # no run changed it: exactly the base
    record = json.loads((out / "spunge.json").read_text())
    assert record["kind"] == "merged-model" and record["method"] == "ties"
    assert [r["value"] for r in record["runs"]] == list(VALUES)
    assert {r["method"] for r in record["runs"]} == {"rmu"} and [r["rows"] for r in record["runs"]] == [10, 11, 12]
    assert record["result"]["computed"] == 3 and record["result"]["copied_from_base"] == len(base) - 3
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["models"][0]["parameters"] == {"density": 0.5, "weight": 1.0}

    # the same merge again is found complete and skipped; any other mergekit method runs too
    stamp = (out / "spunge.json").stat().st_mtime_ns
    merge_runs(str(tiny_model), runs["rmu"], out, density=0.5, lam=0.8, views_dir=runs["views"], progress=False)
    assert (out / "spunge.json").stat().st_mtime_ns == stamp
    # a full checkpoint is a run too: its unchanged tensors are found by comparing bytes with the base
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_model, checkpoint)
    save_file({**base, **deltas[0]}, checkpoint / "model.safetensors", metadata={"format": "pt"})
    mixed = merge_runs(str(tiny_model), [checkpoint, *runs["rmu"][1:]], tmp_path / "mixed", density=0.5, lam=0.8,
                       views_dir=runs["views"], progress=False)
    assert all(torch.equal(t, merged[n]) for n, t in read_model(mixed).items())
    assert json.loads((mixed / "spunge.json").read_text())["result"]["copied_from_base"] == len(base) - 3

    arithmetic = read_model(merge_runs(str(tiny_model), runs["rmu"], tmp_path / "ta", method="task_arithmetic", lam=0.5,
                                       weight=[1.0, 0.5, 0.25], views_dir=runs["views"], progress=False))
    name = "model.layers.6.mlp.down_proj.weight"
    expected = base[name] + 0.5 * sum(w * (d[name] - base[name]) for w, d in zip([1.0, 0.5, 0.25], deltas, strict=True))
    torch.testing.assert_close(arithmetic[name], expected, rtol=1e-5, atol=1e-6)


def test_ties_on_tvn_adapters_matches_the_paper_algorithm(tiny_model, runs, tmp_path):
    result = cli("--base", tiny_model, runs["tvn"][0].parent, "--density", "0.3", "--out", tmp_path / "merged",
                 "--views-dir", runs["views"], "--no-progress")
    assert result.exit_code == 0, result.output
    assert "3 run(s)" in result.output
    base = load_file(tiny_model / "model.safetensors")
    tuned = [peft_merged(tiny_model, run) for run in runs["tvn"]]
    merged = read_model(tmp_path / "merged")
    targets = [n for n in base if n.endswith(("q_proj.weight", "v_proj.weight"))]
    assert len(targets) == 16
    for name, tensor in merged.items():
        if name in targets:
            expected = ties_reference(base[name], [t[name] for t in tuned], density=0.3, lam=1.0)
            torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(tensor, base[name]), name

    # each view is the adapter merged by peft, and costs only its LoRA targets on disk
    for run, expected in zip(runs["tvn"], tuned, strict=True):
        (view,) = views_of(runs["views"], run)
        changed = load_file(view / "changed.safetensors")
        assert sorted(changed) == sorted(targets)
        for name in targets:
            torch.testing.assert_close(changed[name], expected[name], rtol=0, atol=1e-7)
        target_bytes = sum(base[n].numel() * 4 for n in targets)
        assert target_bytes <= _own_bytes(view) <= target_bytes + 32_000

    # an adapter rewritten in place (as `spunge negate` does) gets a new view, never a stale one
    negate_in_place(runs["tvn"][0], 2.0)
    try:
        again = merge_runs(str(tiny_model), runs["tvn"], tmp_path / "again", density=0.3, views_dir=runs["views"], progress=False)
        rewritten = peft_merged(tiny_model, runs["tvn"][0])
        name = targets[0]
        expected = ties_reference(base[name], [rewritten[name], tuned[1][name], tuned[2][name]], density=0.3, lam=1.0)
        torch.testing.assert_close(read_model(again)[name], expected, rtol=1e-5, atol=1e-6)
    finally:
        negate_in_place(runs["tvn"][0], LAM)


def test_spunge_merge_validates_its_options_once_and_builds_and_checks_the_recipe_once(tiny_model, runs, tmp_path, monkeypatch):
    """One `spunge merge`: the options become one MergeSettings, which becomes one recipe, checked once by mergekit;
    the recipe that runs names the views, with the densities given on the command line."""
    from spunge_merge.cli import merge as cli_merge
    from spunge_merge.merge import api, settings

    calls = {"settings": 0, "build": 0, "validate": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(cli_merge, "merge_settings", counted("settings", settings.merge_settings))
    monkeypatch.setattr(api, "merge_settings", counted("settings", settings.merge_settings))
    monkeypatch.setattr(api, "build_recipe", counted("build", api.build_recipe))
    monkeypatch.setattr(api, "validate_recipe", counted("validate", api.validate_recipe))
    result = cli("--base", tiny_model, *runs["rmu"], "--density", "0.5", "--density", "0.25", "--density", "1",
                 "--lambda", "0.8", "--out", tmp_path / "merged", "--views-dir", runs["views"], "--no-progress")
    assert result.exit_code == 0, result.output
    assert calls == {"settings": 1, "build": 1, "validate": 1}
    recipe = yaml.safe_load((tmp_path / "merged" / "mergekit_config.yml").read_text())
    assert [m["parameters"]["density"] for m in recipe["models"]] == [0.5, 0.25, 1.0]
    assert recipe["parameters"]["lambda"] == 0.8
    views = [Path(m["model"]) for m in recipe["models"]]
    assert all(view.parent == runs["views"] and (view / "config.json").is_file() for view in views)  # views, not the runs
    record = json.loads((tmp_path / "merged" / "spunge.json").read_text())
    assert [Path(r["path"]) for r in record["runs"]] == [run.resolve() for run in runs["rmu"]]


def test_merge_runs_takes_settings_or_keywords_not_both(tiny_model, runs, tmp_path):
    from spunge_merge.merge.settings import merge_settings

    with pytest.raises(TypeError, match="not both"):
        merge_runs(str(tiny_model), runs["rmu"], tmp_path / "m", settings=merge_settings(density=0.5), density=0.5)
    assert not (tmp_path / "m").exists()


def views_of(views_dir: Path, run: Path) -> list[Path]:
    found = []
    for view in views_dir.iterdir():
        record = json.loads((view / "spunge.json").read_text())
        if record["kind"] == "merge-view" and record["run"]["path"] == str(run.resolve()):
            found.append(view)
    return found


def _own_bytes(view: Path) -> int:
    """Disk a view adds: its regular files (links to the shared base pool are free)."""
    return sum(p.stat().st_size for p in view.iterdir() if p.is_file() and not p.is_symlink())


# --------------------------------------------------------------------------- parity with mergekit-yaml


def test_mergekit_yaml_on_the_emitted_recipe_gives_the_same_tensors(tmp_path):
    base = build_tiny_llama(tmp_path / "tied", tie_word_embeddings=True, seed=3)
    weights = load_file(base / "model.safetensors")
    assert "lm_head.weight" not in weights
    weights["model.norm.weight"][:4] = -0.0  # mergekit's base + 0 turns -0.0 into +0.0: spunge must match bit for bit
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    rmu = [make_rmu_run(base, tmp_path / "rmu" / v, seed=20 + i, value=v, rows=5) for i, v in enumerate(VALUES[:2])]
    tvn = make_tvn_runs(base, tmp_path / "tvn", seeds=(30,))
    out = merge_runs(str(base), [*rmu, *tvn], tmp_path / "spunge", density=0.4, lam=0.9, shard_size=60_000,
                     recipe_out=tmp_path / "recipe.yml", views_dir=tmp_path / "views", progress=False)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    assert (tmp_path / "recipe.yml").read_text() == (out / "mergekit_config.yml").read_text()
    subprocess.run([str(MERGEKIT_YAML), str(tmp_path / "recipe.yml"), str(tmp_path / "mergekit")], check=True,
                   capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    ours, theirs = read_model(out), read_model(tmp_path / "mergekit")
    assert set(ours) == set(theirs) == set(weights)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype
        assert torch.equal(ours[name].view(torch.int32), theirs[name].view(torch.int32)), name  # bit for bit
    assert torch.equal(ours["model.norm.weight"][:4].view(torch.int32), torch.zeros(4, dtype=torch.int32))

    # a normal model directory: transformers loads it (tied lm_head), with tokenizer, card and provenance
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(model.lm_head.weight, ours["model.embed_tokens.weight"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    generated = model.generate(**tokenizer("the quick", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > 2
    card = (out / "README.md").read_text()
    assert "mergekit" in card and "ties" in card.lower() and "alpha" in card and "rmu" in card.lower()
    record = json.loads((out / "spunge.json").read_text())
    assert [r["name"] for r in record["runs"]] == ["rmu/alpha", "beta", "tvn/alpha"]  # clashing names get their parent
    assert record["base_model"]["path"] == str(base.resolve())
    assert set(record["runs"][0]) >= {"name", "attribute", "value", "method", "config", "rows", "path"}


def test_disk_per_attribute_is_the_changed_tensors(tmp_path):
    base = build_tiny_llama(tmp_path / "base", layers=24, hidden=64)
    base_bytes = (base / "model.safetensors").stat().st_size
    runs = [make_rmu_run(base, tmp_path / "rmu" / v, seed=i, value=v, rows=5) for i, v in enumerate(VALUES)]
    out = merge_runs(str(base), runs, tmp_path / "merged", views_dir=tmp_path / "views", progress=False)
    views = [p for p in (tmp_path / "views").iterdir() if not p.name.startswith("base-")]
    pools = [p for p in (tmp_path / "views").iterdir() if p.name.startswith("base-")]
    assert len(views) == 3 and len(pools) == 1  # one shared per-tensor copy of the base, whatever the number of runs
    delta_bytes = (runs[0] / "delta.safetensors").stat().st_size
    for view in views:
        own = _own_bytes(view)
        assert delta_bytes <= own < 0.05 * base_bytes, (own, base_bytes)
        links = [p for p in view.iterdir() if p.is_symlink() and p.suffix == ".safetensors"]
        assert all(Path(os.path.realpath(p)).parent == pools[0].resolve() for p in links)
    assert sum(p.stat().st_size for p in pools[0].glob("*.safetensors")) < 1.1 * base_bytes
    assert (out / "model.safetensors.index.json").is_file()


def test_linear_time_pruning_keeps_exactly_what_mergekit_keeps(monkeypatch):
    from mergekit import sparsify
    from mergekit.sparsify import RescaleNorm

    from spunge_merge.merge.pruning import magnitude

    mergekit_magnitude = sparsify.magnitude
    handed_over = []  # the cases spunge leaves to mergekit's own argsort

    def counted(tensor, density, rescale_norm=None):
        handed_over.append(tensor)
        return mergekit_magnitude(tensor, density, rescale_norm)

    monkeypatch.setattr(sparsify, "magnitude", counted)
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(64, 48, generator=generator)
    sparse = normal * (torch.rand(64, 48, generator=generator) < 0.3)  # the boundary falls among zeros
    tied = torch.randint(-3, 4, (64, 48), generator=generator) * 0.25  # ties at the boundary: mergekit decides
    odd = normal.clone()
    odd[0, :5] = float("nan")
    odd[1, :5] = -0.0
    nans = normal.clone()
    nans[:40] = float("nan")  # more NaNs than any k below: the k-th largest is a NaN
    fast = (normal, sparse, odd)
    for tensor in (*fast, tied, nans, normal.to(torch.bfloat16)):  # bf16: 3,072 values on 128 levels an octave, ties likely
        for density in (0.05, 0.2, 0.5, 0.9, 1.0):
            for norm in (None, RescaleNorm.l1):
                handed_over.clear()
                ours = magnitude(tensor, density, norm)
                theirs = mergekit_magnitude(tensor, density, norm)
                assert ours.dtype == theirs.dtype
                assert torch.equal(ours.view(-1).view(torch.uint8), theirs.view(-1).view(torch.uint8)), (tensor.dtype, density, norm)
                if density < 1 and any(tensor is t for t in fast):
                    assert not handed_over, (tensor.dtype, density)  # answered by the selection, not a sort
                if density <= 0.5 and tensor is tied:  # (at 0.9 the boundary falls among its zeros)
                    assert handed_over


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "breadcrumbs_ties", "dare_ties"])
def test_linear_time_pruning_gives_mergekit_bits_through_the_whole_merge(method):
    """The whole of mergekit's merge_group, with spunge's pruning, against mergekit's as shipped."""
    from mergekit.merge_methods import get
    from mergekit.merge_methods.base import TensorGroup

    from spunge_merge.merge.pruning import linear_time_pruning

    generator = torch.Generator().manual_seed(1)
    base = torch.randn(48, 40, generator=generator)
    base[0, :4] = -0.0
    runs = [base + 0.05 * torch.randn(48, 40, generator=generator) for _ in range(3)]
    runs[0][1] = base[1]  # a row left alone: zeros in the task vector
    runs[1][2, :3] = float("nan")
    runs[2][3] = base[3] - (runs[0][3] - base[3])  # opposite signs: the consensus decides
    merge = get(method)
    for dtype in (torch.float32, torch.bfloat16):
        group = TensorGroup.from_tensors([t.to(dtype) for t in (base, *runs)], base_index=0)
        for weights, density, normalize, lam, int8 in [((1.0, 1.0, 1.0), 0.2, True, 1.0, False),
                                                       ((1.0, -0.5, 2.0), 0.5, False, 1.5, False),
                                                       ((0.3, 0.3, 0.4), 0.9, True, 1.0, True)]:
            params = {"weight": dict(enumerate(weights, 1)), "density": dict.fromkeys(range(1, 4), density),
                      "gamma": dict.fromkeys(range(1, 4), 0.01), "normalize": normalize, "lambda": lam,
                      "int8_mask": int8, "rescale": method == "dare_ties"}
            torch.manual_seed(7)  # DARE drops at random
            theirs = merge.merge_group(group, **params)
            torch.manual_seed(7)
            with linear_time_pruning():
                ours = merge.merge_group(group, **params)
            assert ours.dtype == theirs.dtype
            assert torch.equal(ours.view(-1).view(torch.uint8), theirs.view(-1).view(torch.uint8)), (dtype, weights, int8)


# --------------------------------------------------------------------------- recipes


def test_a_hand_edited_recipe_runs_with_its_edits(tiny_model, runs, tmp_path, monkeypatch):
    views_before = sorted(runs["views"].rglob("*")) if runs["views"].exists() else []
    result = cli("--base", tiny_model, *runs["rmu"], "--dry-run", "--recipe-out", tmp_path / "r.yml", "--views-dir", runs["views"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "merged").exists()
    text = (tmp_path / "r.yml").read_text()
    recipe = yaml.safe_load(text)
    # the portable form: paths relative to the folder holding the runs and the base, no merge views, nothing built
    assert str(runs["views"]) not in text and "merge-views" not in text
    assert (sorted(runs["views"].rglob("*")) if runs["views"].exists() else []) == views_before  # no view built
    assert all(not Path(entry["model"]).is_absolute() for entry in recipe["models"]) and not Path(recipe["base_model"]).is_absolute()
    monkeypatch.chdir(os.path.commonpath([runs["root"], tiny_model.parent]))
    from spunge_merge.cli import app

    for line in text.splitlines():  # RMU deltas: the recipe says how to make each a full model mergekit reads
        if line.startswith("#") and "spunge materialize" in line:
            made = CliRunner().invoke(app, line.split("spunge ", 1)[1].split())
            assert made.exit_code == 0, made.output
    for entry, weight in zip(recipe["models"], (1.0, 0.5, 2.0), strict=True):
        entry["parameters"] = {"density": 0.9, "weight": weight}
    recipe["parameters"]["int8_mask"] = True
    edited = "# edited by hand\n" + yaml.safe_dump(recipe, sort_keys=False)
    (tmp_path / "edited.yml").write_text(edited)
    result = cli("--recipe", tmp_path / "edited.yml", "--out", tmp_path / "merged", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged" / "mergekit_config.yml").read_text() == edited
    base = load_file(tiny_model / "model.safetensors")
    name = "model.layers.7.mlp.down_proj.weight"
    expected = ties_reference(base[name], [load_file(r / "delta.safetensors")[name] for r in runs["rmu"]],
                              density=0.9, lam=1.0, weights=[1.0, 0.5, 2.0])
    torch.testing.assert_close(read_model(tmp_path / "merged")[name], expected, rtol=1e-5, atol=1e-6)

    # a recipe may name run directories: spunge replaces them by views (and records the rewritten recipe)
    by_runs = {"merge_method": "ties", "base_model": str(tiny_model), "parameters": {"normalize": True},
               "models": [{"model": str(r), "parameters": {"density": 0.9, "weight": w}} for r, w in zip(runs["rmu"], (1.0, 0.5, 2.0),
                                                                                                    strict=True)]}
    (tmp_path / "runs.yml").write_text(yaml.safe_dump(by_runs))
    out = merge_recipe(tmp_path / "runs.yml", tmp_path / "by-runs", views_dir=runs["views"], progress=False)
    torch.testing.assert_close(read_model(out)[name], expected, rtol=1e-5, atol=1e-6)
    rewritten = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert all((Path(m["model"]) / "model.safetensors.index.json").is_file() for m in rewritten["models"])

    # mergekit's BASE+ADAPTER syntax is served by a view too (not by mergekit's path-keyed LoRA cache)
    lora = {"merge_method": "task_arithmetic", "base_model": str(tiny_model),
            "models": [{"model": f"{tiny_model}+{runs['tvn'][1]}", "parameters": {"weight": 1.0}}]}
    (tmp_path / "lora.yml").write_text(yaml.safe_dump(lora))
    out = merge_recipe(tmp_path / "lora.yml", tmp_path / "lora", views_dir=runs["views"], progress=False)
    expected = peft_merged(tiny_model, runs["tvn"][1])
    for name, tensor in read_model(out).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "recipes" / "mergekit").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_recipes_are_valid_mergekit_recipes(recipe):
    from spunge_merge.merge.recipe import load_recipe, validate_recipe

    text, data = load_recipe(recipe)
    config = validate_recipe(data, recipe.name)
    assert config.merge_method in text and len(config.models) >= 2


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_runs(tiny_model, runs, tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("bad")
    other = build_tiny_llama(tmp_path / "other", layers=4)
    foreign = make_rmu_run(tiny_model, tmp_path / "foreign", seed=5, value="x", rows=3)
    write_provenance(foreign, kind="rmu-delta", fingerprint="f", method="rmu", base_model=_describe(other))
    misshapen = tmp_path / "misshapen"
    misshapen.mkdir()
    save_file({"model.layers.5.mlp.down_proj.weight": torch.zeros(64, 32)}, misshapen / "delta.safetensors")
    truncated = tmp_path / "truncated"
    shutil.copytree(runs["rmu"][1], truncated)
    data = (truncated / "delta.safetensors").read_bytes()
    (truncated / "delta.safetensors").write_bytes(data[:-100])
    return {"foreign": foreign, "misshapen": misshapen, "checkpoint": other, "truncated": truncated}


@pytest.mark.parametrize(("case", "expected"), [
    ("foreign", "was unlearned from base model"),
    ("misshapen", "has shape [64, 32]"),
    ("checkpoint", "num_hidden_layers is 4"),
    ("truncated", "truncated/delta.safetensors: corrupt or truncated safetensors file"),
    ("method", "unknown merge method 'bogus'"),
    ("parameter", "Unknown parameter(s) for ties: foo"),
    ("negative", "mergekit issue #213"),
    ("not-empty", "is not empty; pass --force"),
    pytest.param("cuda", "CUDA is not available", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")),
])
def test_bad_input_is_refused_with_nothing_written(case, expected, tiny_model, runs, bad_runs, tmp_path):
    out = tmp_path / "out"
    args = ["--base", tiny_model, "--out", out, "--views-dir", tmp_path / "views", "--no-progress", runs["rmu"][0]]
    extra = {"method": ["--method", "bogus"], "parameter": ["--param", "foo=1"], "negative": ["--weight", "-1"],
             "cuda": ["--cuda"]}.get(case, [])
    if case in bad_runs:
        args.append(bad_runs[case])
    if case == "not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    result = cli(*args, *extra)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert expected in message and message.count("\n") == 0, message
    if case == "not-empty":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# --------------------------------------------------------------------------- copying unchanged tensors


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_adjacent_tensors_are_copied_in_one_call_and_land_intact(tmp_path, monkeypatch, kernel_copy):
    from spunge_merge.merge import shards
    from spunge_merge.tensorfiles import model_slots

    torch.manual_seed(0)
    source = {f"t{i}": torch.randn(8 + i, 5) for i in range(6)}
    (tmp_path / "src").mkdir()
    save_file(source, tmp_path / "src" / "model.safetensors", metadata={"format": "pt"})
    slots = model_slots(tmp_path / "src")
    in_file_order = sorted(slots, key=lambda n: slots[n].start)
    chosen = [n for n in in_file_order if n != in_file_order[3]]  # a gap: two runs of adjacent tensors
    calls = []
    real = shards.copy_file_bytes
    monkeypatch.setattr(shards, "copy_file_bytes", lambda *args: (calls.append(args[4]), real(*args)))
    if not kernel_copy:  # a file system without copy_file_range: the read/write fallback
        monkeypatch.delattr(os, "copy_file_range")
    (tmp_path / "out").mkdir()
    writer = shards.ShardWriter(tmp_path / "out", header_reserve=shards.header_bound((n, 2) for n in chosen),
                                max_shard_bytes=10**9)
    writer.copy_tensors([(name, slots[name]) for name in chosen])
    writer.finish()
    assert calls == [sum(slots[n].nbytes for n in chosen[:3]), sum(slots[n].nbytes for n in chosen[3:])]
    copied = load_file(tmp_path / "out" / "model-00001-of-00001.safetensors")
    assert sorted(copied) == sorted(chosen)
    for name in chosen:
        assert torch.equal(copied[name], source[name]), name

    # a shard limit inside a run splits the copy where the new file starts
    calls.clear()
    (tmp_path / "small").mkdir()
    writer = shards.ShardWriter(tmp_path / "small", header_reserve=shards.header_bound((n, 2) for n in chosen),
                                max_shard_bytes=2 * slots[chosen[0]].nbytes + 1)
    writer.copy_tensors([(name, slots[name]) for name in chosen])
    files = writer.finish()
    assert len(set(files.values())) > 2 and len(calls) == len(set(files.values()))
    merged = {}
    for file in sorted(set(files.values())):
        merged.update(load_file(tmp_path / "small" / file))
    assert all(torch.equal(merged[n], source[n]) for n in chosen)


def test_several_compute_threads_give_the_same_tensors_bit_for_bit(tiny_model, runs, tmp_path, monkeypatch):
    outputs = {}
    for threads in ("1", "4"):
        monkeypatch.setenv("SPUNGE_MERGE_THREADS", threads)
        out = merge_runs(str(tiny_model), runs["tvn"], tmp_path / f"threads-{threads}", density=0.3, views_dir=runs["views"],
                         progress=False)
        record = json.loads((out / "spunge.json").read_text())["result"]
        assert record["computed"] == 16  # the q/v projections every adapter changed
        outputs[threads] = read_model(out)
    assert sorted(outputs["1"]) == sorted(outputs["4"])
    for name, tensor in outputs["1"].items():
        assert torch.equal(tensor.view(torch.int32), outputs["4"][name].view(torch.int32)), name

    monkeypatch.setenv("SPUNGE_MERGE_THREADS", "many")
    result = cli("--base", tiny_model, *runs["tvn"], "--out", tmp_path / "bad", "--views-dir", runs["views"], "--no-progress")
    assert result.exit_code == 2 and "SPUNGE_MERGE_THREADS='many': expected a whole number" in result.output
    assert not (tmp_path / "bad").exists()


def test_one_compute_thread_waits_while_the_main_thread_copies(tmp_path):
    """While the main thread copies, one of two workers waits (the copy needs a core); then both share what is left."""
    import threading
    import time

    from mergekit.graph import Task
    from mergekit.options import MergeOptions
    from tqdm import tqdm

    from spunge_merge.merge.runner import _Computation, _Job
    from spunge_merge.merge.shards import ShardWriter

    ran = []  # (tensor, thread, copies finished?)
    computation = None

    class Slow(Task[torch.Tensor]):
        index: int

        def arguments(self):
            return {}

        def execute(self):
            ran.append((self.index, threading.current_thread().name, computation.copied.is_set()))
            time.sleep(0.05)
            return torch.full((2,), float(self.index))

    jobs = [_Job(f"t{i}", Slow(index=i), None, False) for i in range(6)]
    writer = ShardWriter(tmp_path, header_reserve=4096)
    computation = _Computation(jobs, MergeOptions(), threads=2, copying=True)
    with tqdm(disable=True) as bar, computation:
        written = 0
        while written < 2:  # "copying" meanwhile
            written += computation.write_ready(writer, bar)
            time.sleep(0.005)
        computation.copies_done()
        written += computation.write_rest(writer, bar)
    writer.finish(index=True)
    assert written == 6 and sorted(index for index, *_ in ran) == list(range(6))
    assert all(thread.endswith("-0") for _, thread, copied in ran if not copied)
    assert any(thread.endswith("-1") for _, thread, _ in ran)
    tensors = read_model(tmp_path)
    assert all(torch.equal(tensors[f"t{i}"], torch.full((2,), float(i))) for i in range(6))



def test_a_safetensors_header_read_through_another_path_names_that_path(tmp_path):
    """The header cache must not hand back slots naming a file that is gone: moved (same inode, size and mtime),
    the file is read through its new path, and its bytes come from there."""
    from spunge_merge.tensorfiles import read_chunks, read_header

    first = tmp_path / "a" / "model.safetensors"
    first.parent.mkdir()
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, str(first))
    assert read_header(first)["w"].file == str(first)
    moved = tmp_path / "b" / "model.safetensors"
    moved.parent.mkdir()
    os.rename(first, moved)  # what a deleted folder and a copy2 on a reused inode look like to a cache keyed by inode
    slot = read_header(moved)["w"]
    assert slot.file == str(moved)
    data = b"".join(bytes(chunk) for chunk in read_chunks(slot, bytearray(64)))
    expected = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    assert torch.equal(torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(2, 3), expected)
    linked = tmp_path / "c" / "model.safetensors"  # the same file through a link (a view): one parse, its own path
    linked.parent.mkdir()
    linked.symlink_to(moved)
    assert read_header(linked)["w"].file == str(linked) and read_header(moved)["w"].file == str(moved)
