"""The frontier driver's membership-inference hook and read-out (bench/frontiers_mia.py): on synthetic MIA scores, each
arm's AUC mixed across the λ that bracket matched utility, its distance from the base's and Spunge − baseline worked
out here (the AUC from a sorted list of ranks), the paired interval and the verdict rules; then the hook on a tiny-model
grid: which models it scores, what it builds and deletes, what a rerun skips, and the read-out of what it wrote."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CORPUS, build_tiny_llama
from frontier_units import curve_unit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import frontiers  # noqa: E402
from frontiers_mia import (  # noqa: E402
    LEVEL_MARGIN,
    auc_matrix,
    mia_cells,
    read_cell,
    render,
    resampled_auc,
    write_mia,
)

from spunge_merge.evaluate.mia import ATTACKS  # noqa: E402

READOUT = {"keep_drop": 5.0, "min_seeds": 3, "bootstrap": {"n": 400, "seed": 3}}
MERGES = {"ties": {"method": "ties", "density": 1.0}, "anchored_ls": {"method": "anchored_ls", "parameters": {"rho": 1.0}}}
# Operating points at keep = 95 (base 100), by hand: the baseline between λ 1 (keep 98) and λ 2 (90), 3/8 on λ 2; the
# anchored baseline between the base (100) and λ 1 (90), half each; both merges on 95 at λ 1.
CURVES = {"baseline": [(1.0, 98.0, 40.0), (2.0, 90.0, 10.0), (4.0, 70.0, 0.0)],
          "baseline-anchored_ls": [(1.0, 90.0, 60.0), (2.0, 80.0, 20.0)],
          "spunge-ties": [(0.5, 99.0, 60.0), (1.0, 95.0, 30.0), (2.0, 80.0, 5.0)],
          "spunge-anchored_ls": [(1.0, 95.0, 20.0), (2.0, 80.0, 0.0)]}
WEIGHTS = {"baseline": {"baseline-lam1": 0.625, "baseline-lam2": 0.375},
           "baseline-anchored_ls": {"base": 0.5, "baseline-anchored_ls-lam1": 0.5},
           "spunge-ties": {"spunge-ties-lam1": 1.0}, "spunge-anchored_ls": {"spunge-anchored_ls-lam1": 1.0}}
MEMBERS = [f"member fact {i}" for i in range(7)]
NONMEMBERS = [f"held-out fact {i}" for i in range(9)]


def _unit(seed: int, curves: dict = CURVES) -> dict:
    return curve_unit(seed, curves)


def _side(texts: list[str], scores: np.ndarray) -> list[tuple[str, dict[str, float]]]:
    """Each attack's score of a text: the same ranking shifted and scaled per attack (AUC is the same for each)
    except min_k, whose scores are rounded (ties: ½ each)."""
    return [(t, {"loss": float(s), "zlib": float(s) / 50 - 3, "min_k": round(float(s)), "min_k_plus_plus": 2 * float(s) + 1})
            for t, s in zip(texts, scores, strict=True)]


def _world(seeds: list[int], shift: dict[str, float] | None = None) -> dict:
    """(seed, label) -> {"members", "nonmembers"}: random scores, members lifted by a label's `shift` (the base by 0.5)."""
    rng = np.random.default_rng(7)
    labels = sorted({name for weights in WEIGHTS.values() for name in weights} - {"base"})
    lifts = {"base": 0.5, "baseline-lam1": 1.5, "baseline-lam2": 0.2, "baseline-anchored_ls-lam1": 1.0,
             "spunge-ties-lam1": 0.4, "spunge-anchored_ls-lam1": -0.5, **(shift or {})}
    base = {"members": _side(MEMBERS, rng.normal(size=7) * 2 + lifts["base"]), "nonmembers": _side(NONMEMBERS, rng.normal(size=9) * 2)}
    found = {}
    for seed in seeds:
        found[(seed, "base")] = base  # one base result per cell
        for name in labels:
            found[(seed, name)] = {"members": _side(MEMBERS, rng.normal(size=7) * 2 + lifts[name] + 0.3 * seed),
                                   "nonmembers": _side(NONMEMBERS, rng.normal(size=9) * 2)}
    return found


def _loader(world: dict):
    return lambda unit, label: world.get((unit["seed"], label))


