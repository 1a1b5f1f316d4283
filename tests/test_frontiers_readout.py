"""The frontier benchmark's read-out (bench/frontiers_readout.py) against numbers worked out by hand: the
matched-utility interpolation, the verdict rule, and a whole row over synthetic per-fact points (no model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from frontiers_readout import interpolate_at_keep, pick_matched_forgetting, read_row, verdict  # noqa: E402

CURVE = [(0.0, 100.0, 100.0), (1.0, 98.0, 40.0), (2.0, 90.0, 10.0), (4.0, 70.0, 0.0)]  # (λ, keep avg, forget avg)


def test_interpolates_forget_between_the_two_points_that_bracket_the_target_keep():
    found = interpolate_at_keep(CURVE, 95.0)
    # keep 98 → 90 brackets 95: w = (98 − 95) / (98 − 90) = 3/8; forget 40 + 3/8 · (10 − 40) = 28.75; λ 1.375
    assert found["reached"] is True
    assert found["forget"] == pytest.approx(28.75)
    assert found["lam"] == pytest.approx(1.375)
    assert found["weights"] == pytest.approx({1: 0.625, 2: 0.375})


def test_order_of_points_does_not_matter_and_an_exact_hit_takes_that_point():
    assert interpolate_at_keep(list(reversed(CURVE)), 95.0)["forget"] == pytest.approx(28.75)
    hit = interpolate_at_keep(CURVE, 98.0)
    assert (hit["forget"], hit["weights"], hit["reached"]) == (40.0, {1: 1.0}, True)


def test_the_first_crossing_along_lambda_counts_on_a_curve_that_comes_back():
    bumpy = [(0.0, 100.0, 100.0), (1.0, 94.0, 20.0), (2.0, 97.0, 15.0), (4.0, 80.0, 0.0)]
    # 100 → 94 crosses 95 first: w = 5/6, forget 100 − 5/6 · 80 = 33.33
    assert interpolate_at_keep(bumpy, 95.0)["forget"] == pytest.approx(100 - 80 * 5 / 6)


def test_an_arm_that_never_loses_enough_uses_its_nearest_point_and_is_flagged():
    found = interpolate_at_keep([(0.0, 100.0, 100.0), (1.0, 99.0, 50.0), (2.0, 97.0, 20.0)], 95.0)
    assert (found["forget"], found["lam"], found["reached"]) == (20.0, 2.0, False)


@pytest.mark.parametrize(("low", "high", "seeds", "better", "expected"), [
    (-5.0, -1.0, 3, "lower", "helps"),      # Spunge forgets more at matched utility
    (1.0, 3.0, 3, "lower", "hurts"),
    (1.0, 3.0, 3, "higher", "helps"),       # keep avg: higher is better
    (-1.5, 1.5, 3, "lower", "level"),       # includes 0, inside ± 2
    (-3.0, 1.0, 3, "lower", "no verdict"),  # includes 0, too wide to call level
    (-5.0, -1.0, 2, "lower", "no verdict"),  # fewer than 3 seeds: never a verdict
])
def test_verdict_rule(low, high, seeds, better, expected):
    assert verdict(low, high, seeds, better=better, level_margin=2.0, min_seeds=3) == expected


def test_matched_forgetting_takes_the_best_keep_among_points_that_forget_enough():
    points = [(0.0, 100.0, 100.0), (1.0, 99.0, 4.0), (2.0, 97.0, 0.0), (4.0, 99.5, 30.0)]
    assert pick_matched_forgetting(points, 5.0) == 1
    assert pick_matched_forgetting([(0.0, 100.0, 100.0), (1.0, 99.0, 40.0), (2.0, 90.0, 20.0)], 5.0) == 2


def _point(keep: float, facts: dict[str, list[float]]):
    items = {domain: {f"{domain}{i}": v for i, v in enumerate(values)} for domain, values in facts.items()}
    forget = sum(sum(v) / len(v) for v in facts.values()) / len(facts)
    return {"keep": (keep, None), "forget": (forget, items), "ppl": 10.0}


def _unit(seed: int) -> dict:
    return {"pair": ["a", "b"], "seed": seed, "facts": "f", "fallback": False, "points": {
        "base": _point(100.0, {"a": [100, 100], "b": [100, 100]}),
        "baseline-lam1": _point(98.0, {"a": [0, 100], "b": [0, 0]}),
        "baseline-lam2": _point(90.0, {"a": [0, 0], "b": [0, 0]}),
        "spunge-ties-lam1": _point(96.0, {"a": [100, 100], "b": [100, 100]}),
        # measured on the target keep (a point between λ 1 and 2, whose 100-point forget gap is too wide to
        # interpolate across); per-fact values stand for the facts' mean over prompts
        "spunge-ties-lam1.5": _point(95.0, {"a": [50, 50], "b": [50, 50]}),
        "spunge-ties-lam2": _point(94.0, {"a": [0, 0], "b": [0, 0]}),
    }}


READOUT = {"keep_drop": 5.0, "forget_at_most": 5.0, "level_margin": 2.0, "min_seeds": 3, "bootstrap": {"n": 500, "seed": 0}}


def test_a_row_over_three_seeds_matches_the_hand_computation():
    row = read_row([_unit(s) for s in (0, 1, 2)], ["ties"], READOUT)
    matched = row["merges"]["ties"]["matched_utility"]
    # target keep 95. Baseline: w = 3/8 between λ 1 and 2, per fact a = (0, 62.5), b = (0, 0): forget 15.625.
    # Spunge: at λ 1.5 exactly, every fact 50: forget 50. Per fact Spunge − baseline: a = (50, −12.5), b = (50, 50).
    assert matched["baseline_forget"] == pytest.approx(15.625)
    assert matched["spunge_forget"] == pytest.approx(50.0)
    assert matched["mean"] == pytest.approx(34.375)
    # every resample of a seed is (mean of a's draw + 50) / 2 with a's draw in {50, 18.75, −12.5}: ≥ 18.75 > 0
    assert matched["low"] >= 18.75 - 1e-9 and matched["high"] <= 50 + 1e-9
    assert matched["verdict"] == "hurts"
    assert matched["spunge_lambda"] == [1.5] * 3 and matched["baseline_lambda"] == [1.375] * 3
    one = row["merges"]["ties"]["lambda_1"]
    assert one["forget"]["mean"] == pytest.approx(75.0) and one["forget"]["verdict"] == "hurts"
    assert one["keep"]["mean"] == pytest.approx(-2.0) and one["keep"]["verdict"] == "hurts"
    # matched forgetting: both arms' only point with forget ≤ 5 % is λ 2: keep 94 − 90 = +4
    forgetting = row["merges"]["ties"]["matched_forgetting_keep"]
    assert forgetting["mean"] == pytest.approx(4.0) and forgetting["verdict"] == "helps"
    assert forgetting["not_reached"] == 0
    assert row["best"] == "ties" and row["why"].startswith("closest: ties")


def test_a_row_over_two_seeds_has_no_verdict():
    row = read_row([_unit(s) for s in (0, 1)], ["ties"], READOUT)
    assert row["merges"]["ties"]["matched_utility"]["verdict"] == "no verdict"


def test_a_bracket_wider_than_the_gap_is_not_reached_and_gives_no_verdict():
    """Base (keep 100) and a λ that broke the model (keep 15): the crossing of keep 95 is a guess."""
    points = [(0.0, 100.0, 100.0), (1.0, 15.0, 1.7)]
    found = interpolate_at_keep(points, 95.0)
    assert found["reached"] is False and found["weights"] == pytest.approx({0: 1 - 5 / 85, 1: 5 / 85})
    near = interpolate_at_keep([(0.0, 100.0, 100.0), (1.0, 80.0, 60.0)], 95.0)
    assert near["reached"] is True and near["forget"] == pytest.approx(100 - 0.25 * 40)


def test_a_wide_bracket_whose_ends_forget_the_same_is_reached():
    """The RMU baseline forgets everything at λ 1 (keep 97) and at λ 2 (keep 64): at keep 95 it forgets 0,
    wherever between them the curve crosses."""
    found = interpolate_at_keep([(0.0, 100.0, 100.0), (1.0, 97.0, 0.0), (2.0, 64.0, 0.0)], 95.0)
    assert found["reached"] is True and found["forget"] == 0.0
    assert found["weights"] == pytest.approx({1: 1 - 2 / 33, 2: 2 / 33})


def test_a_bracket_across_a_forgetting_cliff_is_not_reached():
    """gemma3-270m's RMU merge: base (keep 100, forget 100), λ 0.5 (keep 94, forget 0). The straight line says
    forget 17 % at keep 95; the merge may as well forget everything there. A finer sweep resolves it."""
    cliff = interpolate_at_keep([(0.0, 100.0, 100.0), (0.5, 94.0, 0.0)], 95.0)
    assert cliff["reached"] is False and cliff["forget"] == pytest.approx(100 / 6)
    finer = interpolate_at_keep([(0.0, 100.0, 100.0), (0.25, 96.0, 60.0), (0.5, 94.0, 0.0)], 95.0)
    assert finer["reached"] is False  # still 60 points apart
    resolved = interpolate_at_keep([(0.0, 100.0, 100.0), (0.25, 97.0, 60.0), (0.375, 96.0, 30.0), (0.5, 94.0, 0.0)], 95.0)
    assert resolved["reached"] is True and resolved["forget"] == pytest.approx(15.0)


def test_matched_forgetting_where_an_arm_never_forgets_enough_gives_no_verdict():
    """TVN's sweep stops at forget ≈ 10 % for Spunge and 44 % for the baseline: their keeps compare models that
    forget very differently, so the column must not read as a verdict."""
    units = []
    for seed in (0, 1, 2):
        unit = _unit(seed)
        unit["points"]["baseline-lam2"] = _point(60.0, {"a": [0, 100], "b": [100, 0]})  # forgets 50
        units.append(unit)
    forgetting = read_row(units, ["ties"], READOUT)["merges"]["ties"]["matched_forgetting_keep"]
    # the baseline's most-forgetting point (λ 1: forget 25, keep 98) stands in: Spunge's 94 − 98 = −4 in every unit
    assert forgetting["mean"] == pytest.approx(-4.0)
    assert forgetting["not_reached"] == 3 and forgetting["verdict"] == "no verdict"


# ------------------------------------------------------------------------------------------------ per forget set


def _set_unit(seed: int, pair: list[str], spunge: float, baseline: float) -> dict:
    """Both arms exactly on the target keep (95) at λ 1, every forgotten fact at `spunge` / `baseline`."""
    a, b = pair
    return {"pair": pair, "seed": seed, "facts": "", "fallback": False, "excluded": 2, "points": {
        "base": {**_point(100.0, {a: [100, 100], b: [100, 100]}), "facts_per_domain": {a: 8, b: 8, "k": 8}},
        "baseline-lam1": _point(95.0, {a: [baseline] * 2, b: [baseline] * 2}),
        "baseline-lam2": _point(80.0, {a: [0, 0], b: [0, 0]}),
        "spunge-ties-lam1": _point(95.0, {a: [spunge] * 2, b: [spunge] * 2}),
        "spunge-ties-lam2": _point(80.0, {a: [0, 0], b: [0, 0]}),
    }}


def test_each_forget_set_gets_its_own_verdict_beside_the_pooled_one_and_its_own_plot(tmp_path):
    """The issue's case: splitting helps on one pair and hurts on the other; pooled, the two cancel."""
    import frontiers
    from frontiers_readout import render, write_outputs

    facts = tmp_path / "facts.jsonl"
    rows = [{"domain": d, "part": "train"} for d, n in (("a", 8), ("b", 2), ("c", 3), ("d", 3)) for _ in range(n)]
    facts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    units = [_set_unit(s, ["a", "b"], 0.0, 100.0) for s in (0, 1, 2)] + [_set_unit(s, ["c", "d"], 100.0, 0.0) for s in (0, 1, 2)]
    for unit in units:
        unit["facts"] = str(facts)
    settings = frontiers.Settings(seeds=[0, 1, 2], merges=["ties"], lambdas=[1.0, 2.0], baseline_lambdas=[1.0, 2.0])
    plan = {"readout": READOUT, "merges": {"ties": {"method": "ties"}}, "fallback_facts": None}
    summary = write_outputs({("knowledge", "rmu", "tiny"): units}, plan, settings, tmp_path / "out", plan_markdown="# Frontier plan",
                            seconds=1.0, quick=False)
    row = summary["rows"][0]
    pooled = row["merges"]["ties"]["matched_utility"]
    assert pooled["mean"] == pytest.approx(0.0) and pooled["verdict"] == "no verdict"  # (3 · −100 + 3 · 100) / 6
    sets = row["sets"]
    assert list(sets) == ["a+b", "c+d"]
    helps, hurts = (sets[k]["merges"]["ties"]["matched_utility"] for k in ("a+b", "c+d"))
    assert (helps["mean"], helps["verdict"]) == (pytest.approx(-100.0), "helps")
    assert (hurts["mean"], hurts["verdict"]) == (pytest.approx(100.0), "hurts")
    # one PNG per set, named by the set; the pooled one beside them
    for name in ("frontier-knowledge-rmu-tiny.png", "frontier-knowledge-rmu-tiny-a--b.png", "frontier-knowledge-rmu-tiny-c--d.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # size ratio counted from the facts file: a 8 rows, b 2 → 4×; c and d 3 each → 1×
    assert sets["a+b"]["predictors"]["size"] == {"rows": {"a": 8, "b": 2}, "ratio": 4.0}
    assert sets["c+d"]["predictors"]["size"]["ratio"] == 1.0
    text = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert text == render(json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8")))
    assert "| rmu | tiny | a+b | ties | -100.0 [-100.0, -100.0] | **helps** |" in text
    assert "| rmu | tiny | c+d | ties | +100.0 [+100.0, +100.0] | **hurts** |" in text
    assert "a 8 / b 2 (4.00×)" in text
    assert "left out as echo-answerable (their answer is in their prompt): 2" in text
    assert "One held-out fact is 12.5 points of its domain's accuracy (8 facts per domain)" in text


def test_edit_predictors_average_the_interference_summary_over_seeds(tmp_path):
    from frontiers_readout import edit_predictors

    def row(seed, cos, disagree, alone_a, alone_b):
        return {"seed": seed, "lambda": 1.0, "base": {"a": 100.0, "b": 90.0, "keep": 100.0},
                "geometry": {"cosine_a_b": cos, "sign_disagree": disagree, "norm_a": 2.0 + seed, "norm_b": 1.0},
                "alone": {"a": dict(zip(("a", "b", "keep"), alone_a, strict=True)),
                          "b": dict(zip(("a", "b", "keep"), alone_b, strict=True))}}

    folder = tmp_path / "rmu-tiny"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"method": "rmu", "model": "tiny", "forget": ["a", "b"], "rows": [
        row(0, 0.2, 0.4, (0.0, 80.0, 99.0), (60.0, 10.0, 97.0)), row(1, 0.4, 0.3, (10.0, 90.0, 97.0), (50.0, 30.0, 95.0))]}))
    found = edit_predictors("rmu", "tiny", ["b", "a"], folder=tmp_path)
    assert found["cosine"] == pytest.approx(0.3) and found["sign_agreement"] == pytest.approx(0.65)
    assert found["norm_ratio"] == pytest.approx((2.0 + 3.0) / 2)  # larger norm over smaller, averaged over seeds
    # edit of a: own lost (100 + 90) / 2 = 95, b lost (10 + 0) / 2 = 5, keep lost (1 + 3) / 2 = 2
    assert found["selectivity"]["a"] == pytest.approx({"own": 95.0, "other": 5.0, "keep": 2.0, "selectivity": 90.0})
    # edit of b: own lost (80 + 60) / 2 = 70, a lost (40 + 50) / 2 = 45, keep lost (3 + 5) / 2 = 4
    assert found["selectivity"]["b"] == pytest.approx({"own": 70.0, "other": 45.0, "keep": 4.0, "selectivity": 25.0})
    assert edit_predictors("rmu", "tiny", ["a", "c"], folder=tmp_path) is None
    assert edit_predictors("npo", "tiny", ["a", "b"], folder=tmp_path) is None
    # another forget set of the same method and model, measured into a folder of its own, is found by what it measured
    other = tmp_path / "rmu-tiny-a--c"
    other.mkdir()
    (other / "summary.json").write_text(json.dumps({"method": "rmu", "model": "tiny", "forget": ["a", "c"], "rows": [
        {**row(0, -0.1, 0.5, (0.0, 80.0, 99.0), (60.0, 10.0, 97.0)), "base": {"a": 100.0, "c": 90.0, "keep": 100.0},
         "alone": {"a": {"a": 0.0, "c": 80.0, "keep": 99.0}, "c": {"a": 60.0, "c": 10.0, "keep": 97.0}}}]}))
    found = edit_predictors("rmu", "tiny", ["c", "a"], folder=tmp_path)
    assert found["cosine"] == pytest.approx(-0.1) and found["source"].endswith("rmu-tiny-a--c/summary.json")
    assert edit_predictors("rmu", "tiny", ["a", "b"], folder=tmp_path)["cosine"] == pytest.approx(0.3)
    # given the cell's facts file, only a summary of a cell trained on that file counts (capped rows: other edits)
    (other / "summary.json").write_text(json.dumps({**json.loads((other / "summary.json").read_text()),
                                                    "cell": "runs/x/facts-tiny-c5-0123abcd/tiny/rmu/a--c"}))
    assert edit_predictors("rmu", "tiny", ["a", "c"], folder=tmp_path, facts_stem="facts-tiny-c5-0123abcd")["cosine"] == \
        pytest.approx(-0.1)
    assert edit_predictors("rmu", "tiny", ["a", "c"], folder=tmp_path, facts_stem="facts-tiny") is None


