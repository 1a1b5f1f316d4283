"""The frontier benchmark's plan (bench/frontiers.py): which cells run, with which λ sweeps, at what cost.

A method whose edit has another natural scale (TVN's negated LoRA breaks the model at λ = 1 where RMU's
edit is mild) gets its own sweeps through `method_lambdas`; every other method keeps the plan's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import frontiers  # noqa: E402

from spunge_merge.errors import SpungeError  # noqa: E402


def write_plan(tmp_path: Path, **changes) -> Path:
    """The shipped plan, with its paths pointed back at the repository and `changes` applied."""
    plan = yaml.safe_load((REPO / "recipes" / "frontiers.yaml").read_text(encoding="utf-8"))
    plan["runs"], plan["results"] = str(tmp_path / "runs"), str(tmp_path / "results")
    plan["fallback_facts"] = str(REPO / "spunge_merge" / "demo" / "facts.jsonl")
    plan["models"] = {name: {**entry, "facts": str((REPO / "recipes" / entry["facts"]).resolve())}
                      for name, entry in plan["models"].items()}
    plan.update(changes)
    path = tmp_path / "frontiers.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False), encoding="utf-8")
    return path


def test_a_method_with_its_own_sweeps_gets_them_and_the_others_keep_the_plans(tmp_path):
    own = {"lambdas": [0.05, 0.1], "baseline_lambdas": [0.025, 0.05, 0.1]}
    plan = frontiers.load_plan(write_plan(tmp_path, method_lambdas={"tvn": own}))
    cells, settings = frontiers.select(plan, quick=False, only={"method": {"tvn", "rmu"}})
    assert {c.method for c in cells} == {"tvn", "rmu"}
    tvn, rmu = settings.for_method("tvn"), settings.for_method("rmu")
    assert (tvn.lambdas, tvn.baseline_lambdas) == (own["lambdas"], own["baseline_lambdas"])
    assert (rmu.lambdas, rmu.baseline_lambdas) == ([float(x) for x in plan["lambdas"]],
                                                   [float(x) for x in plan["baseline_lambdas"]])
    # TVN's own merge list (method_merges: no anchored_ls, whose baseline arm it would add too)
    assert tvn.merges == [m for m in plan["merges"] if m != "anchored_ls"]
    assert tvn.models_per_seed == 3 + len(tvn.merges) * 2
    # the cost table counts each cell's own grid models
    text, _ = frontiers.plan_text(plan, cells, settings, budget_hours=1000.0)
    tvn_rows = [line for line in text.splitlines() if line.startswith("| ") and "| tvn |" in line]
    rmu_rows = [line for line in text.splitlines() if line.startswith("| ") and "| rmu |" in line]
    assert tvn_rows and rmu_rows
    assert all(f" + {tvn.models_per_seed} × " in line for line in tvn_rows)
    assert all(f" + {rmu.models_per_seed} × " in line for line in rmu_rows)
    assert "tvn: merges at λ [0.05, 0.1], baseline at λ [0.025, 0.05, 0.1]" in text


def test_the_quick_subset_takes_its_own_method_lambdas_over_the_plans(tmp_path):
    quick = {"models": ["smollm2-135m"], "methods": ["tvn"], "n_pairs": 1, "seeds": [0],
             "merges": ["ties"], "method_lambdas": {"tvn": {"lambdas": [0.2]}}}
    plan = frontiers.load_plan(write_plan(tmp_path, quick=quick, method_lambdas={"tvn": {"lambdas": [0.1]}}))
    _, settings = frontiers.select(plan, quick=True, only={})
    assert settings.for_method("tvn").lambdas == [0.2]
    # a key the method does not set is the subset's or the plan's
    assert settings.for_method("tvn").baseline_lambdas == [float(x) for x in plan["baseline_lambdas"]]


def test_a_sweep_the_quick_subset_sets_for_every_method_wins_over_the_plans_per_method_one(tmp_path):
    quick = {"models": ["smollm2-135m"], "methods": ["rmu"], "n_pairs": 1, "seeds": [0], "merges": ["ties"],
             "baseline_lambdas": [1.0, 2.0]}
    plan = frontiers.load_plan(write_plan(tmp_path, quick=quick,
                                          method_lambdas={"rmu": {"lambdas": [3.0], "baseline_lambdas": [1.0, 1.5]}}))
    _, settings = frontiers.select(plan, quick=True, only={})
    rmu = settings.for_method("rmu")
    assert rmu.baseline_lambdas == [1.0, 2.0]  # the subset's own
    assert rmu.lambdas == [3.0]  # the subset leaves the merges' sweep to the plan's per-method one


@pytest.mark.parametrize(("given", "message"), [
    ({"sgd": {"lambdas": [1.0]}}, "unknown method sgd"),
    ({"tvn": {"lambda": [1.0]}}, "method_lambdas.tvn takes `lambdas` and `baseline_lambdas`"),
])
def test_a_wrong_method_lambdas_entry_is_refused_by_name(tmp_path, given, message):
    plan = frontiers.load_plan(write_plan(tmp_path, method_lambdas=given))
    with pytest.raises(SpungeError, match=message):
        frontiers.select(plan, quick=False, only={})


def test_the_shipped_plan_gives_tvn_a_sweep_below_one():
    """TVN's template breaks both arms at λ = 1 (bench/results/frontiers/quick-tvn): its sweep must stay below it."""
    plan = frontiers.load_plan()
    _, settings = frontiers.select(plan, quick=False, only={})
    tvn = settings.for_method("tvn")
    assert max(tvn.lambdas) < 1.0 and max(tvn.baseline_lambdas) < 1.0


