"""Data order and coverage: RMU and TVN shuffle with the run's seed, RMU cycles through the whole
retain set, the WMDP reference order (file order, paired by index) stays selectable and exact, and
spunge.json records the rows actually fed, counted here independently through a spy on tokenization."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spunge_merge.unlearn import lm_data
from spunge_merge.unlearn.rmu import Corpus, RMUConfig, make_plan, train_rmu
from spunge_merge.unlearn.rmu import session as rmu_session
from spunge_merge.unlearn.tvn import train_tvn

FAST = {"lr": 5e-3, "steering_coeff": 4.0, "alpha": 20.0, "batch_size": 4, "device": "cpu", "dtype": "float32"}
FORGET = [f"forget fact number {i} is about the quick brown fox" for i in range(10)]
RETAIN = [f"retain line {i}: the sun rises in the east and {'cats ' * (i % 3)}sleep" for i in range(37)]


def corpus(texts: list[str]) -> Corpus:
    return Corpus(subset=None, texts=list(texts))  # make_plan reads only the texts


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    return {"forget": write_jsonl(tmp_path / "forget.jsonl", FORGET), "retain": write_jsonl(tmp_path / "retain.jsonl", RETAIN)}


# ------------------------------------------------------------------------------------------------ the plan alone


def test_reference_order_is_the_scripts_index_pairing():
    other = [f"other {i}" for i in range(9)]
    config = RMUConfig(**FAST, data_order="reference", max_num_batches=100)
    plan = make_plan([corpus(FORGET), corpus(other)], [corpus(RETAIN)], config)
    # steps = min(max_num_batches, ceil(10/4)=3, ceil(9/4)=3, ceil(37/4)=10) = 3, as in the WMDP script
    assert plan.steps_per_epoch == 3
    steps = list(plan.schedule(2))
    expected = []
    for epoch in range(2):
        for idx in range(3):  # the script: topic idx % k, batch idx // k, retain batch idx // k, in file order
            topic, batch = idx % 2, idx // 2
            size = len(FORGET) if topic == 0 else len(other)
            rows = range(batch * 4, batch * 4 + 4)
            expected.append((epoch, topic, batch, tuple(r for r in rows if r < size), tuple(rows)))
    assert [(e, s.corpus, s.batch, s.forget_rows, s.retain_rows) for e, s in steps] == expected
    # Retain rows past the forget set's size are never read in this order: the defect the default fixes.
    assert max(r for _, s in steps for r in s.retain_rows) < 8


def test_steps_per_epoch_do_not_depend_on_the_order():
    """The baseline's budget matching counts steps as min(max_num_batches, forget batches, retain batches)."""
    for retain, max_batches, expected in ((RETAIN[:5], 150, 2), (RETAIN, 150, 3), (RETAIN, 2, 2)):
        for order in ("reference", "shuffled"):
            plan = make_plan([corpus(FORGET)], [corpus(retain)], RMUConfig(**FAST, data_order=order, max_num_batches=max_batches))
            assert plan.steps_per_epoch == expected
    plan = make_plan([corpus(FORGET)], [corpus(RETAIN[:5])], RMUConfig(**FAST))
    fed = [s.retain_rows for _, s in plan.schedule(3)]
    assert all(len(rows) == 4 for rows in fed) and {r for rows in fed for r in rows} == set(range(5))  # cycled


def test_shuffled_order_covers_every_retain_row_within_ceil_retain_over_forget_epochs():
    config = RMUConfig(**FAST, seed=3)
    plan = make_plan([corpus(FORGET)], [corpus(RETAIN)], config)
    epochs = math.ceil(len(RETAIN) / len(FORGET))
    steps = list(plan.schedule(epochs))
    assert len(steps) == plan.steps_per_epoch * epochs == 3 * 4
    for epoch in range(epochs):  # each epoch feeds every forget row once, in a new order
        rows = [r for e, s in steps if e == epoch for r in s.forget_rows]
        assert sorted(rows) == list(range(len(FORGET)))
    orders = [[r for e, s in steps if e == epoch for r in s.forget_rows] for epoch in range(epochs)]
    assert len({tuple(o) for o in orders}) > 1 and orders[0] != list(range(len(FORGET)))
    fed = [r for _, s in steps for r in s.retain_rows]
    assert set(fed) == set(range(len(RETAIN)))
    assert sorted(fed[:len(RETAIN)]) == list(range(len(RETAIN)))  # the first pass is one permutation of the whole set
    assert all(len(set(s.retain_rows)) == len(s.retain_rows) for _, s in steps)  # no row twice in a batch


def test_shuffled_order_depends_on_the_seed_only():
    def schedule(seed):
        plan = make_plan([corpus(FORGET)], [corpus(RETAIN)], RMUConfig(**FAST, seed=seed))
        return [(e, s.forget_rows, s.retain_rows) for e, s in plan.schedule(2)]

    assert schedule(1) == schedule(1)
    assert schedule(1) != schedule(2)


def test_tvn_epoch_orders_do_not_repeat_across_neighbouring_seeds():
    encoded = [[5, 6, 7]] * 16

    def order(seed, epoch):
        return [r for b in lm_data.batches(encoded, batch_size=4, pad_id=0, seed=lm_data.epoch_seed(seed, epoch)) for r in b.rows]

    assert sorted(order(42, 0)) == list(range(16))
    assert order(42, 1) != order(43, 0)  # seed + epoch made these equal
    assert order(42, 0) != order(42, 1) and order(42, 0) == order(42, 0)