def test_a_point_whose_retain_perplexity_broke_is_not_a_candidate_at_matched_utility():
    """GradDiff on gemma3-270m kept 94 % of the facts at retain perplexity 1,015 (base 26): keep alone is gamed."""
    from spunge_merge.evaluate.matched import FrontierReadout, matched_utility

    def point(keep, forget, ppl):
        return {"keep": (keep, None), "forget": (forget, {"a": {"x": forget}}), "ppl": ppl}

    unit = {"pair": ["a", "b"], "seed": 0, "points": {
        "base": point(100.0, 100.0, 10.0), "baseline-lam0.5": point(98.0, 40.0, 11.0),
        "baseline-lam1": point(95.0, 0.0, 100.0),  # on the target keep, but its language is gone (10× the base)
        "baseline-lam2": point(90.0, 0.0, 14.9)}}   # within 50 % of the base
    checked = matched_utility(unit, "baseline", FrontierReadout())
    # λ 1 dropped: keep 98 → 90 brackets 95, w = 3/8, forget 40 − 3/8 · 40 = 25
    assert checked["forget"] == pytest.approx(25.0) and checked["labels"] == ["baseline-lam0.5", "baseline-lam2"]
    assert checked["lam"] == pytest.approx(0.5 + 3 / 8 * 1.5)
    unchecked = matched_utility(unit, "baseline", FrontierReadout(retain_ppl_margin_pct=None))
    assert (unchecked["forget"], unchecked["labels"]) == (0.0, ["baseline-lam1"])
    tight = matched_utility(unit, "baseline", FrontierReadout(retain_ppl_margin_pct=40.0))  # λ 2's 14.9 > 14: gone too
    assert tight["reached"] is False and tight["labels"] == ["baseline-lam0.5"]


