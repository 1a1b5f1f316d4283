"""Adaptive λ (`spunge_merge.evaluate.matched.refine_lambdas`): an arm's sweep refined by itself until its
matched-utility crossing is read within the read-out's limits, on synthetic curves (no model)."""

from __future__ import annotations

import pytest

from spunge_merge.evaluate.matched import interpolate_at_keep, next_lambdas, refine_lambdas


def _arm(keep, forget, ppl=lambda lam: 20.0):
    calls = []

    def evaluate(lam):
        calls.append(lam)
        return keep(lam), forget(lam), ppl(lam)

    return evaluate, calls


def _start(evaluate, lambdas):
    return [(0.0, 100.0, 100.0)] + [(lam, *evaluate(lam)[:2]) for lam in lambdas]


def test_a_forgetting_cliff_between_two_points_is_bisected_until_it_can_be_read():
    """forget falls 100 → 0 between λ 0 and 1 while keep falls 100 → 92: the read-out will not interpolate across it."""
    evaluate, calls = _arm(lambda lam: 100 - 8 * lam, lambda lam: max(0.0, 100 - 150 * lam))
    start = _start(evaluate, [1.0, 2.0])
    assert interpolate_at_keep(start, 95.0)["reached"] is False
    assert next_lambdas(start, 95.0) == [0.5]
    found = refine_lambdas(evaluate, start, 95.0, budget=4)
    # λ 0.5: keep 96, forget 25; the bracket (0.5, 1) is 25 points of forget apart: readable
    assert found["added"] == [0.5] and found["reached"] is True
    read = interpolate_at_keep(found["points"], 95.0)
    assert read["forget"] == pytest.approx(25 * (1 - (96 - 95) / (96 - 92)))
    assert calls == [1.0, 2.0, 0.5]


def test_a_sweep_that_never_loses_enough_keep_is_extended_by_doubling():
    evaluate, _ = _arm(lambda lam: 100 - lam, lambda lam: 100 / (1 + lam))
    found = refine_lambdas(evaluate, _start(evaluate, [1.0, 2.0]), 95.0, budget=4)
    # keep 96 at λ 4 (not yet), 92 at λ 8: crossing bracketed by (4, 8), forget 20 → 11.1
    assert found["added"] == [4.0, 8.0] and found["reached"] is True


def test_the_budget_bounds_the_extra_points_and_says_the_crossing_is_still_not_read():
    evaluate, calls = _arm(lambda lam: 100.0, lambda lam: 50.0)
    found = refine_lambdas(evaluate, _start(evaluate, [1.0, 2.0]), 95.0, budget=3)
    assert found["added"] == [4.0, 8.0, 16.0] and found["reached"] is False and len(calls) == 5


def test_a_point_whose_language_broke_is_not_used_and_the_sweep_is_not_extended_past_it():
    evaluate, _ = _arm(lambda lam: 100 - lam, lambda lam: 0.0, ppl=lambda lam: 1000.0 if lam > 3 else 20.0)
    found = refine_lambdas(evaluate, _start(evaluate, [1.0, 2.0]), 95.0, budget=5, base_ppl=20.0, margin_pct=50.0)
    assert found["added"] == [4.0] and found["reached"] is False
    assert [p[0] for p in found["points"]] == [0.0, 1.0, 2.0]


def test_a_broken_midpoint_is_not_tried_twice():
    evaluate, calls = _arm(lambda lam: 100 - 8 * lam, lambda lam: max(0.0, 100 - 150 * lam), ppl=lambda lam: 1e4 if lam == 0.5 else 20.0)
    found = refine_lambdas(evaluate, _start(evaluate, [1.0, 2.0]), 95.0, budget=5, base_ppl=20.0, margin_pct=50.0)
    assert found["added"] == [0.5] and found["reached"] is False and calls.count(0.5) == 1


def test_refinement_is_deterministic():
    runs = []
    for _ in range(2):
        evaluate, _ = _arm(lambda lam: 100 - 3 * lam ** 2, lambda lam: 100 * max(0.0, 1 - lam) ** 3)
        runs.append(refine_lambdas(evaluate, _start(evaluate, [2.0, 4.0]), 95.0, budget=6))
    assert runs[0] == runs[1] and runs[0]["reached"] is True