# ------------------------------------------------------------------------------------------------ whole runs


def _spy_tokenize(monkeypatch) -> list[tuple[str, list[str]]]:
    fed: list[tuple[str, list[str]]] = []
    real = rmu_session._tokenize

    def spy(tokenizer, texts, max_length, device, key):
        fed.append((key[0], list(texts)))
        return real(tokenizer, texts, max_length, device, key)

    monkeypatch.setattr(rmu_session, "_tokenize", spy)  # where the run looks it up
    return fed


def test_rmu_run_uses_the_whole_retain_set_and_records_it(tiny_model, data, tmp_path, monkeypatch):
    fed = _spy_tokenize(monkeypatch)
    epochs = math.ceil(len(RETAIN) / len(FORGET))
    outcome, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run",
                         RMUConfig(**FAST, epochs=epochs), progress=False)
    retain_fed = {t for role, texts in fed if role == "retain" for t in texts}
    forget_fed = {t for role, texts in fed if role == "forget" for t in texts}
    assert retain_fed == set(RETAIN) and forget_fed == set(FORGET)
    record = json.loads((outcome.path / "spunge.json").read_text())
    assert record["data"]["order"] == "shuffled"
    (forget,), (retain,) = record["data"]["forget"], record["data"]["retain"]
    assert (forget["rows_available"], forget["rows_used"]) == (len(FORGET), len(forget_fed))
    assert (retain["rows_available"], retain["rows_used"]) == (len(RETAIN), len(retain_fed))
    assert record["result"]["steps_per_epoch"] == math.ceil(len(FORGET) / 4)


def test_rmu_reference_order_uses_only_the_top_of_the_retain_file(tiny_model, data, tmp_path, monkeypatch):
    fed = _spy_tokenize(monkeypatch)
    outcome, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / "run",
                         RMUConfig(**FAST, epochs=4, data_order="reference"), progress=False)
    retain_fed = {t for role, texts in fed if role == "retain" for t in texts}
    assert retain_fed == set(RETAIN[:12])  # 3 steps of 4 rows, the same ones every epoch
    record = json.loads((outcome.path / "spunge.json").read_text())
    assert record["data"]["retain"][0]["rows_used"] == 12 and record["data"]["order"] == "reference"
    history = record["result"]["history"]
    assert [(h["epoch"], h["batch"]) for h in history] == [(e, b) for e in range(1, 5) for b in range(3)]


def test_rmu_same_seed_is_bit_identical_and_order_changes_the_delta(tiny_model, data, tmp_path):
    def delta(name, **changes):
        outcome, = train_rmu(str(tiny_model), [data["forget"]], data["retain"], tmp_path / name,
                             RMUConfig(**(FAST | {"epochs": 2} | changes)), progress=False)
        return load_file(outcome.path / "delta.safetensors")

    first, again = delta("a", seed=5), delta("b", seed=5)
    assert all(torch.equal(first[k], again[k]) for k in first)
    other_seed = delta("c", seed=6)
    assert any(not torch.equal(first[k], other_seed[k]) for k in first)
    # Same seed, hence the same control vector: only the data order differs.
    reference = delta("d", seed=5, data_order="reference")
    assert any((first[k] - reference[k]).abs().max() > 1e-6 for k in first)


def test_tvn_records_the_rows_fed_to_optimizer_steps(tiny_model, data, tmp_path):
    full, = train_tvn(str(tiny_model), data["retain"], tmp_path / "full",
                      {"lr": 1e-3, "batch_size": 4, "epochs": 1, "eval_samples": 0, "device": "cpu"}, progress=False)
    record = json.loads((full.path / "spunge.json").read_text())
    assert (record["data"]["rows_available"], record["data"]["rows_used"]) == (len(RETAIN), len(RETAIN))
    cut, = train_tvn(str(tiny_model), data["retain"], tmp_path / "cut",
                     {"lr": 1e-3, "batch_size": 4, "max_steps": 2, "eval_samples": 0, "device": "cpu"}, progress=False)
    assert json.loads((cut.path / "spunge.json").read_text())["data"]["rows_used"] == 8


def test_row_cycle_uses_every_row_and_continues_across_permutations():
    cycle = lm_data.RowCycle(10, seed=lm_data.stream_seed(0, "retain"))
    drawn = [cycle.take(4) for _ in range(5)]  # 20 rows: two permutations, batches straddling them
    flat = [r for rows in drawn for r in rows]
    assert all(len(set(rows)) == 4 for rows in drawn)
    assert sorted(flat[:10]) == list(range(10)) and set(flat[10:]) == set(range(10))
    again = lm_data.RowCycle(10, seed=lm_data.stream_seed(0, "retain"))
    assert [again.take(4) for _ in range(5)] == drawn
    encoded = [[i + 3, 7] for i in range(6)]
    stream = lm_data.cycled_batches(encoded, batch_size=4, pad_id=0, seed=5)
    first, second = next(stream), next(stream)
    assert first.input_ids[:, 0].tolist() == [encoded[r][0] for r in first.rows]
    assert set(first.rows) | set(second.rows) == set(range(6))