# ------------------------------------------------------------------------------------------------ each domain, the worst


def _interp(v1: list[float], v2: list[float], w: float) -> list[float]:
    return [(1 - w) * x + w * y for x, y in zip(v1, v2, strict=True)]


def _domains_unit(seed: int) -> tuple[dict, dict[str, dict[str, list[float]]]]:
    """Two forgotten domains a (4 facts) and b (4 facts), both arms crossing keep 95 between λ 1 and λ 2 with
    different weights; the values move with the seed. Returns the unit and, by hand, each arm's per-fact values at
    the crossing (baseline w = (98 − 95) / (98 − 90) = 3/8, Spunge w = (97 − 95) / (97 − 93) = 1/2)."""
    r = seed % 2
    b1 = {"a": [0, 100, 100, 0], "b": [100, 100, 100 * r, 0]}
    b2 = {"a": [0, 0, 100, 0], "b": [0, 100, 0, 0]}
    s1 = {"a": [100, 100, 100, 0], "b": [0, 100, 0, 0]}
    s2 = {"a": [100, 0, 100 * (1 - r), 0], "b": [0, 0, 0, 0]}
    unit = {"pair": ["a", "b"], "seed": seed, "facts": "", "fallback": False, "points": {
        "base": _point(100.0, {"a": [100] * 4, "b": [100] * 4}),
        "baseline-lam1": _point(98.0, b1), "baseline-lam2": _point(90.0, b2),
        "spunge-ties-lam1": _point(97.0, s1), "spunge-ties-lam2": _point(93.0, s2)}}
    at = {"baseline": {d: _interp(b1[d], b2[d], 3 / 8) for d in "ab"}, "spunge": {d: _interp(s1[d], s2[d], 1 / 2) for d in "ab"}}
    return unit, at


