"""The frontier driver's relearning hook (bench/frontiers_relearn.py): which models it attacks (each arm's measured
λ on both sides of keep avg = base − 5, with the read-out's weights) and with which attacks."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from frontiers_relearn import WIKITEXT, attacks, operating_points  # noqa: E402


def _unit() -> dict:
    curves = {"baseline": [(1.0, 98.0, 40.0), (2.0, 90.0, 10.0), (4.0, 70.0, 0.0)],
              "spunge-ties": [(0.5, 99.0, 60.0), (1.0, 95.0, 30.0), (2.0, 80.0, 5.0)]}
    points = {"base": {"keep": (100.0, None), "forget": (100.0, None)}}
    for arm, curve in curves.items():
        for lam, keep, forget in curve:
            points[f"{arm}-lam{lam:g}"] = {"keep": (keep, None), "forget": (forget, None)}
    return {"pair": ["a", "b"], "seed": 0, "points": points}


def test_each_arm_is_attacked_at_the_lambdas_that_bracket_matched_utility():
    found = operating_points(_unit(), ["baseline", "spunge-ties"], {"keep_drop": 5.0})
    # baseline: keep 98 → 90 brackets 95, w = 3/8 on λ 2; the merge sits on 95 at λ 1
    assert found["baseline"] == pytest.approx({"baseline-lam1": 0.625, "baseline-lam2": 0.375})
    assert found["spunge-ties"] == {"spunge-ties-lam1": 1.0}


def test_attacks_are_in_subset_on_the_first_forgotten_domain_and_unrelated_wikitext():
    cell = SimpleNamespace(facts=Path("facts.jsonl"), pair=("capitals", "elements"))
    found = attacks(cell, "che2025")
    assert sorted(found) == ["in-subset-k10", "in-subset-k20", "in-subset-k5", "wikitext-k10"]
    assert found["in-subset-k5"] == {"data": "facts.jsonl", "where": ["part == train", "domain == capitals"], "k": 5,
                                     "preset": "che2025"}
    assert found["wikitext-k10"]["data"] == str(WIKITEXT)


def test_the_unrelated_attack_reads_the_shared_wikitext_rows(shared_data):
    # apart from the test above so that a clone without ../shared skips it, as every test on the shared data does
    assert WIKITEXT == shared_data / "retain" / "wikitext2_raw_test_rows.jsonl" and WIKITEXT.is_file()
