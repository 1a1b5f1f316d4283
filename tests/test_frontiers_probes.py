"""The frontier driver's probes hook and read-out (bench/frontiers_probes.py): on synthetic per-fact verdicts, each arm's
forget avg under a probe mixed across the λ that bracket matched utility and Spunge − baseline as a per-fact paired
difference, worked out here; the interval and the verdict rules; the completion figure as the frontier's own matched
forget avg; then the hook on a tiny-model grid: the prompts it asks (the few-shot context from kept domains only), what it
builds, deletes and skips on a rerun."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import build_tiny_llama
from frontier_units import curve_unit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import frontiers  # noqa: E402
from frontiers_probes import FIGURES, probe_dir, probes_cells, read_cell, render, write_probes  # noqa: E402

from spunge_merge.evaluate.stats import hierarchical_bootstrap  # noqa: E402

READOUT = {"keep_drop": 5.0, "min_seeds": 3, "level_margin": 2.0, "bootstrap": {"n": 400, "seed": 3}}
MERGES = {"ties": {"method": "ties", "density": 1.0}, "anchored_ls": {"method": "anchored_ls", "parameters": {"rho": 1.0}}}
# Operating points at keep = 95 (base 100), by hand: the baseline between λ 1 (keep 98) and λ 2 (90), 3/8 on λ 2; the
# anchored baseline between the base (100) and λ 1 (90), half each; both merges on 95 at λ 1.
CURVES = {"baseline": [(1.0, 98.0, 40.0), (2.0, 90.0, 10.0), (4.0, 70.0, 0.0)],
          "baseline-anchored_ls": [(1.0, 90.0, 60.0), (2.0, 80.0, 20.0), (4.0, 70.0, 0.0)],
          "spunge-ties": [(0.5, 99.0, 60.0), (1.0, 95.0, 30.0), (2.0, 80.0, 5.0)],
          "spunge-anchored_ls": [(0.5, 99.0, 60.0), (1.0, 95.0, 20.0), (2.0, 80.0, 0.0)]}
WEIGHTS = {"baseline": {"baseline-lam1": 0.625, "baseline-lam2": 0.375},
           "baseline-anchored_ls": {"base": 0.5, "baseline-anchored_ls-lam1": 0.5},
           "spunge-ties": {"spunge-ties-lam1": 1.0}, "spunge-anchored_ls": {"spunge-anchored_ls-lam1": 1.0}}
FACTS = {"a": 9, "b": 6}  # held-out facts per forgotten domain in the synthetic results


def _unit(seed: int, curves: dict = CURVES) -> dict:
    return curve_unit(seed, curves)


def _world(seeds: list[int]) -> dict:
    """(seed, label, figure) -> {domain: verdicts}: random 0/1 per fact at a rate of each label's own (one base per cell)."""
    rng = np.random.default_rng(11)
    labels = sorted({n for weights in WEIGHTS.values() for n in weights} - {"base"})
    base = {f: {d: (rng.random(n) < 0.9).astype(int).tolist() for d, n in FACTS.items()} for f in FIGURES}
    found = {}
    for seed in seeds:
        for f in FIGURES:
            found[(seed, "base", f)] = base[f]
            for i, name in enumerate(labels):
                rate = 0.1 + 0.15 * i + 0.05 * seed + 0.05 * FIGURES.index(f)
                found[(seed, name, f)] = {d: (rng.random(n) < rate).astype(int).tolist() for d, n in FACTS.items()}
    return found


def _loader(world: dict):
    return lambda unit, label, figure: world.get((unit["seed"], label, figure))


def _mixed(world: dict, seed: int, arm: str, figure: str) -> dict[str, list[float]]:
    """Each fact's verdict mixed with the arm's weights, × 100, worked out fact by fact."""
    return {d: [100 * sum(w * world[(seed, name, figure)][d][i] for name, w in WEIGHTS[arm].items()) for i in range(n)]
            for d, n in FACTS.items()}


def _forget_avg(world: dict, seed: int, arm: str, figure: str) -> float:
    mixed = _mixed(world, seed, arm, figure)
    return sum(sum(v) / len(v) for v in mixed.values()) / len(mixed)


