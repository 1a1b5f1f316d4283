"""The frontier grid's anchored baseline (issue 27, item 4): the read-out of every Spunge merge against the plain and the
anchored baseline on synthetic per-fact points worked out by hand, the plan's per-method merges and statistics cost,
and the anchored baseline built by bench/grid_points.py equal, tensor for tensor, to `spunge merge <baseline run>
--method anchored_ls`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import frontiers  # noqa: E402
from frontiers_readout import render, write_outputs  # noqa: E402
from grid_points import build_model, seed_arms  # noqa: E402

READOUT = {"keep_drop": 5.0, "forget_at_most": 5.0, "level_margin": 2.0, "min_seeds": 3, "retain_ppl_margin_pct": 50.0,
           "bootstrap": {"n": 300, "seed": 0}}
MERGES = {"ties": {"method": "ties", "density": 1.0}, "anchored_ls": {"method": "anchored_ls", "parameters": {"rho": 1.0}}}


def _point(keep: float, a: float, b: float, pair: list[str]) -> dict:
    """Two facts per forgotten domain, each fact's verdict `a` (first domain) or `b` (second)."""
    items = {pair[0]: {"x0": a, "x1": a}, pair[1]: {"y0": b, "y1": b}}
    return {"keep": (keep, None), "forget": ((a + b) / 2, items), "ppl": 10.0}


def _unit(seed: int, pair: list[str], spunge_anchored: tuple[float, float]) -> dict:
    p = lambda keep, a, b: _point(keep, a, b, pair)  # noqa: E731
    return {"pair": pair, "seed": seed, "facts": "", "fallback": False, "excluded": 0, "points": {
        "base": p(100.0, 100, 100),
        "baseline-lam1": p(95.0, 100, 0),                    # on the target keep (95): a 100, b 0
        "baseline-lam2": p(80.0, 0, 0),
        "baseline-anchored_ls-lam1": p(97.0, 100, 0),        # crosses 95 half-way to λ 2: a 50, b 0
        "baseline-anchored_ls-lam2": p(93.0, 0, 0),
        "spunge-ties-lam1": p(95.0, 100, 100),               # a 100, b 100
        "spunge-ties-lam2": p(80.0, 0, 0),
        "spunge-anchored_ls-lam1": p(95.0, *spunge_anchored),
        "spunge-anchored_ls-lam2": p(80.0, 0, 0),
    }}


