"""The robustness read-out (bench/frontiers_robustness.py) on synthetic relearn results (no model): the operating
point's per-fact recovery mixed with the read-out's weights, Spunge − baseline with its interval and verdict worked
out in the test, pooled and per forget set, the plot and the Markdown."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from frontiers_robustness import operating_point, plot_row, render, rows_by_set  # noqa: E402

from spunge_merge.evaluate.stats import hierarchical_bootstrap  # noqa: E402

READOUT = {"keep_drop": 5.0, "bootstrap": {"n": 400, "seed": 3}}
# baseline: keep 98 → 90 brackets 95 (w = 3/8 on λ 2); the merge sits on keep 95 at λ 1 (weight 1)
WEIGHTS = {"baseline-lam1": 0.625, "baseline-lam2": 0.375, "spunge-ties-lam1": 1.0}


def _unit(pair=("a", "b"), seed=0, baseline_keep=(98.0, 90.0, 70.0)) -> dict:
    curves = {"baseline": [(1.0, baseline_keep[0], 40.0), (2.0, baseline_keep[1], 10.0), (4.0, baseline_keep[2], 0.0)],
              "spunge-ties": [(0.5, 99.0, 60.0), (1.0, 95.0, 30.0), (2.0, 80.0, 5.0)]}
    points = {"base": {"keep": (100.0, None), "forget": (100.0, None)}}
    for arm, curve in curves.items():
        for lam, keep, forget in curve:
            points[f"{arm}-lam{lam:g}"] = {"keep": (keep, None), "forget": (forget, None)}
    return {"pair": list(pair), "seed": seed, "points": points}


def _result(base: dict[str, float], steps: dict[int, dict[str, list[int]]], verdicts: bool = True) -> dict:
    """A relearn.json as `spunge eval relearn` writes it: per step and domain accuracy (and each fact's verdict)."""
    curve = []
    for step, domains in sorted(steps.items()):
        entries = {d: {"accuracy": sum(v) / len(v), "correct": sum(v), "n": len(v), **({"verdicts": v} if verdicts else {})}
                   for d, v in domains.items()}
        curve.append({"step": step, "domains": entries})
    first, last = curve[0]["domains"], curve[-1]["domains"]
    summary = {d: {"base": base[d], "unlearned": first[d]["accuracy"], "attacked": last[d]["accuracy"],
                   "recovery": None if base[d] == first[d]["accuracy"] else
                   (last[d]["accuracy"] - first[d]["accuracy"]) / (base[d] - first[d]["accuracy"])} for d in first}
    return {"kind": "relearn", "base": {"domains": base}, "curve": curve, "domains": summary}


BASE = {"a": 1.0, "b": 0.75}


def _world(seed_shift: dict[int, int], verdicts: bool = True) -> dict:
    """(seed, label) -> result. Domain a (attacked): the merge relearns 1 + shift of 4 facts, the baseline 2 (λ 1) and
    4 (λ 2). Domain b (cross): the merge starts with 1 fact and relearns 1 more; the baseline relearns 0 (λ 1) and 1 (λ 2)."""
    found = {}
    for seed, shift in seed_shift.items():
        spunge_a = [1] * (1 + shift) + [0] * (3 - shift)
        found[(seed, "spunge-ties-lam1")] = _result(BASE, {0: {"a": [0, 0, 0, 0], "b": [1, 0, 0, 0]},
                                                           10: {"a": spunge_a, "b": [1, 1, 0, 0]}}, verdicts)
        found[(seed, "baseline-lam1")] = _result(BASE, {0: {"a": [0, 0, 0, 0], "b": [0, 0, 0, 0]},
                                                        10: {"a": [1, 1, 0, 0], "b": [0, 0, 0, 0]}}, verdicts)
        found[(seed, "baseline-lam2")] = _result(BASE, {0: {"a": [0, 0, 0, 0], "b": [0, 0, 0, 0]},
                                                        10: {"a": [1, 1, 1, 1], "b": [0, 0, 1, 0]}}, verdicts)
    return found


def _loader(world: dict):
    return lambda unit, label, attack: world.get((unit["seed"], label)) if attack == "in-subset-k10" else None


def _hand(shift: int) -> dict[str, list[float]]:
    """Per-fact Spunge − baseline at step 10, written out: baseline = 0.625 · (λ 1) + 0.375 · (λ 2)."""
    spunge_a = [100.0] * (1 + shift) + [0.0] * (3 - shift)                 # gap 1.0: recovery % = points
    base_a = [0.625 * x + 0.375 * y for x, y in zip([100, 100, 0, 0], [100, 100, 100, 100], strict=True)]
    spunge_b = [0.0, 100.0 / 0.5, 0.0, 0.0]                                # starts at 0.25 of 0.75: gap 0.5
    base_b = [0.625 * 0 + 0.375 * y / 0.75 for y in (0, 0, 100, 0)]         # gap 0.75
    return {"in_subset": [s - b for s, b in zip(spunge_a, base_a, strict=True)],
            "cross_subset": [s - b for s, b in zip(spunge_b, base_b, strict=True)]}


def test_operating_point_mixes_each_facts_recovery_with_the_readouts_weights():
    world = _loader(_world({0: 0}))
    baseline = operating_point(_unit(), "baseline", READOUT, "in-subset-k10", world)
    spunge = operating_point(_unit(), "spunge-ties", READOUT, "in-subset-k10", world)
    assert baseline["weights"] == pytest.approx({k: v for k, v in WEIGHTS.items() if k.startswith("baseline")})
    assert spunge["weights"] == {"spunge-ties-lam1": 1.0} and spunge["reached"] and baseline["reached"]
    value, items = baseline["steps"][10]["in_subset"]["recovery"]
    assert items == pytest.approx([100.0, 100.0, 37.5, 37.5]) and value == pytest.approx(68.75)
    value, items = baseline["steps"][10]["cross_subset"]["recovery"]  # λ 2 relearned 1 of 3 forgotten facts: 33.3 %
    assert value == pytest.approx(0.375 * 100 / 3) and items == pytest.approx([0, 0, 0.375 * 100 / 0.75, 0])
    assert baseline["steps"][10]["cross_subset"]["points"][0] == pytest.approx(0.375 * 25)
    assert spunge["steps"][10]["cross_subset"]["recovery"][0] == pytest.approx(50.0)  # 1 of 2 forgotten facts back
    assert spunge["steps"][0]["in_subset"]["recovery"] == (0.0, [0.0] * 4)
    assert operating_point(_unit(), "baseline", READOUT, "wikitext-k10", world) is None  # not attacked: left out


def test_interval_and_verdict_are_the_bootstrap_over_the_per_fact_differences_worked_out_by_hand():
    shifts = {0: 0, 1: 1, 2: 0}
    units = [_unit(seed=s) for s in shifts]
    row = rows_by_set(units, ["ties"], ["in-subset-k10", "wikitext-k10"], READOUT, _loader(_world(shifts)))[0]
    assert list(row) == ["ties"] and list(row["ties"]) == ["in-subset-k10"]
    for role in ("in_subset", "cross_subset"):
        found = row["ties"]["in-subset-k10"]["comparison"][role]["recovery"][10]
        diffs = [_hand(shifts[s])[role] for s in shifts]
        expected = hierarchical_bootstrap(diffs, n=400, seed=3)
        assert found["mean"] == pytest.approx(sum(sum(d) / 4 for d in diffs) / 3)
        assert (found["low"], found["high"]) == pytest.approx((expected["low"], expected["high"]))
        assert (found["n_seeds"], found["units"], found["left_out"]) == (3, 3, 0)
    in_subset = row["ties"]["in-subset-k10"]["comparison"]["in_subset"]["recovery"][10]
    # by hand: seed 0 and 2: (0 − 100 − 37.5 − 37.5) / 4 = −43.75; seed 1: (0 + 0 − 37.5 − 37.5) / 4 = −18.75
    assert in_subset["mean"] == pytest.approx((-43.75 * 2 - 18.75) / 3)
    assert in_subset["high"] < 0 and in_subset["verdict"] == "helps"  # Spunge recovers less: lower is better
    assert in_subset["spunge"] == pytest.approx((25 + 50 + 25) / 3) and in_subset["baseline"] == pytest.approx(68.75)
    cross = row["ties"]["in-subset-k10"]["comparison"]["cross_subset"]["recovery"][10]
    # per fact [0, +200, −50, 0] in every seed: the mean +37.5 but facts resampled reach below 0, too wide to call
    assert cross["mean"] == pytest.approx(50 - 12.5) and cross["low"] < 0 < cross["high"] and cross["verdict"] == "no verdict"


def test_identical_per_fact_differences_give_a_zero_width_interval_and_two_seeds_no_verdict():
    world = {}
    for seed in (0, 1, 2):  # the merge relearns every fact, the baseline none: +100 on every fact
        world[(seed, "spunge-ties-lam1")] = _result(BASE, {0: {"a": [0] * 4, "b": [0] * 4}, 5: {"a": [1] * 4, "b": [0] * 4}})
        for label in ("baseline-lam1", "baseline-lam2"):
            world[(seed, label)] = _result(BASE, {0: {"a": [0] * 4, "b": [0] * 4}, 5: {"a": [0] * 4, "b": [0] * 4}})
    units = [_unit(seed=s) for s in (0, 1, 2)]
    row = rows_by_set(units, ["ties"], ["in-subset-k10"], READOUT, _loader(world))[0]
    found = row["ties"]["in-subset-k10"]["comparison"]["in_subset"]
    assert (found["recovery"][5]["low"], found["recovery"][5]["high"], found["recovery"][5]["verdict"]) == (100.0, 100.0, "hurts")
    assert found["points"][5]["mean"] == pytest.approx(100.0) and found["points"][5]["verdict"] == "hurts"
    two = rows_by_set(units[:2], ["ties"], ["in-subset-k10"], READOUT, _loader(world))[0]
    assert two["ties"]["in-subset-k10"]["comparison"]["in_subset"]["recovery"][5]["verdict"] == "no verdict"
    # cross-subset: neither arm relearns any of b (0 of base 0.75 throughout): a zero difference, level
    assert row["ties"]["in-subset-k10"]["comparison"]["cross_subset"]["recovery"][5]["verdict"] == "level"
    assert row["ties"]["in-subset-k10"]["comparison"]["cross_subset"]["points"][5]["verdict"] == "level"


def test_undefined_recovery_is_left_out_and_an_unreached_point_gives_no_verdict():
    shifts = {0: 0, 1: 1, 2: 0}
    world = _world(shifts)
    flat = _result({"a": 0.0, "b": 0.75}, {0: {"a": [0] * 4, "b": [1, 0, 0, 0]}, 10: {"a": [1, 0, 0, 0], "b": [1, 1, 0, 0]}})
    world[(2, "spunge-ties-lam1")] = flat  # the base scores a as the unlearned model does: recovery undefined there
    units = [_unit(seed=s) for s in shifts]
    row = rows_by_set(units, ["ties"], ["in-subset-k10"], READOUT, _loader(world))[0]["ties"]["in-subset-k10"]["comparison"]
    assert (row["in_subset"]["recovery"][10]["units"], row["in_subset"]["recovery"][10]["left_out"]) == (2, 1)
    assert row["in_subset"]["recovery"][10]["verdict"] == "no verdict"  # two seeds left
    assert row["in_subset"]["points"][10]["units"] == 3  # raw points are always defined
    # the baseline never loses 5 points: its nearest point (λ 2, keep 97) stands in, flagged as not reached
    far = [_unit(seed=s, baseline_keep=(99.0, 97.0, 98.0)) for s in shifts]
    found = rows_by_set(far, ["ties"], ["in-subset-k10"], READOUT, _loader(_world(shifts)))[0]
    assert found["ties"]["in-subset-k10"]["curves"][0]["baseline"]["weights"] == {"baseline-lam2": 1.0}
    assert found["ties"]["in-subset-k10"]["comparison"]["in_subset"]["recovery"][10]["high"] < 0
    assert found["ties"]["in-subset-k10"]["comparison"]["in_subset"]["recovery"][10]["verdict"] == "no verdict"


def test_without_per_fact_verdicts_each_unit_counts_by_its_mixed_value():
    shifts = {0: 0, 1: 1, 2: 0}
    units = [_unit(seed=s) for s in shifts]
    row = rows_by_set(units, ["ties"], ["in-subset-k10"], READOUT, _loader(_world(shifts, verdicts=False)))[0]
    found = row["ties"]["in-subset-k10"]["comparison"]["in_subset"]["recovery"][10]
    expected = hierarchical_bootstrap([[-43.75], [-18.75], [-43.75]], n=400, seed=3)
    assert (found["mean"], found["low"], found["high"]) == pytest.approx((expected["mean"], expected["low"], expected["high"]))


def test_rows_per_forget_set_and_pooled_with_the_plot_and_the_markdown(tmp_path):
    shifts = {0: 0, 1: 1, 2: 0}
    world = _world(shifts)
    world.update({(s + 10, label): r for (s, label), r in _world(shifts).items()})
    units = [_unit(seed=s) for s in shifts] + [_unit(pair=("c", "d"), seed=s + 10) for s in shifts]
    for unit in units[3:]:  # the second set's results name its own domains
        for label in WEIGHTS:
            result = json.loads(json.dumps(world[(unit["seed"], label)]).replace('"a"', '"c"').replace('"b"', '"d"'))
            world[(unit["seed"], label)] = result
    pooled, sets = rows_by_set(units, ["ties"], ["in-subset-k10"], READOUT, _loader(world))
    assert sorted(sets) == ["a+b", "c+d"] and pooled["ties"]["in-subset-k10"]["units"] == 6
    assert sets["a+b"]["ties"]["in-subset-k10"]["comparison"]["in_subset"]["recovery"][10]["mean"] == pytest.approx(
        (-43.75 * 2 - 18.75) / 3)
    plot_row(pooled["ties"], "rmu · tiny", tmp_path / "relearn.png")
    assert (tmp_path / "relearn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(json.dumps({"command": "python bench/frontiers.py --readout-only --relearn lucki2024", "preset": "lucki2024",
                                     "date": "today", "readout": READOUT,
                                     "rows": [{"method": "rmu", "model": "tiny", "pooled": pooled, "sets": sets,
                                               "plots": {"ties": "relearn.png"}}]}))
    text = render(summary)
    assert "`python bench/frontiers.py --readout-only --relearn lucki2024`" in text
    line = next(x for x in text.splitlines() if x.startswith("| rmu | tiny | a+b | ties | in-subset-k10 | in-subset |"))
    assert "| 10 | -35.4 [" in line and "**helps**" in line