def test_each_arm_mixes_its_lambdas_verdicts_and_spunge_minus_baseline_is_the_per_fact_paired_difference():
    seeds = [0, 1, 2]
    world = _world(seeds)
    found = read_cell([_unit(s) for s in seeds], ["ties", "anchored_ls"], ["anchored_ls"], READOUT, _loader(world))
    rows = [(c["merge"], c["against"], c["figure"]) for c in found["comparisons"]]
    assert rows == [(m, a, f) for m in ("ties", "anchored_ls") for a in ("baseline", "baseline-anchored_ls") for f in FIGURES]
    assert found["facts"] == {f: FACTS for f in FIGURES}
    for c in found["comparisons"]:
        spunge, against, figure = f"spunge-{c['merge']}", c["against"], c["figure"]
        own = [_forget_avg(world, s, spunge, figure) for s in seeds]
        other = [_forget_avg(world, s, against, figure) for s in seeds]
        assert c["spunge"] == pytest.approx(sum(own) / 3) and c["baseline"] == pytest.approx(sum(other) / 3)
        assert c["mean"] == pytest.approx(sum(x - y for x, y in zip(own, other, strict=True)) / 3)
        assert c["base"] == pytest.approx(100 * sum(sum(v) / len(v) for v in world[(0, "base", figure)].values()) / 2)
        # the interval is the bootstrap of the per-fact paired differences (each domain a stratum), not of the values
        diffs = [{d: [x - y for x, y in zip(_mixed(world, s, spunge, figure)[d], _mixed(world, s, against, figure)[d], strict=True)]
                  for d in FACTS} for s in seeds]
        expected = hierarchical_bootstrap(diffs, n=400, seed=3)
        assert (c["low"], c["high"]) == pytest.approx((expected["low"], expected["high"]))
        assert c["low"] <= c["mean"] <= c["high"] and c["high"] > c["low"]
        assert c["seeds"] == seeds and c["not_reached"] == 0
    for arm in WEIGHTS:
        for figure in FIGURES:
            assert found["arms"][arm][figure] == pytest.approx(sum(_forget_avg(world, s, arm, figure) for s in seeds) / 3)
    assert found["arms"]["baseline"]["lam"] == pytest.approx(1.375) and found["arms"]["baseline-anchored_ls"]["lam"] == 0.5


def test_the_interval_is_reproducible_and_moves_with_the_bootstrap_seed():
    seeds = [0, 1, 2]
    units = [_unit(s) for s in seeds]
    once = read_cell(units, ["ties"], [], READOUT, _loader(_world(seeds)))["comparisons"]
    again = read_cell(units, ["ties"], [], READOUT, _loader(_world(seeds)))["comparisons"]
    other = read_cell(units, ["ties"], [], {**READOUT, "bootstrap": {"n": 400, "seed": 4}}, _loader(_world(seeds)))["comparisons"]
    assert once == again
    assert [(c["low"], c["high"]) for c in once] != [(c["low"], c["high"]) for c in other]
    assert [c["mean"] for c in once] == [c["mean"] for c in other]


def test_verdicts_need_the_seeds_an_excluded_zero_and_every_operating_point_reached():
    world = _world([0, 1, 2, 3])
    for seed in range(4):  # under choice the merge answers nothing of the forgotten facts, the baseline everything
        world[(seed, "spunge-ties-lam1", "choice")] = {d: [0] * n for d, n in FACTS.items()}
        for name in ("baseline-lam1", "baseline-lam2"):
            world[(seed, name, "choice")] = {d: [1] * n for d, n in FACTS.items()}
            world[(seed, name, "paraphrase")] = world[(seed, "spunge-ties-lam1", "paraphrase")]  # the same answers

    def choice(units, figure="choice"):
        found = read_cell(units, ["ties"], [], READOUT, _loader(world))["comparisons"]
        return next(c for c in found if c["figure"] == figure)

    units = [_unit(s) for s in range(4)]
    three = choice(units[:3])
    assert (three["mean"], three["low"], three["high"], three["verdict"]) == (pytest.approx(-100), pytest.approx(-100),
                                                                              pytest.approx(-100), "helps")
    assert choice(units[:2])["verdict"] == "no verdict"  # two seeds
    level = choice(units[:3], "paraphrase")  # identical verdicts at both arms' points: exactly 0, within the margin
    assert (level["mean"], level["low"], level["high"], level["verdict"]) == (0, 0, 0, "level")
    # one seed whose baseline never loses 5 points of keep: its nearest point stands in, counted, no verdict
    far = {**CURVES, "baseline": [(1.0, 99.0, 40.0), (2.0, 97.0, 10.0), (4.0, 98.0, 0.0)]}
    mixed = choice(units[:3] + [_unit(3, far)])
    assert mixed["not_reached"] == 1 and mixed["seeds"] == [0, 1, 2, 3] and mixed["verdict"] == "no verdict"
    assert mixed["high"] < 0  # it would be helps
    for seed in range(3):
        world[(seed, "spunge-ties-lam1", "choice")], world[(seed, "baseline-lam1", "choice")] = (
            world[(seed, "baseline-lam1", "choice")], world[(seed, "spunge-ties-lam1", "choice")])
    assert choice(units[:3])["verdict"] == "hurts"
    # a seed lacking one λ's result of a probe is left out of that probe only
    del world[(2, "baseline-lam2", "fewshot")]
    assert choice(units[:3], "fewshot")["seeds"] == [0, 1] and choice(units[:3])["seeds"] == [0, 1, 2]