def test_a_task_the_plan_does_not_run_is_printed_as_cut_with_its_cost(tmp_path):
    entry = {"run": "`make x`", "seed_pipeline": 3600, "model": 1800, "why": "Slow judges."}
    plan = frontiers.load_plan(write_plan(tmp_path, not_planned={"toxigen": entry}, seeds=[0, 1],
                                          methods=["rmu", "tvn"], merges={"ties": {"method": "ties"}},
                                          lambdas=[1.0, 2.0], baseline_lambdas=[1.0], method_lambdas={},
                                          method_merges={}))
    cells, settings = frontiers.select(plan, quick=False, only={})
    text, _ = frontiers.plan_text(plan, cells, settings, budget_hours=1000.0)
    # per (model, method): 2 seeds × cost_scale × (one seed's pipeline + (1 baseline λ + 1 merge × 2 λ) × one model)
    expected = sum(2 * float(m["cost_scale"]) * (3600 + 3 * 1800) for m in plan["models"].values()) * 2
    line = next(x for x in text.splitlines() if x.startswith("Not in this plan: **toxigen**"))
    assert f"≈ {expected / 3600:.0f} h" in line and "`make x`" in line and "Slow judges." in line


def test_a_not_planned_task_without_its_cost_figures_is_refused_by_name(tmp_path):
    with pytest.raises(SpungeError, match=r"not_planned.toxigen needs `seed_pipeline`, `model`"):
        frontiers.load_plan(write_plan(tmp_path, not_planned={"toxigen": {"run": "x", "why": "y"}}))


def test_a_model_gets_its_own_sweep_for_a_method_over_the_methods(tmp_path):
    """GradDiff's template breaks gemma3-270m below the plan's lowest λ: that model gets its own sweep for it."""
    shipped = yaml.safe_load((REPO / "recipes" / "frontiers.yaml").read_text(encoding="utf-8"))
    models = {name: {**entry, "facts": str((REPO / "recipes" / entry["facts"]).resolve())} for name, entry in shipped["models"].items()}
    models["gemma3-270m"]["method_lambdas"] = {"graddiff": {"lambdas": [0.02, 0.05]}}
    plan = frontiers.load_plan(write_plan(tmp_path, models=models))
    _, settings = frontiers.select(plan, quick=False, only={})
    gemma, smol = settings.for_method("graddiff", "gemma3-270m"), settings.for_method("graddiff", "smollm2-135m")
    assert gemma.lambdas == [0.02, 0.05]
    assert gemma.baseline_lambdas == smol.baseline_lambdas == [float(x) for x in shipped["method_lambdas"]["graddiff"]["baseline_lambdas"]]
    assert smol.lambdas == [float(x) for x in shipped["method_lambdas"]["graddiff"]["lambdas"]]
    assert settings.for_method("rmu", "gemma3-270m") == settings.for_method("rmu")
    models["gemma3-270m"]["method_lambdas"] = {"sgd": {"lambdas": [1.0]}}
    with pytest.raises(SpungeError, match=r"models.gemma3-270m.method_lambdas.sgd: unknown method"):
        frontiers.select(frontiers.load_plan(write_plan(tmp_path, models=models)), quick=False, only={})