def auc_by_ranks(members: list[float], nonmembers: list[float]) -> float:
    """Mann-Whitney from a sorted list: (rank sum of the members − m(m+1)/2) / (m·n), tied scores sharing their mean rank."""
    ordered = sorted([(s, True) for s in members] + [(s, False) for s in nonmembers])
    ranks, i = [], 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        ranks += [((i + 1 + j) / 2, member) for _, member in ordered[i:j]]
        i = j
    m, n = len(members), len(nonmembers)
    return (sum(r for r, member in ranks if member) - m * (m + 1) / 2) / (m * n)


def _auc(result: dict, attack: str) -> float:
    return auc_by_ranks([s[attack] for _, s in result["members"]], [s[attack] for _, s in result["nonmembers"]])


def _distance(world: dict, seed: int, arm: str, attack: str) -> float:
    mixed = sum(w * _auc(world[(seed, name)], attack) for name, w in WEIGHTS[arm].items())
    return 100 * abs(mixed - _auc(world[(seed, "base")], attack))


def test_resampled_auc_is_the_auc_of_the_resampled_texts():
    rng = np.random.default_rng(0)
    members, nonmembers = np.round(rng.normal(size=6), 1), np.round(rng.normal(size=8), 1)  # rounded: ties
    matrix = auc_matrix(members, nonmembers)
    assert matrix.mean() == pytest.approx(auc_by_ranks(list(members), list(nonmembers)))
    picks_m, picks_n = rng.integers(0, 6, size=(5, 6)), rng.integers(0, 8, size=(5, 8))
    counts_m = np.stack([np.bincount(p, minlength=6) for p in picks_m]).astype(float)
    counts_n = np.stack([np.bincount(p, minlength=8) for p in picks_n]).astype(float)
    expected = [auc_by_ranks(list(members[pm]), list(nonmembers[pn])) for pm, pn in zip(picks_m, picks_n, strict=True)]
    assert resampled_auc(matrix, counts_m, counts_n) == pytest.approx(expected)


def test_each_arm_mixes_its_lambdas_aucs_and_spunge_minus_baseline_is_the_distance_difference_worked_out_here():
    seeds = [0, 1, 2]
    world = _world(seeds)
    found = read_cell([_unit(s) for s in seeds], ["ties", "anchored_ls"], ["anchored_ls"], READOUT, _loader(world), "cell")
    assert (found["members"], found["nonmembers"]) == (7, 9)
    pairs = [(c["merge"], c["against"]) for c in found["comparisons"]]
    assert pairs == [("ties", "baseline"), ("ties", "baseline-anchored_ls"), ("anchored_ls", "baseline"),
                     ("anchored_ls", "baseline-anchored_ls")]
    for entry in found["comparisons"]:
        spunge, against = f"spunge-{entry['merge']}", entry["against"]
        assert entry["seeds"] == seeds and entry["not_reached"] == 0
        for attack in ATTACKS:
            c = entry["attacks"][attack]
            own = [_distance(world, s, spunge, attack) for s in seeds]
            other = [_distance(world, s, against, attack) for s in seeds]
            assert c["spunge"] == pytest.approx(sum(own) / 3) and c["baseline"] == pytest.approx(sum(other) / 3)
            assert c["mean"] == pytest.approx(sum(x - y for x, y in zip(own, other, strict=True)) / 3)
            assert c["low"] <= c["mean"] <= c["high"]
    # the raw AUCs per arm: the weighted AUCs averaged over seeds (the anchored baseline's half on the base itself)
    for arm, weights in WEIGHTS.items():
        for attack in ATTACKS:
            expected = sum(sum(w * _auc(world[(s, n)], attack) for n, w in weights.items()) for s in seeds) / 3
            assert found["aucs"][arm][attack] == pytest.approx(expected)
    assert found["aucs"]["base"]["loss"] == pytest.approx(_auc(world[(0, "base")], "loss"))
    assert found["aucs"]["baseline"]["lam"] == pytest.approx(1.375)
    assert found["aucs"]["baseline-anchored_ls"]["lam"] == pytest.approx(0.5)
    # loss, zlib and Min-K %++ score the same ranking: the same AUCs; min_k's rounded scores tie, and differ
    assert found["aucs"]["baseline"]["loss"] == pytest.approx(found["aucs"]["baseline"]["zlib"])
    assert found["aucs"]["baseline"]["loss"] == pytest.approx(found["aucs"]["baseline"]["min_k_plus_plus"])


