"""bench/relearn_edits.py: the figures it reads from one relearn result, against values worked out by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from relearn_edits import attack_record, render  # noqa: E402


def _result():
    def point(step, a, b, loss):
        return {"step": step, "loss": loss, "domains": {"capitals": {"accuracy": a}, "city_countries": {"accuracy": b},
                                                          "languages": {"accuracy": 1.0}}}

    return {"curve": [point(0, 0.0, 0.25, None), point(8, 0.1, 0.25, 6.5), point(30, 0.6, 0.5, 2.25)],
            "domains": {"capitals": {"recovery": 0.6}, "city_countries": {"recovery": 1 / 3}}}


def test_the_record_reads_first_and_last_steps_and_the_logged_losses():
    record = attack_record(_result(), ["capitals", "city_countries"])
    assert record["steps"] == 30
    assert (record["in_before"], record["in_after"]) == (0.0, 60.0)
    assert (record["cross_before"], record["cross_after"]) == (25.0, 50.0)
    assert record["in_recovery"] == 0.6 and record["cross_recovery"] == pytest.approx(1 / 3)
    # step 0 logs no loss: the first logged one is step 8's
    assert (record["loss_first"], record["loss_last"]) == (6.5, 2.25)


def test_the_table_names_each_model_and_shows_undefined_figures_as_a_dash():
    record = attack_record(_result(), ["capitals", "city_countries"])
    text = render({"method": "rmu", "model": "m", "pair": ["capitals", "city_countries"], "attack": "in-subset-k10",
                   "preset": "lucki2024", "rows": [{"seed": 0, "label": "edit-capitals-lam1", "record": record}]})
    assert "| 0 | edit-capitals-lam1 | 0.0 | 60.0 | 60 % | 25.0 | 50.0 | 6.50 | 2.25 |" in text
    record.update(in_recovery=None, loss_first=None)  # the model forgot nothing of the domain; no loss was logged
    text = render({"method": "rmu", "model": "m", "pair": ["capitals", "city_countries"], "attack": "in-subset-k10",
                   "preset": "lucki2024", "rows": [{"seed": 1, "label": "baseline-lam1", "record": record}]})
    assert "| 1 | baseline-lam1 | 0.0 | 60.0 | – | 25.0 | 50.0 | – | 2.25 |" in text


def test_the_baseline_is_not_attacked_again_where_the_hook_attacked_it_at_a_matched_point(tmp_path, monkeypatch):
    """The baseline at λ 1 is the same model the frontier hook attacked when λ 1 is one of its matched points: its
    result is read from the grid, and nothing is built or trained (the edit's own result is already there)."""
    import json

    from relearn_edits import attack_alone

    import spunge_merge.evaluate.relearn as relearn

    def refuse(*args, **kwargs):
        raise AssertionError("attacked again")

    monkeypatch.setattr(relearn, "evaluate_relearn", refuse)
    cell = tmp_path / "capitals--city_countries"
    result = _result()
    for folder in (cell / "grid" / "0" / "relearn" / "baseline-lam1" / "in-subset-k10",
                   cell / "alone" / "0" / "relearn" / "edit-capitals-lam1" / "in-subset-k10"):
        folder.mkdir(parents=True)
        (folder / "relearn.json").write_text(json.dumps(result), encoding="utf-8")
    found = attack_alone(cell, 0, 1.0, ["capitals", "city_countries"], base=None, method=None, attack="in-subset-k10",
                         spec={}, knowledge={})
    assert set(found) == {"edit-capitals-lam1", "baseline-lam1", "baseline-lam1 (matched point)"}
    assert found["baseline-lam1"] == found["baseline-lam1 (matched point)"] == result
    assert not (cell / "alone" / "0" / "relearn" / "baseline-lam1").exists()