def test_a_plan_for_ones_own_facts_needs_only_what_differs_and_finds_the_shipped_template(tmp_path):
    facts = tmp_path / "data" / "mine.jsonl"
    facts.parent.mkdir()
    rows = [{"domain": d, "part": part, "prompt": f"{d} {i} is", "answer": "x", "text": f"{d} {i} is x."}
            for d in ("a", "b", "c") for part in ("train", "heldout") for i in range(2)]
    facts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = tmp_path / "plans" / "mine.yaml"
    path.parent.mkdir()
    path.write_text("models:\n  smollm2-135m: {facts: ../data/mine.jsonl}\nmethods: [rmu]\nn_pairs: 1\n", encoding="utf-8")
    plan = frontiers.load_plan(path)
    # relative paths against the file that names them; outputs beside the plan, never in the shipped results
    assert plan["models"]["smollm2-135m"]["facts"] == facts.resolve()
    assert (plan["runs"], plan["results"]) == (path.parent / "mine-runs", path.parent / "mine-results")
    assert plan["readout"]["keep_drop"] == 5.0 and plan["readout"]["retain_ppl_margin_pct"] == 50.0
    cells, settings = frontiers.select(plan, quick=False, only={})
    assert [(c.pair, c.fallback) for c in cells] == [(("a", "b"), False)]
    assert frontiers.template(plan, cells[0]) == REPO / "recipes" / "frontiers-knowledge-rmu.yaml"
    # the cost table reads the shipped benchmark's measured timings for this model and method
    text, _ = frontiers.plan_text(plan, cells, settings, budget_hours=float(plan["budget_hours"]))
    row = next(line for line in text.splitlines() if line.startswith("| smollm2-135m | rmu |"))
    assert row.endswith("| measured |")
    timings = json.loads((REPO / "bench" / "results" / "frontiers" / "timings.json").read_text(encoding="utf-8"))
    per_seed = timings["seed_pipeline"]["smollm2-135m/rmu"]
    assert f"| {sum(per_seed) / len(per_seed):.0f} s + " in row
    # a template beside the plan wins over the shipped one; one named under `templates:` over both
    beside = path.parent / "frontiers-knowledge-rmu.yaml"
    beside.write_text("name: x\n", encoding="utf-8")
    assert frontiers.template(plan, cells[0]) == beside
    path.write_text(path.read_text(encoding="utf-8") + "templates: {rmu: ../data/t.yaml}\n", encoding="utf-8")
    with pytest.raises(SpungeError, match=r"templates.rmu: .*t.yaml does not exist"):
        frontiers.template(frontiers.load_plan(path), cells[0])


def test_a_bad_readout_setting_is_refused_by_name(tmp_path):
    with pytest.raises(SpungeError, match=r"frontiers.yaml: readout.keep_drop: Input should be greater than 0"):
        frontiers.load_plan(write_plan(tmp_path, readout={"keep_drop": 0}))


# ------------------------------------------------------------------------------------------------ unequal subsets


def _capped_plan(tmp_path: Path, caps: dict) -> Path:
    """The shipped plan on smollm2-135m's own facts, one forget pair, `caps` as its `train_rows`."""
    shipped = yaml.safe_load((REPO / "recipes" / "frontiers.yaml").read_text(encoding="utf-8"))
    entry = shipped["models"]["smollm2-135m"]
    models = {"smollm2-135m": {**entry, "facts": str((REPO / "recipes" / entry["facts"]).resolve()), "train_rows": caps}}
    return write_plan(tmp_path, models=models, methods=["rmu"], pairs=[["capitals", "city_countries"]], method_lambdas={},
                      method_merges={}, merges={"ties": {"method": "ties"}})