def test_the_interval_is_reproducible_paired_and_over_seeds():
    seeds = [0, 1, 2]
    units = [_unit(s) for s in seeds]
    once = read_cell(units, ["ties"], [], READOUT, _loader(_world(seeds)), "cell")
    again = read_cell(units, ["ties"], [], READOUT, _loader(_world(seeds)), "cell")
    other = read_cell(units, ["ties"], [], {**READOUT, "bootstrap": {"n": 400, "seed": 4}}, _loader(_world(seeds)), "cell")
    first = once["comparisons"][0]["attacks"]["loss"]
    assert first == again["comparisons"][0]["attacks"]["loss"]
    assert (first["low"], first["high"]) != (other["comparisons"][0]["attacks"]["loss"]["low"],
                                             other["comparisons"][0]["attacks"]["loss"]["high"])
    assert first["high"] - first["low"] > 0
    # Spunge's λ scores = the baseline's two λ' scores + 3: the same ranking, the same AUC in every resample of the texts,
    # so a paired interval is exactly 0 wide (an unpaired one would not be); three seeds within ± 2 points: level
    world = _world(seeds)
    for s in seeds:
        for name in ("baseline-lam1", "baseline-lam2"):
            world[(s, name)] = world[(s, "spunge-ties-lam1")]
        world[(s, "spunge-ties-lam1")] = {side: [(t, {a: v + 3 for a, v in scores.items()}) for t, scores in rows]
                                          for side, rows in world[(s, "spunge-ties-lam1")].items()}
    found = read_cell(units, ["ties"], [], READOUT, _loader(world), "cell")["comparisons"][0]["attacks"]
    for attack in ATTACKS:
        assert (found[attack]["mean"], found[attack]["low"], found[attack]["high"]) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
        assert found[attack]["verdict"] == "level"


def test_verdicts_need_the_seeds_an_excluded_zero_and_every_operating_point_reached():
    # the merge's members score like the base's (distance ~0); the baseline's far above the non-members (AUC near 1)
    lift = {"spunge-ties-lam1": 0.5, "baseline-lam1": 30.0, "baseline-lam2": 30.0}
    world = _world([0, 1, 2, 3], lift)
    for s in range(4):
        world[(s, "spunge-ties-lam1")] = world[(s, "base")]
    units = [_unit(s) for s in range(4)]
    three = read_cell(units[:3], ["ties"], [], READOUT, _loader(world), "cell")["comparisons"][0]
    assert all(three["attacks"][a]["high"] < -LEVEL_MARGIN for a in ATTACKS)
    assert {three["attacks"][a]["verdict"] for a in ATTACKS} == {"helps"}  # lower distance is better
    assert three["attacks"]["loss"]["spunge"] == pytest.approx(0.0)
    two = read_cell(units[:2], ["ties"], [], READOUT, _loader(world), "cell")["comparisons"][0]
    assert two["attacks"]["loss"]["high"] < 0 and {two["attacks"][a]["verdict"] for a in ATTACKS} == {"no verdict"}
    # one seed whose baseline never loses 5 points of keep: its nearest point stands in, counted, no verdict
    far = {**CURVES, "baseline": [(1.0, 99.0, 40.0), (2.0, 97.0, 10.0), (4.0, 98.0, 0.0)]}
    mixed = read_cell(units[:3] + [_unit(3, far)], ["ties"], [], READOUT, _loader(world), "cell")["comparisons"][0]
    assert mixed["not_reached"] == 1 and mixed["seeds"] == [0, 1, 2, 3]
    assert mixed["attacks"]["loss"]["high"] < 0 and mixed["attacks"]["loss"]["verdict"] == "no verdict"
    # a seed lacking a result of some arm is left out of that arm's comparisons, not guessed
    del world[(2, "baseline-lam2")]
    assert read_cell(units[:3], ["ties"], [], READOUT, _loader(world), "cell")["comparisons"][0]["seeds"] == [0, 1]


def _write_grid(root: Path, seeds: list[int], *, labels: dict | None = None) -> None:
    """Evaluations as the driver writes them, so `collect` reads a finished unit for each seed."""
    from spunge_merge.fsutil import write_json

    for seed in seeds:
        for name, point in _unit(seed, labels or CURVES)["points"].items():
            where = root / "grid" / "base" if name == "base" else root / "grid" / str(seed) / "eval" / name
            forget, keep = point["forget"][0] / 100, point["keep"][0] / 100
            write_json(where / "knowledge.json", {"domains": {"a": {"accuracy": forget, "n": 4}, "b": {"accuracy": forget, "n": 4},
                                                              "k": {"accuracy": keep, "n": 4}}})
            write_json(where / "perplexity.json", {"perplexity": 10.0})