def test_every_spunge_merge_is_read_against_the_plain_and_the_anchored_baseline(tmp_path):
    # a+b: Spunge + anchor forgets every fact at keep 95; c+d: it forgets as the anchored baseline does (a 50, b 0)
    units = [_unit(s, ["a", "b"], (0, 0)) for s in (0, 1, 2)] + [_unit(s, ["c", "d"], (50, 0)) for s in (0, 1, 2)]
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"domain": d, "part": "train"}) + "\n" for d in "abcd"), encoding="utf-8")
    for unit in units:
        unit["facts"] = str(facts)
    settings = frontiers.Settings(seeds=[0, 1, 2], merges=["ties", "anchored_ls"], lambdas=[1.0, 2.0], baseline_lambdas=[1.0, 2.0],
                                  merge_settings=MERGES)
    plan = {"readout": READOUT, "merges": MERGES, "fallback_facts": None}
    summary = write_outputs({("knowledge", "rmu", "tiny"): units}, plan, settings, tmp_path / "out", plan_markdown="# Frontier plan",
                            seconds=1.0, quick=False)
    row = summary["rows"][0]
    fair = row["against_anchored"]["baseline-anchored_ls"]

    def mean(entry: dict, merge: str) -> float:
        return entry["merges"][merge]["matched_utility"]["mean"]

    # By hand, per fact at keep 95: baseline a 100 b 0; anchored baseline a 50 b 0; ties a 100 b 100;
    # Spunge + anchor a 0 b 0 (a+b) or a 50 b 0 (c+d). Δ = mean over the two domains of the per-fact differences.
    assert row["sets"]["a+b"]["merges"]["ties"]["matched_utility"]["mean"] == pytest.approx(50.0)      # (0 + 100) / 2
    assert mean(row["sets"]["a+b"], "anchored_ls") == pytest.approx(-50.0)                            # (−100 + 0) / 2
    assert mean(row["sets"]["c+d"], "anchored_ls") == pytest.approx(-25.0)                            # (−50 + 0) / 2
    assert mean(row, "anchored_ls") == pytest.approx(-37.5)                                           # pooled over 6 units
    assert mean(fair["sets"]["a+b"], "ties") == pytest.approx(75.0)                                   # (50 + 100) / 2
    assert mean(fair["sets"]["a+b"], "anchored_ls") == pytest.approx(-25.0)                           # (−50 + 0) / 2
    assert mean(fair["sets"]["c+d"], "anchored_ls") == pytest.approx(0.0)
    assert mean(fair, "anchored_ls") == pytest.approx(-12.5)
    verdicts = {name: fair["sets"][name]["merges"]["anchored_ls"]["matched_utility"]["verdict"] for name in ("a+b", "c+d")}
    assert verdicts == {"a+b": "helps", "c+d": "level"}
    assert fair["merges"]["anchored_ls"]["matched_utility"]["baseline_lambda"] == [1.5] * 6  # half-way between λ 1 and 2
    # the anchor's own effect on the baseline: a 50 − 100, b 0 − 0 → −25 on every set
    alone = fair["anchor_on_baseline"]
    assert alone["pooled"]["mean"] == pytest.approx(-25.0) and alone["pooled"]["verdict"] == "helps"
    assert {k: v["mean"] for k, v in alone["sets"].items()} == {"a+b": pytest.approx(-25.0), "c+d": pytest.approx(-25.0)}

    text = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert text == render(json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8")))
    assert "| rmu | tiny | a+b | anchored_ls (**fair**) | baseline-anchored_ls | -25.0 [-25.0, -25.0] | **helps** | 3 | 0/0 |" in text
    assert "| rmu | tiny | c+d | anchored_ls (**fair**) | baseline-anchored_ls | +0.0 [+0.0, +0.0] | **level** | 3 | 0/0 |" in text
    assert "| rmu | tiny | a+b | ties | baseline-anchored_ls | +75.0 [+75.0, +75.0] | **hurts** |" in text
    assert "| rmu | tiny | pooled | baseline-anchored_ls (anchor alone) | baseline | -25.0 [-25.0, -25.0] | **helps** | 6 |" in text


def test_a_unit_is_read_only_once_its_anchored_baseline_is_evaluated(tmp_path):
    """The driver's collect: the anchored baseline is part of a seed's planned grid."""
    from frontiers_readout import collect

    assert seed_arms([1.0], [0.5, 2.0], ["ties", "anchored_ls"], MERGES) == [
        ("baseline", 0.5), ("baseline", 2.0), ("baseline-anchored_ls", 0.5), ("baseline-anchored_ls", 2.0),
        ("spunge-ties", 1.0), ("spunge-anchored_ls", 1.0)]
    cell = frontiers.Cell("knowledge", "tiny", "rmu", ("a", "b"), tmp_path / "facts.jsonl", False)
    settings = frontiers.Settings(seeds=[0], merges=["ties", "anchored_ls"], lambdas=[1.0], baseline_lambdas=[1.0],
                                  merge_settings=MERGES)

    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "knowledge.json").write_text(json.dumps({"domains": {d: {"accuracy": 0.5, "n": 2} for d in "abk"}}))
        (folder / "perplexity.json").write_text(json.dumps({"perplexity": 10.0}))

    for name in ("grid/base", "grid/0/eval/baseline-lam1", "grid/0/eval/spunge-ties-lam1", "grid/0/eval/spunge-anchored_ls-lam1"):
        write(tmp_path / name)
    plan = {"merges": MERGES}
    assert collect(plan, [cell], settings, lambda plan, cell: tmp_path) == {}
    write(tmp_path / "grid/0/eval/baseline-anchored_ls-lam1")
    [units] = collect(plan, [cell], settings, lambda plan, cell: tmp_path).values()
    assert set(units[0]["points"]) == {"base", "baseline-lam1", "baseline-anchored_ls-lam1", "spunge-ties-lam1",
                                       "spunge-anchored_ls-lam1"}


def test_the_shipped_plan_runs_anchored_ls_where_runs_record_retain_data_and_costs_its_statistics():
    plan = frontiers.load_plan()
    cells, settings = frontiers.select(plan, quick=False, only={"model": {"smollm2-135m"}})
    assert "anchored_ls" in settings.for_method("rmu").merges and "anchored_ls" in settings.for_method("npo").merges
    assert "anchored_ls" not in settings.for_method("tvn").merges
    rmu = settings.for_method("rmu")
    # RMU: 6 baseline λ × (plain + anchored) + 7 merges × 5 λ; the statistics pass once per cell (base inputs)
    assert rmu.models_per_seed == 6 * 2 + 7 * 5 and rmu.statistics_passes == 1
    assert settings.for_method("tvn").statistics_passes == 0
    text, _ = frontiers.plan_text(plan, [c for c in cells if c.method == "rmu"][:1], settings, 100.0)
    assert "+ 25 s statistics per cell" in text