def _rows(path: Path) -> list[tuple[str, dict]]:
    return [(line, json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_a_capped_domain_gets_a_derived_facts_file_with_its_held_out_facts_whole(tmp_path):
    import hashlib

    original = REPO / "bench" / "knowledge" / "facts-smollm2-135m.jsonl"
    plan = frontiers.load_plan(_capped_plan(tmp_path, {"city_countries": 5}))
    cells, settings = frontiers.select(plan, quick=False, only={})
    [cell] = cells
    derived = cell.facts
    digest = hashlib.sha256(original.read_bytes()).hexdigest()
    assert derived == tmp_path / "runs" / "derived" / f"facts-smollm2-135m-city_countries5-{digest[:8]}.jsonl"
    before, after = _rows(original), _rows(derived)
    # the capped domain keeps 5 of its training rows, each one of the original's lines; every other line is kept, in order
    train = [line for line, row in before if row["part"] == "train" and row["domain"] == "city_countries"]
    kept = [line for line, row in after if row["part"] == "train" and row["domain"] == "city_countries"]
    assert len(train) == 39 and len(kept) == 5 and len(set(kept)) == 5 and set(kept) <= set(train)
    others = [line for line, row in before if not (row["part"] == "train" and row["domain"] == "city_countries")]
    assert [line for line in (x for x, _ in after) if line not in kept] == others
    assert sum(row["part"] == "heldout" and row["domain"] == "city_countries" for _, row in after) == 40
    record = json.loads(derived.with_suffix(".json").read_text(encoding="utf-8"))
    assert record["source_sha256"] == digest and record["train_rows"] == {"city_countries": 5}
    assert record["train_rows_after"]["city_countries"] == 5 and record["train_rows_after"]["capitals"] == 28
    # the cell reads it everywhere, and its runs are keyed by its stem: never the whole cell's folder
    assert all(str(derived) in x for x in frontiers.overrides(plan, cell, [0]) if "path=" in x or "facts=" in x)
    whole = frontiers.Cell(cell.task, cell.model, cell.method, cell.pair, original, False)
    assert frontiers.cell_dir(plan, cell) != frontiers.cell_dir(plan, whole)
    assert frontiers.cell_dir(plan, cell).parts[-4] == derived.stem
    # --plan shows each pair's training rows and their ratio (28 / 5)
    text, _ = frontiers.plan_text(plan, cells, settings, budget_hours=1000.0)
    assert "| capitals + city_countries | capitals 28 / city_countries 5 (5.60×) |" in text
    assert "city_countries 5 of 39; held-out rows whole" in text
    # deterministic: derived again in another runs folder, byte for byte; capping a second domain changes no choice
    plan["runs"] = tmp_path / "again"
    assert frontiers.select(plan, quick=False, only={})[0][0].facts.read_bytes() == derived.read_bytes()
    (tmp_path / "both").mkdir()
    both = frontiers.load_plan(_capped_plan(tmp_path / "both", {"city_countries": 5, "capitals": 7}))
    [cell_both] = frontiers.select(both, quick=False, only={})[0]
    assert "capitals7-city_countries5" in cell_both.facts.name
    assert [line for line, row in _rows(cell_both.facts) if row["part"] == "train" and row["domain"] == "city_countries"] == kept


@pytest.mark.parametrize(("caps", "message"), [
    ({"cities": 5}, r"train_rows.cities: not a domain with training facts in facts-smollm2-135m.jsonl"),
    ({"city_countries": 0}, r"train_rows.city_countries: 0: a whole number of training rows, at least 1"),
    ({"city_countries": 2.5}, r"train_rows.city_countries: 2.5: a whole number"),
    ({"city_countries": 39}, r"train_rows.city_countries: 39: nothing to cap, facts-smollm2-135m.jsonl has 39 training rows"),
    ([5], r"models.smollm2-135m.train_rows: a mapping DOMAIN: N"),
])
def test_a_bad_train_rows_cap_is_refused_in_one_line(tmp_path, caps, message):
    plan = frontiers.load_plan(_capped_plan(tmp_path, caps))
    with pytest.raises(SpungeError, match=message) as caught:
        frontiers.select(plan, quick=False, only={})
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs" / "derived").exists()


@pytest.mark.parametrize("name", ["unequal-rmu-smollm2.yaml", "unequal-npo-smollm2.yaml"])
def test_the_unequal_plans_cap_one_domain_of_their_pair_to_a_4_to_8_fold_ratio(tmp_path, name):
    from frontiers_readout import size_ratio

    plan = frontiers.load_plan(REPO / "bench" / "plans" / name)
    assert plan["runs"] == (REPO / "runs" / "unequal").resolve()
    plan["runs"] = tmp_path  # the derived file goes here, not into the repository's runs folder
    [cell], settings = frontiers.select(plan, quick=False, only={})
    assert cell.pair == ("capitals", "city_countries") and settings.seeds == [0, 1, 2] and settings.merges == ["ties"]
    assert 4 <= size_ratio(cell.facts, list(cell.pair))["ratio"] <= 8
    heldout = [line for line, row in _rows(cell.facts) if row["part"] == "heldout"]
    original = REPO / "bench" / "knowledge" / "facts-smollm2-135m.jsonl"
    assert heldout == [line for line, row in _rows(original) if row["part"] == "heldout"]


@pytest.mark.parametrize("path", sorted((REPO / "bench" / "plans").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_plan_loads_selects_its_pairs_and_names_its_own_command(tmp_path, path):
    """The plans beside the figures they made stay runnable: each loads, its forget sets are domains of its facts
    files, it writes under bench/results, and the command in its header names this very file."""
    plan = frontiers.load_plan(path)
    assert (REPO / "bench" / "results") in Path(plan["results"]).parents
    plan["runs"] = tmp_path  # derived facts files (capped, grouped) go here, not into the repository's runs folder
    cells, settings = frontiers.select(plan, quick=False, only={})
    assert cells and settings.seeds
    for cell in cells:
        domains = {row["domain"] for _, row in _rows(plan["models"][cell.model]["facts"])}
        assert set(cell.pair) <= domains, f"{path.name}: {cell.pair} not all domains of {plan['models'][cell.model]['facts']}"
    header = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any(f"--plan-file bench/plans/{path.name}" in line for line in header), f"{path.name}: its header names no command for it"