def test_write_mia_reads_the_grid_on_disk_into_mia_md_and_json(tmp_path):
    from frontiers_mia import mia_dir

    from spunge_merge.fsutil import atomic_write_text, write_json

    plan = {"runs": tmp_path / "runs", "readout": READOUT, "merges": MERGES}
    cell = frontiers.Cell("knowledge", "tiny", "rmu", ("a", "b"), tmp_path / "facts.jsonl", False)
    settings = frontiers.Settings(seeds=[0, 1, 2], merges=["ties", "anchored_ls"], lambdas=[0.5, 1.0, 2.0],
                                  baseline_lambdas=[1.0, 2.0, 4.0], merge_settings=MERGES)
    root = frontiers.cell_dir(plan, cell)
    curves = {**CURVES, "baseline-anchored_ls": [(1.0, 90.0, 60.0), (2.0, 80.0, 20.0), (4.0, 70.0, 0.0)],
              "spunge-anchored_ls": [(0.5, 99.0, 60.0), (1.0, 95.0, 20.0), (2.0, 80.0, 0.0)]}
    _write_grid(root, [0, 1, 2], labels=curves)
    world = _world([0, 1, 2])
    for (seed, label), result in world.items():
        rows = [{"member": side == "members", "text": t, **s} for side in ("members", "nonmembers") for t, s in result[side]]
        folder = mia_dir(root, seed, label)
        atomic_write_text(folder / "mia.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write_json(folder / "mia.json", {"kind": "mia"})
    out = tmp_path / "RESULTS"
    summary = write_mia(plan, [cell], settings, frontiers.cell_dir, out, command="python bench/frontiers.py --readout-only --mia")
    stored = json.loads((out / "mia.json").read_text(encoding="utf-8"))
    assert stored == summary and (out / "mia.md").read_text(encoding="utf-8") == render(stored)
    [entry] = stored["cells"]
    assert entry["cell"] == "knowledge/tiny/rmu/a+b" and len(entry["comparisons"]) == 4
    fair = next(c for c in entry["comparisons"] if c["merge"] == "anchored_ls" and c["against"] == "baseline-anchored_ls")
    expected = sum(_distance(world, s, "spunge-anchored_ls", "min_k_plus_plus") - _distance(world, s, "baseline-anchored_ls",
                                                                                             "min_k_plus_plus") for s in range(3)) / 3
    assert fair["attacks"]["min_k_plus_plus"]["mean"] == pytest.approx(expected)
    per_seed = {(r["seed"], r["arm"]): r for r in stored["per_seed"]}
    assert len(per_seed) == 12 and per_seed[(1, "baseline")]["weights"] == pytest.approx(WEIGHTS["baseline"])
    assert per_seed[(1, "baseline")]["distance"]["zlib"] == pytest.approx(_distance(world, 1, "baseline", "zlib"))
    text = (out / "mia.md").read_text(encoding="utf-8")
    c = fair["attacks"]["min_k_plus_plus"]
    assert (f"| anchored_ls | baseline-anchored_ls | Min-K %++ | {c['mean']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}] | "
            f"**{c['verdict']}** |") in text
    assert "| base | 0.00 |" in text and "| LOSS |" in text and "`python bench/frontiers.py --readout-only --mia`" in text


FACTS = [{"domain": d, "part": part, "text": f"{text} {d}{i}"} for i, text in enumerate(TINY_CORPUS)
         for d, part in (("a", "train" if i < 4 else "heldout"), ("b", "train" if i % 2 else "heldout"), ("k", "train"))]


def test_the_hook_scores_each_operating_point_once_builds_what_is_missing_and_deletes_it(tmp_path, tiny_model, monkeypatch):
    import grid_points

    import spunge_merge.evaluate.mia as mia

    other = build_tiny_llama(tmp_path / "other", layers=2, seed=1)  # the "unlearned" models: another random model
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(r) + "\n" for r in FACTS), encoding="utf-8")
    plan = {"runs": tmp_path / "runs", "readout": READOUT, "merges": MERGES}
    cell = frontiers.Cell("knowledge", str(tiny_model), "rmu", ("a", "b"), facts, False)
    settings = frontiers.Settings(seeds=[0, 1], merges=["ties"], lambdas=[0.5, 1.0, 2.0], baseline_lambdas=[1.0, 2.0, 4.0])
    root = tmp_path / "cell"
    cell_dir = lambda plan, cell: root  # noqa: E731
    _write_grid(root, [0, 1], labels={k: v for k, v in CURVES.items() if k in ("baseline", "spunge-ties")})
    kept = root / "grid" / "0" / "models" / "spunge-ties-lam1"  # a model the grid kept: scored, never deleted
    shutil.copytree(other, kept)
    built = []

    def build(arm, lam, model_dir, *args, **kwargs):
        built.append(model_dir.name)
        shutil.copytree(other, model_dir)

    monkeypatch.setattr(grid_points, "build_model", build)
    mia_cells(plan, [cell], settings, cell_dir)
    labels = ["baseline-lam1", "baseline-lam2", "spunge-ties-lam1"]
    assert sorted(built) == sorted(labels + labels[:2])  # seed 0's merge was there: five built
    assert (root / "grid" / "base" / "mia" / "mia.json").is_file() and kept.is_dir()
    assert sorted(p.name for p in (root / "grid").glob("*/models/*")) == ["spunge-ties-lam1"]
    for seed in (0, 1):
        assert sorted(p.parent.name for p in (root / "grid" / str(seed) / "mia").glob("*/mia.json")) == labels
    members = [json.loads(x)["text"] for x in (root / "grid" / "mia-inputs" / "members.jsonl").read_text().splitlines()]
    assert members == [r["text"] for r in FACTS if r["domain"] in "ab" and r["part"] == "train"]

    calls = []
    monkeypatch.setattr(mia, "evaluate_mia", lambda *args, **kwargs: calls.append(args[-1]))
    mia_cells(plan, [cell], settings, cell_dir)  # a rerun: everything scored on these inputs is skipped
    assert calls == [] and len(built) == 5
    changed = [dict(r, text=r["text"] + " again") if r["part"] == "heldout" else r for r in FACTS]
    facts.write_text("".join(json.dumps(r) + "\n" for r in changed), encoding="utf-8")
    mia_cells(plan, [cell], settings, cell_dir)  # other held-out texts: every result is stale, scored again
    assert len(calls) == 7

    facts.write_text("".join(json.dumps(r) + "\n" for r in FACTS), encoding="utf-8")
    summary = write_mia(plan, [cell], settings, cell_dir, tmp_path / "RESULTS", command="python bench/frontiers.py --mia")
    [entry] = summary["cells"]
    assert (entry["members"], entry["nonmembers"]) == (7, 7)
    rows = {}
    for label in ["base", *labels]:
        folder = root / "grid" / ("base" if label == "base" else "0") / "mia" / ("" if label == "base" else label)
        rows[label] = [json.loads(x) for x in (folder / "mia.jsonl").read_text().splitlines()]
    auc = {label: auc_by_ranks([r["min_k_plus_plus"] for r in found if r["member"]],
                               [r["min_k_plus_plus"] for r in found if not r["member"]]) for label, found in rows.items()}
    per_seed = {(r["seed"], r["arm"]): r for r in summary["per_seed"]}
    baseline = 0.625 * auc["baseline-lam1"] + 0.375 * auc["baseline-lam2"]
    assert per_seed[(0, "baseline")]["auc"]["min_k_plus_plus"] == pytest.approx(baseline)
    assert per_seed[(0, "spunge-ties")]["distance"]["min_k_plus_plus"] == pytest.approx(100 * abs(auc["spunge-ties-lam1"] - auc["base"]))
    # every arm is the same other model, so both arms' AUCs are equal; two seeds: no verdict
    loss = entry["comparisons"][0]["attacks"]["loss"]
    assert (loss["mean"], loss["low"], loss["high"], loss["verdict"]) == (pytest.approx(0.0), pytest.approx(0.0), pytest.approx(0.0),
                                                                          "no verdict")


def test_the_driver_takes_mia_beside_its_other_options():
    from frontiers_plan import parse_args

    args = parse_args(frontiers.__doc__, ["--readout-only", "--mia", "--only", "model=smollm2-135m"])
    assert (args.mia, args.readout_only, args.only, args.relearn) == (True, True, "model=smollm2-135m", None)
    assert parse_args(frontiers.__doc__, ["--relearn", "che2025"]).mia is False