def test_the_frontier_driver_adds_each_arms_points_through_its_grid(tmp_path):
    """bench/frontiers.py's glue: the arms' curves read from evaluation folders, the new λ built through `build`."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import frontiers

    curves = {"baseline": (lambda lam: 100 - 8 * lam, lambda lam: max(0.0, 100 - 150 * lam)),
              "spunge-ties": (lambda lam: 100 - lam, lambda lam: 100 / (1 + lam))}

    def write(label: str, keep: float, forget: float) -> Path:
        folder = tmp_path / label
        folder.mkdir()
        domains = {"a": forget, "b": forget, "k": keep}
        (folder / "knowledge.json").write_text(json.dumps({"domains": {d: {"accuracy": v / 100, "n": 8} for d, v in domains.items()},
                                                           "excluded": {"count": 0}}))
        (folder / "perplexity.json").write_text(json.dumps({"perplexity": 20.0}))
        return folder

    built = []

    def build(arms):
        out = {"base": tmp_path / "base"}
        for arm, lam in arms:
            built.append((arm, lam))
            keep, forget = curves[arm]
            out[f"{arm}-lam{lam:g}"] = write(f"{arm}-lam{lam:g}", keep(lam), forget(lam))
        return out

    write("base", 100.0, 100.0)
    found = build([("baseline", 1.0), ("baseline", 2.0), ("spunge-ties", 1.0), ("spunge-ties", 2.0)])
    built.clear()
    cell = frontiers.Cell("knowledge", "tiny", "rmu", ("a", "b"), tmp_path / "facts.jsonl", False)
    plan = {"refine": {"extra_points": 4}, "readout": {"keep_drop": 5.0, "retain_ppl_margin_pct": 50.0}}
    added = frontiers.refine_seed(plan, cell, found, build)
    assert built == [("baseline", 0.5), ("spunge-ties", 4.0), ("spunge-ties", 8.0)]
    assert set(added) == {"baseline-lam0.5", "spunge-ties-lam4", "spunge-ties-lam8"}
    assert frontiers.refine_seed({**plan, "refine": {"extra_points": 0}}, cell, found, build) == {}


def test_a_crossing_below_a_broken_planned_point_is_bisected_under_it():
    """The planned λ 2 crosses the keep target but breaks the language (retain perplexity past the margin), so the
    read-out cannot use it: the crossing between λ 1 (keep above) and λ 2 is read by a point in between, not by
    doubling past the broken point."""
    evaluate, calls = _arm(lambda lam: 100 - 4 * lam ** 2, lambda lam: max(0.0, 100 - 100 * lam),
                           ppl=lambda lam: 20.0 if lam < 1.8 else 500.0)
    start = _start(evaluate, [0.5, 1.0])
    broken = [(2.0, *evaluate(2.0)[:2]), (4.0, *evaluate(4.0)[:2])]
    found = refine_lambdas(evaluate, start, 95.0, budget=3, base_ppl=20.0, margin_pct=50.0, broken=broken)
    # λ 1.5: keep 91, forget 0, perplexity within the margin: the crossing (keep 95) lies in (1, 1.5)
    assert found["added"] == [1.5] and found["reached"] is True
    assert calls[-1] == 1.5 and 2.0 not in [p[0] for p in found["points"]]


def test_a_broken_point_that_still_keeps_too_much_stops_the_refinement():
    evaluate, calls = _arm(lambda lam: 100 - lam, lambda lam: 0.0, ppl=lambda lam: 1000.0 if lam > 3 else 20.0)
    start = _start(evaluate, [1.0, 2.0])
    found = refine_lambdas(evaluate, start, 95.0, budget=5, base_ppl=20.0, margin_pct=50.0, broken=[(4.0, *evaluate(4.0)[:2])])
    assert found["added"] == [] and found["reached"] is False and calls == [1.0, 2.0, 4.0]
