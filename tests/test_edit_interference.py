"""bench/edit_interference.py's geometry of two edits against numbers worked out by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from edit_interference import geometry  # noqa: E402


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