def test_the_worst_forgotten_domain_and_each_domain_match_an_independent_computation():
    from frontiers_domains import domain_readout

    built = [_domains_unit(s) for s in (0, 1, 2)]
    units = [u for u, _ in built]
    found = domain_readout(units, ["ties"], READOUT)["ties"]
    # by hand, seed 0 (r = 0): baseline a = (0, 62.5, 100, 0) → 40.625, b = (62.5, 100, 0, 0) → 40.625;
    # Spunge a = (100, 50, 100, 0) → 62.5, b = (0, 50, 0, 0) → 12.5: worst 62.5 − 40.625 = +21.875
    means = [{arm: {d: sum(v) / len(v) for d, v in per.items()} for arm, per in at.items()} for _, at in built]
    assert means[0]["spunge"] == {"a": 62.5, "b": 12.5} and means[0]["baseline"] == {"a": 40.625, "b": 40.625}
    worst = [max(m["spunge"].values()) - max(m["baseline"].values()) for m in means]
    assert worst[0] == pytest.approx(21.875)
    w = found["worst"]
    assert w["mean"] == pytest.approx(sum(worst) / 3)
    assert w["spunge"] == pytest.approx(sum(max(m["spunge"].values()) for m in means) / 3)
    assert w["baseline"] == pytest.approx(sum(max(m["baseline"].values()) for m in means) / 3)
    # seeds 0 and 2 tie the baseline's domains; seed 1 (b's third fact kept at λ 1) makes b its worst
    assert w["worst_domain"] == {"spunge": {"a": 3}, "baseline": {"tie": 2, "b": 1}}
    for d in "ab":
        diffs = [m["spunge"][d] - m["baseline"][d] for m in means]
        assert found["domains"][d]["mean"] == pytest.approx(sum(diffs) / 3)
        assert found["domains"][d]["spunge"] == pytest.approx(sum(m["spunge"][d] for m in means) / 3)
    # the mean of the two domains is the forget avg's Spunge − baseline, as the row reads it
    row = read_row(units, ["ties"], READOUT)["merges"]["ties"]["matched_utility"]
    assert row["mean"] == pytest.approx((found["domains"]["a"]["mean"] + found["domains"]["b"]["mean"]) / 2)
    # the interval holds the point estimate, the verdict is the rule's, and a rerun gives the same figures
    assert w["low"] <= w["mean"] <= w["high"]
    assert w["verdict"] == verdict(w["low"], w["high"], 3, level_margin=2.0, min_seeds=3)
    assert domain_readout(units, ["ties"], READOUT) == {"ties": found}