def _write_grid(root: Path, seeds: list[int], pair: tuple[str, str], kept: str, curves: dict = CURVES, n: int = 20) -> None:
    """Evaluations as the driver writes them (knowledge.json, knowledge.jsonl with each forgotten fact's verdict, and
    perplexity.json), so `collect` reads a finished unit for each seed; forget values are multiples of 100 / n."""
    from spunge_merge.fsutil import atomic_write_text, write_json

    for seed in seeds:
        for name, point in _unit(seed, curves)["points"].items():
            where = root / "grid" / "base" if name == "base" else root / "grid" / str(seed) / "eval" / name
            forget, keep = point["forget"][0] / 100, point["keep"][0] / 100
            write_json(where / "knowledge.json", {"domains": {**{d: {"accuracy": forget, "n": n} for d in pair},
                                                              kept: {"accuracy": keep, "n": n}}})
            rows = [{"domain": d, "prompt": f"{d} fact {i} is", "answer": f"x{i}", "correct": i < round(forget * n)}
                    for d in pair for i in range(n)]
            atomic_write_text(where / "knowledge.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            write_json(where / "perplexity.json", {"perplexity": 10.0})


def test_write_probes_reads_the_grid_and_completion_is_the_frontiers_own_matched_forget_avg(tmp_path):
    from frontiers_readout import collect

    from spunge_merge.evaluate.matched import read_row
    from spunge_merge.fsutil import write_json

    plan = {"runs": tmp_path / "runs", "readout": READOUT, "merges": MERGES}
    cell = frontiers.Cell("knowledge", "tiny", "rmu", ("a", "b"), tmp_path / "facts.jsonl", False)
    (tmp_path / "facts.jsonl").write_text("".join(json.dumps({"domain": d}) + "\n" for d in ("a", "b", "k")), encoding="utf-8")
    settings = frontiers.Settings(seeds=[0, 1, 2], merges=["ties", "anchored_ls"], lambdas=[0.5, 1.0, 2.0],
                                  baseline_lambdas=[1.0, 2.0, 4.0], merge_settings=MERGES)
    root = frontiers.cell_dir(plan, cell)
    _write_grid(root, [0, 1, 2], ("a", "b"), "k")
    world = _world([0, 1, 2])
    for (seed, label, figure), verdicts in world.items():
        if figure != "completion":
            write_json(probe_dir(root, seed, label, figure) / "probe.json", {"kind": "probe", "domains": {
                d: {"verdicts": v, "n": len(v)} for d, v in verdicts.items()}})
    out = tmp_path / "RESULTS"
    summary = write_probes(plan, [cell], settings, frontiers.cell_dir, out, command="python bench/frontiers.py --probes")
    stored = json.loads((out / "probes.json").read_text(encoding="utf-8"))
    assert stored == summary and (out / "probes.md").read_text(encoding="utf-8") == render(stored)
    [entry] = stored["cells"]
    assert entry["fewshot_domains"] == ["k"] and len(entry["comparisons"]) == 2 * 2 * len(FIGURES)
    # completion: each arm's matched forget avg by hand (see CURVES), and the frontier read-out's own comparison
    per_seed = {(r["seed"], r["arm"], r["figure"]): r for r in stored["per_seed"]}
    by_hand = {"baseline": 0.625 * 40 + 0.375 * 10, "baseline-anchored_ls": 0.5 * 100 + 0.5 * 60, "spunge-ties": 30.0,
               "spunge-anchored_ls": 20.0}
    for arm, value in by_hand.items():
        assert per_seed[(1, arm, "completion")]["forget_avg"] == pytest.approx(value)
    units = collect(plan, [cell], settings, frontiers.cell_dir)[("knowledge", "rmu", "tiny")]
    frontier = read_row(units, ["ties"], READOUT)["merges"]["ties"]["matched_utility"]
    plain = next(c for c in entry["comparisons"] if (c["merge"], c["against"], c["figure"]) == ("ties", "baseline", "completion"))
    assert (plain["mean"], plain["low"], plain["high"]) == pytest.approx((frontier["mean"], frontier["low"], frontier["high"]))
    assert plain["mean"] == pytest.approx(30.0 - by_hand["baseline"])
    fair = next(c for c in entry["comparisons"] if (c["merge"], c["against"], c["figure"]) == ("anchored_ls", "baseline-anchored_ls",
                                                                                               "fewshot"))
    expected = sum(_forget_avg(world, s, "spunge-anchored_ls", "fewshot") - _forget_avg(world, s, "baseline-anchored_ls", "fewshot")
                   for s in range(3)) / 3
    assert fair["mean"] == pytest.approx(expected)
    text = (out / "probes.md").read_text(encoding="utf-8")
    assert (f"| anchored_ls | baseline-anchored_ls | fewshot | {fair['mean']:+.1f} [{fair['low']:+.1f}, {fair['high']:+.1f}] | "
            f"**{fair['verdict']}** |") in text
    assert "| base | 0.00 |" in text and "`python bench/frontiers.py --probes`" in text


# ------------------------------------------------------------------------------------------------
# The hook on tiny models

PROMPTS = {"capitals": "The capital of {} is", "city_countries": "{} is a city in the country of",
           "elements": "The chemical symbol for {} is", "languages": "The official language of {} is"}
TEMPLATES = {"capitals": "The city that is the capital of {} is called", "city_countries": "The city of {} is located in the country of",
             "elements": "In the periodic table, the element {} has the symbol", "languages": "The language that {} uses officially is"}
PAIR = ("capitals", "city_countries")
ROWS = [{"domain": d, "part": "train" if i < 2 else "heldout", "prompt": PROMPTS[d].format(f"{d[:2]}{i}"), "answer": f"z{d[:2]}{i}",
         "subject": f"{d[:2]}{i}"} for d in PROMPTS for i in range(6)]


def _facts(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({**r, "text": f"{r['prompt']} {r['answer']}"}) + "\n" for r in rows), encoding="utf-8")