def test_a_slice_of_the_merges_builds_only_those_with_the_anchored_baseline():
    """The documented command: RMU on one smollm2-135m pair, ties + anchored_ls and both baselines."""
    plan = frontiers.load_plan()
    only = frontiers.parse_only("model=smollm2-135m,method=rmu,pair=capitals+city_countries,merge=ties,merge=anchored_ls")
    cells, settings = frontiers.select(plan, quick=False, only=only)
    assert [c.key for c in cells] == ["knowledge/smollm2-135m/rmu/capitals+city_countries"]
    rmu = settings.for_method("rmu", "smollm2-135m")
    assert rmu.merges == ["ties", "anchored_ls"]
    arms = seed_arms(rmu.lambdas, rmu.baseline_lambdas, rmu.merges, rmu.merge_settings)
    assert sorted({arm for arm, _ in arms}) == ["baseline", "baseline-anchored_ls", "spunge-anchored_ls", "spunge-ties"]
    assert rmu.models_per_seed == len(arms) == 2 * 6 + 2 * 5
    # a method none of whose merges is in the slice has no cell; a merge the plan lacks is refused
    assert frontiers.select(plan, quick=False, only={"method": {"tvn"}, "merge": {"anchored_ls"}})[0] == []
    from spunge_merge.errors import SpungeError

    with pytest.raises(SpungeError, match="merge=nope: not a merge of the plan"):
        frontiers.select(plan, quick=False, only={"merge": {"nope"}})


def test_an_anchored_merge_for_a_method_without_retain_data_is_refused_by_name(tmp_path):
    from spunge_merge.errors import SpungeError

    given = tmp_path / "mine.yaml"
    given.write_text("methods: [tvn]\nmethod_merges: {}\n", encoding="utf-8")
    with pytest.raises(SpungeError, match="merge anchored_ls needs retain data, which tvn's runs do not record"):
        frontiers.select(frontiers.load_plan(given), quick=False, only={})
    given.write_text("methods: [tvn]\nmethod_merges: {tvn: [ties, nope]}\n", encoding="utf-8")
    with pytest.raises(SpungeError, match="method_merges.tvn: .* unknown: nope"):
        frontiers.select(frontiers.load_plan(given), quick=False, only={})


# --------------------------------------------------------------------------- the anchored baseline on a tiny model

DOWN = "model.layers.{}.mlp.down_proj.weight"


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _read_model(directory: Path) -> dict[str, torch.Tensor]:
    return {name: tensor for file in sorted(directory.glob("*.safetensors")) for name, tensor in load_file(file).items()}


def test_grid_points_anchored_baseline_equals_spunge_merge_of_the_baseline_run(tiny_model, tmp_path, monkeypatch):
    from spunge_merge.cli import app
    from spunge_merge.models import ResolvedModel
    from spunge_merge.provenance import write_provenance

    monkeypatch.setenv("SPUNGE_CACHE", str(tmp_path / "cache"))
    base = ResolvedModel(str(tiny_model), tiny_model)
    forget = [_write_jsonl(tmp_path / f"{v}.jsonl", texts) for v, texts in
              (("alpha", ["the quick brown fox jumps over the lazy dog"]), ("beta", ["paris is the capital of france"]))]
    retain = _write_jsonl(tmp_path / "retain.jsonl", ["water boils at one hundred degrees", "the sun rises in the east"])
    weights = load_file(tiny_model / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    delta = {DOWN.format(i): weights[DOWN.format(i)] + 0.05 * torch.randn(weights[DOWN.format(i)].shape, generator=generator)
             for i in (1, 2)}
    run = tmp_path / "seed" / "baseline" / "run"  # an RMU-format un-split run, recording its forget and retain data
    run.mkdir(parents=True)
    save_file(delta, run / "delta.safetensors", metadata={"format": "pt"})
    write_provenance(run, kind="rmu-delta", fingerprint="rmu-baseline", method="rmu", base_model=base.describe(), config={},
                     data={"forget": [{"path": str(p), "rows": 1} for p in forget], "retain": [{"path": str(retain), "rows": 2}]},
                     attribute=None)

    built = tmp_path / "grid" / "models" / "baseline-anchored_ls-lam0.5"
    build_model("baseline-anchored_ls", 0.5, built, tmp_path / "seed", tmp_path / "grid", base=base, method=None,
                merge_settings={"anchored_ls": {"method": "anchored_ls", "parameters": {"rho": 2.0, "ridge": 0.01}}},
                views_dir=tmp_path / "views")
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["merge", str(run), "--base", str(tiny_model), "--out", str(out), "--method", "anchored_ls",
                                      "--lambda", "0.5", "--param", "rho=2", "--param", "ridge=0.01", "--no-progress"])
    assert result.exit_code == 0, result.output
    grid, cli = _read_model(built), _read_model(out)
    assert grid.keys() == cli.keys()
    assert all(torch.equal(grid[name], cli[name]) for name in cli)
    # anchored: not the plain baseline at λ 0.5 (base + 0.5 Δ) on the edited matrices, the base elsewhere
    for name, tensor in grid.items():
        plain = weights[name] + 0.5 * (delta[name] - weights[name]) if name in delta else weights[name]
        assert torch.equal(tensor, weights[name]) if name not in delta else not torch.allclose(tensor, plain, atol=1e-6)