def test_the_worst_domains_interval_recomputes_the_maximum_per_resample_with_paired_facts():
    from spunge_merge.evaluate.stats import worst_stratum_bootstrap

    # Spunge: a = (100, 0), b = (50, 50); baseline 0 everywhere. Point: max(50, 50) − 0 = 50. A resample of a's facts
    # gives 0, 50 or 100 (¼, ½, ¼), so the recomputed maximum is 50 (¾) or 100 (¼): the interval is exactly [50, 100]
    # (a maximum fixed on domain a would reach down to 0).
    one = [{"a": ([100.0, 0.0], [0.0, 0.0]), "b": ([50.0, 50.0], [0.0, 0.0])}]
    found = worst_stratum_bootstrap(one, n=2000, seed=0)
    assert (found["mean"], found["low"], found["high"]) == (50.0, 50.0, 100.0)
    # the same indices for both arms: identical arms differ by 0 in every resample (independent draws would not)
    same = [{"a": ([100.0, 0.0, 100.0], [100.0, 0.0, 100.0])}, {"a": ([0.0, 100.0], [0.0, 100.0])}]
    assert worst_stratum_bootstrap(same, n=500, seed=1) == {
        "mean": 0.0, "low": 0.0, "high": 0.0, "n_seeds": 2, "resamples": 500, "confidence": 0.95, "seed": 1}
    # units resampled: two units whose differences are 10 and 30 with no fact noise give a mean 20 inside [10, 30]
    flat = [{"a": ([10.0], [0.0])}, {"a": ([30.0], [0.0])}]
    spread = worst_stratum_bootstrap(flat, n=2000, seed=0)
    assert spread["mean"] == 20.0 and spread["low"] == 10.0 and spread["high"] == 30.0
    assert worst_stratum_bootstrap(flat, n=2000, seed=0) == spread
    with pytest.raises(ValueError, match="same non-empty items"):
        worst_stratum_bootstrap([{"a": ([1.0, 2.0], [1.0])}])