def test_the_driver_reads_a_grid_on_disk_into_relearn_md_and_json(tmp_path):
    """write_robustness over a frontier grid written as the driver writes it (evaluations, relearn results)."""
    import frontiers
    from frontiers_robustness import write_robustness

    from spunge_merge.fsutil import write_json

    plan = {"runs": tmp_path / "runs", "readout": READOUT, "merges": {"ties": {"method": "ties"}}}
    cell = frontiers.Cell(task="knowledge", model="tiny", method="rmu", pair=("a", "b"), facts=tmp_path / "facts.jsonl",
                          fallback=False)
    settings = frontiers.Settings(seeds=[0, 1, 2], merges=["ties"], lambdas=[0.5, 1.0, 2.0], baseline_lambdas=[1.0, 2.0, 4.0])
    root = frontiers.cell_dir(plan, cell)
    shifts = {0: 0, 1: 1, 2: 0}
    world = _world(shifts)
    for seed in shifts:
        for name, point in _unit(seed=seed)["points"].items():
            where = root / "grid" / "base" if name == "base" else root / "grid" / str(seed) / "eval" / name
            forget, keep = point["forget"][0] / 100, point["keep"][0] / 100
            write_json(where / "knowledge.json", {"domains": {"a": {"accuracy": forget, "n": 4}, "b": {"accuracy": forget, "n": 4},
                                                              "k": {"accuracy": keep, "n": 4}}})
            write_json(where / "perplexity.json", {"perplexity": 10.0})
        for label in WEIGHTS:
            write_json(root / "grid" / str(seed) / "relearn" / label / "in-subset-k10" / "relearn.json", world[(seed, label)])
    out = tmp_path / "RESULTS"
    summary = write_robustness(plan, [cell], settings, frontiers.cell_dir, out, preset="lucki2024", command="python bench/frontiers.py x")
    stored = json.loads((out / "relearn.json").read_text(encoding="utf-8"))
    assert stored == summary and (out / "relearn.md").read_text(encoding="utf-8") == render(stored)
    found = stored["rows"][0]["pooled"]["ties"]["in-subset-k10"]["comparison"]["in_subset"]["recovery"]["10"]
    assert found["mean"] == pytest.approx((-43.75 * 2 - 18.75) / 3) and found["verdict"] == "helps"
    assert (out / stored["rows"][0]["plots"]["ties"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    per_seed = {(r["seed"], r["arm"]): r for r in stored["per_seed"] if r["attack"] == "in-subset-k10"}
    assert per_seed[(1, "spunge-ties")]["in_subset"] == pytest.approx(0.5)  # the hook's own per-seed figure, kept beside


def test_a_model_that_forgot_less_than_ten_points_has_no_recovery_share_but_its_points_count():
    """Forgetting 1 of 20 facts (5 points) and losing 1 more to the attack would read as −100 % recovered: left out."""
    from frontiers_robustness import MIN_FORGOTTEN, label_figures

    def result(start_correct: int, end_correct: int) -> dict:
        return _result({"a": 1.0}, {0: {"a": [1] * start_correct + [0] * (20 - start_correct)},
                                    10: {"a": [1] * end_correct + [0] * (20 - end_correct)}})

    assert MIN_FORGOTTEN == 0.10
    barely = label_figures(result(19, 18), "a")[10]  # forgot 5 points, then lost one more fact
    assert barely["recovery"] == (None, None) and barely["points"][0] == pytest.approx(-5.0)
    enough = label_figures(result(18, 19), "a")[10]  # forgot 10 points: counts, half of it back
    assert enough["recovery"][0] == pytest.approx(50.0) and enough["points"][0] == pytest.approx(5.0)
    assert label_figures(result(20, 20), "a")[10]["recovery"] == (None, None)  # forgot nothing