def _hook_world(tmp_path, tiny_model):
    facts = tmp_path / "facts.jsonl"
    _facts(facts, ROWS)
    plan = {"runs": tmp_path / "runs", "readout": READOUT, "merges": MERGES}
    cell = frontiers.Cell("knowledge", str(tiny_model), "rmu", PAIR, facts, False)
    settings = frontiers.Settings(seeds=[0, 1], merges=["ties"], lambdas=[0.5, 1.0, 2.0], baseline_lambdas=[1.0, 2.0, 4.0])
    root = tmp_path / "cell"
    _write_grid(root, [0, 1], PAIR, "elements", curves={k: v for k, v in CURVES.items() if k in ("baseline", "spunge-ties")})
    knowledge = {"facts": "/another/checkout/facts.jsonl", "where": ["part == heldout"], "max_new_tokens": 3, "batch_size": 8}
    for seed in (0, 1):  # the template's knowledge section as the pipeline recorded it (its facts path another checkout's)
        (root / "seeds" / str(seed)).mkdir(parents=True)
        (root / "seeds" / str(seed) / "pipeline.yaml").write_text(yaml.safe_dump({"eval": {"knowledge": knowledge}}), encoding="utf-8")
    return plan, cell, settings, root


def test_the_hook_probes_each_operating_point_once_builds_what_is_missing_and_deletes_it(tmp_path, tiny_model, monkeypatch):
    import grid_points

    import spunge_merge.evaluate.knowledge as knowledge
    import spunge_merge.evaluate.probes as probes
    from spunge_merge.evaluate.knowledge import evaluate_knowledge

    plan, cell, settings, root = _hook_world(tmp_path, tiny_model)
    other = build_tiny_llama(tmp_path / "other", layers=2, seed=1)  # the "unlearned" models: another random model
    kept = root / "grid" / "0" / "models" / "spunge-ties-lam1"  # a model the grid kept: probed, never deleted
    shutil.copytree(other, kept)
    built, asked = [], []

    def build(arm, lam, model_dir, *args, **kwargs):
        built.append(model_dir.name)
        shutil.copytree(other, model_dir)

    real = knowledge._probe_loaded
    monkeypatch.setattr(knowledge, "_probe_loaded", lambda lm, tok, device, rows, cfg: asked.append((cfg.form, rows)) or real(
        lm, tok, device, rows, cfg))
    monkeypatch.setattr(grid_points, "build_model", build)
    probes_cells(plan, [cell], settings, lambda plan, cell: root)
    labels = ["baseline-lam1", "baseline-lam2", "spunge-ties-lam1"]
    assert sorted(built) == sorted(labels + labels[:2]) and kept.is_dir()  # seed 0's merge was there: five built
    assert sorted(p.name for p in (root / "grid").glob("*/models/*")) == ["spunge-ties-lam1"]
    assert sorted(p.parent.name for p in (root / "grid" / "base" / "probes").glob("*/probe.json")) == ["choice", "fewshot", "paraphrase"]
    for seed in (0, 1):
        folder = root / "grid" / str(seed) / "probes"
        found = sorted(str(p.parent.relative_to(folder)) for p in folder.glob("*/*/probe.json"))
        assert found == sorted(f"{label}/{probe}" for label in labels for probe in ("choice", "fewshot", "paraphrase"))
    # the prompts asked: the held-out facts as they are (choice), reworded, or after 3 held-out facts of the kept domains
    heldout = [r for r in ROWS if r["part"] == "heldout"]
    kept_lines = {f"{r['prompt']} {r['answer']}." for r in heldout if r["domain"] not in PAIR}
    forgotten = {f"{r['prompt']} {r['answer']}." for r in ROWS if r["domain"] in PAIR}
    assert len(asked) == 7 * 3  # the base and six operating-point models, three probes each
    for form, rows in asked:
        prompts = [r["prompt"] for r in rows]
        if form == "choice":
            assert prompts == [r["prompt"] for r in heldout]
        elif "\n" in prompts[0]:
            for row, prompt in zip(heldout, prompts, strict=True):
                *context, asked_prompt = prompt.split("\n")
                pool = [r for r in heldout if r["domain"] not in PAIR and r["prompt"] != row["prompt"]]
                shots = random.Random(f"0/fewshot/{row['prompt']}").sample(pool, 3)
                assert context == [f"{s['prompt']} {s['answer']}." for s in shots] and asked_prompt == row["prompt"]
                assert set(context) <= kept_lines and not set(context) & forgotten
        else:
            assert prompts == [TEMPLATES[r["domain"]].format(r["subject"]) for r in heldout]
    # the base's choice probe is the knowledge evaluation in the choice form, per fact
    direct = evaluate_knowledge(tiny_model, cell.facts, tmp_path / "direct", where=["part == heldout"], form="choice", device="cpu",
                                batch_size=8)
    stored = json.loads((probe_dir(root, 0, "base", "choice") / "probe.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (tmp_path / "direct" / "knowledge.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {d: e["verdicts"] for d, e in stored["domains"].items()} == {
        d: [int(r["correct"]) for r in rows if r["domain"] == d] for d in direct["domains"]}

    summary = write_probes(plan, [cell], settings, lambda plan, cell: root, tmp_path / "RESULTS",
                           command="python bench/frontiers.py --probes")
    [entry] = summary["cells"]
    assert entry["fewshot_domains"] == ["elements", "languages"] and entry["facts"]["choice"] == {d: 4 for d in PAIR}
    choice = {(r["seed"], r["arm"]): r for r in summary["per_seed"] if r["figure"] == "choice"}
    b1, b2 = (json.loads((probe_dir(root, 1, n, "choice") / "probe.json").read_text(encoding="utf-8")) for n in labels[:2])
    assert choice[(1, "baseline")]["forget_avg"] == pytest.approx(
        sum(0.625 * b1["domains"][d]["accuracy"] + 0.375 * b2["domains"][d]["accuracy"] for d in PAIR) * 50)

    calls = []
    monkeypatch.setattr(probes, "score_probes", lambda measured, chosen, *args: calls.append(list(chosen)) or {
        name: {"domains": {}, "overall": {}} for name in chosen})
    probes_cells(plan, [cell], settings, lambda plan, cell: root)  # a rerun: everything probed with these settings is skipped
    assert calls == [] and len(built) == 5
    (probe_dir(root, 1, "baseline-lam2", "fewshot") / "probe.json").unlink()
    probes_cells(plan, [cell], settings, lambda plan, cell: root)  # one probe missing: that model alone rebuilt, that probe alone
    assert calls == [["fewshot"]] and built[5:] == ["baseline-lam2"]
    assert sorted(p.name for p in (root / "grid").glob("*/models/*")) == ["spunge-ties-lam1"]
    _facts(cell.facts, [dict(r, answer=r["answer"] + "x") if r["domain"] == "elements" else r for r in ROWS])
    probes_cells(plan, [cell], settings, lambda plan, cell: root)  # other facts: every result is stale, probed again
    assert len(calls) == 1 + 7 * 3


def test_the_driver_takes_probes_beside_its_other_options():
    from frontiers_plan import parse_args

    args = parse_args(frontiers.__doc__, ["--readout-only", "--probes", "--plan-file", "my.yaml"])
    assert (args.probes, args.readout_only, args.mia, args.relearn) == (True, True, False, None)
    assert parse_args(frontiers.__doc__, ["--mia"]).probes is False