def test_the_summary_has_a_table_per_row_with_the_worst_and_each_domain(tmp_path):
    import frontiers
    from frontiers_readout import render, write_outputs

    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"domain": d, "part": "train"}) + "\n" for d in ("a", "a", "b")), encoding="utf-8")
    units = [_domains_unit(s)[0] for s in (0, 1, 2)]
    for unit in units:
        unit["facts"] = str(facts)
    settings = frontiers.Settings(seeds=[0, 1, 2], merges=["ties"], lambdas=[1.0, 2.0], baseline_lambdas=[1.0, 2.0])
    plan = {"readout": READOUT, "merges": {"ties": {"method": "ties"}}, "fallback_facts": None}
    summary = write_outputs({("knowledge", "rmu", "tiny"): units}, plan, settings, tmp_path / "out", plan_markdown="# Frontier plan",
                            seconds=1.0, quick=False)
    row = summary["rows"][0]
    stored = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))["rows"][0]["domains"]
    assert stored == row["domains"] and set(stored["ties"]["domains"]) == {"a", "b"}
    text = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert text == render(summary)
    w = row["domains"]["ties"]["worst"]
    worst_line = next(line for line in text.splitlines() if line.startswith("| ties | **worst domain**"))
    assert "(baseline: b 1, tie 2; spunge: a 3)" in worst_line
    assert f"| {w['spunge']:.1f} | {w['baseline']:.1f} | {w['mean']:+.1f} [{w['low']:+.1f}, {w['high']:+.1f}] |" in worst_line
    assert any(line.startswith("| ties | forget avg |") for line in text.splitlines())
    assert any(line.startswith("| ties | a |") for line in text.splitlines())
