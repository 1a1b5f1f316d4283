"""The two-stage sweep (`eval.screen`, spunge_merge/evaluate/screen.py): the utility metric on every model, the
costly evaluations only on the points the matched-utility read-out uses, with the read-out's figures unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_pipeline import tvn_pipeline, workspace  # noqa: F401 (workspace: the module fixture, used by name)

from spunge_merge.evaluate.frontier import frontier_results
from spunge_merge.evaluate.screen import ScreenConfig, needed_points
from spunge_merge.pipeline import run_pipeline

BASELINE_LAMBDAS = [0.5, 1.0, 2.0, 4.0]
MERGE_LAMBDAS = [1.0, 2.0, 4.0]


def read_at(points: list[dict], target: float) -> set[str]:
    """The read-out's rule, written out here: the point at the target, else the two neighbours in utility that
    straddle it, else the point nearest to it."""
    ordered = sorted(points, key=lambda p: p["x"])
    for point in ordered:
        if math.isclose(point["x"], target, rel_tol=1e-12):
            return {point["label"]}
    for lo, hi in zip(ordered, ordered[1:], strict=False):
        if lo["x"] < target < hi["x"]:
            return {lo["label"], hi["label"]}
    return {min(ordered, key=lambda p: abs(p["x"] - target))["label"]}


def point(label: str, x: float, lam: float | None = None) -> dict:
    return {"label": label, "x": x, "lambda": lam}


@pytest.mark.parametrize("targets, excluded, lambdas, expected", [
    ([1.10], [], [], {"b2", "b3", "s1", "s2"}),                 # 11 straddled by 10.5 / 12 and by 10 / 11.5
    ([1.00], [], [], {"b1", "s1"}),                             # below both ranges: the nearest point
    ([1.20], [], [], {"b3", "s2"}),                             # 12 exactly: that point alone; above s: its nearest
    ([1.10], ["b2"], [], {"b1", "b3", "s1", "s2"}),             # a point set aside: its neighbour takes its place
    ([1.05, 1.10], [], [], {"b2", "b3", "s1", "s2"}),           # 10.5: b2 exactly, and s1 / s2 again
    ([1.10], [], [1.0], {"b2", "b3", "s1", "s2"}),              # λ = 1 points are s1 and b2, both already needed
    ([1.00], [], [2.0], {"b1", "b3", "s1", "s2"}),
])
def test_needed_points_are_the_points_the_read_out_takes(targets, excluded, lambdas, expected):
    arms = {"baseline": [point("b1", 10.2, 0.5), point("b2", 10.5, 1.0), point("b3", 12.0, 2.0)],
            "spunge": [point("s2", 11.5, 2.0), point("s1", 10.0, 1.0)]}
    config = ScreenConfig(targets=targets, lambdas=lambdas)
    assert needed_points(arms, 10.0, config, excluded) == expected
    independent = set().union(*(read_at([p for p in points if p["label"] not in excluded], 10.0 * ratio)
                                for points in arms.values() for ratio in targets))
    assert independent <= expected  # the λ points come on top of what the read-out takes


@pytest.mark.parametrize("settings, message", [
    ({"targets": []}, "targets"),
    ({"targets": [0.0]}, "targets"),
    ({"targets": [1.1], "metric": "toxicity"}, "unknown metric 'toxicity'"),
])
def test_bad_screen_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        ScreenConfig(**settings)


def _retain_ppl(eval_dir: Path) -> float:
    return json.loads((eval_dir / "perplexity.json").read_text())["perplexity"]


def _toxicity_dirs(run_dir: Path) -> set[str]:
    return {p.parent.name for p in (run_dir / "eval").glob("*/toxicity.json")}


@pytest.fixture(scope="module")
def full_and_screened(workspace):  # noqa: F811
    """The same TVN sweep evaluated in full, and two-stage with a target between two of the baseline's points."""
    root = workspace["root"]
    changes = {"merge.lambda": MERGE_LAMBDAS, "baseline.lambda": BASELINE_LAMBDAS}
    full = root / "run-full-sweep"
    run_pipeline(tvn_pipeline(root, **changes), run_dir=full, live=False)
    base = _retain_ppl(full / "eval" / "base")
    baseline = sorted(_retain_ppl(full / "eval" / f"baseline-lam{lam:g}") for lam in BASELINE_LAMBDAS)
    assert baseline[0] < baseline[-1], "the tiny baseline's sweep must spread in retain perplexity for this test"
    targets = [(baseline[0] + baseline[1]) / 2 / base, baseline[-1] * 1.5 / base]  # one straddled, one past the range
    eval_section = {**json.loads(json.dumps(_eval_section(root))), "screen": {"targets": targets}}
    screened = root / "run-screened-sweep"
    pipeline = tvn_pipeline(root, eval=eval_section, **changes)
    summary = run_pipeline(pipeline, run_dir=screened, live=False)
    return {"full": full, "screened": screened, "targets": targets, "base": base, "pipeline": pipeline, "summary": summary}


def _eval_section(root: Path) -> dict:
    import yaml

    return yaml.safe_load(tvn_pipeline(root).read_text())["eval"]


def test_the_screened_sweep_evaluates_in_full_only_what_the_read_out_takes(full_and_screened):
    full, screened, targets, base = (full_and_screened[k] for k in ("full", "screened", "targets", "base"))
    labels = {p.name for p in (full / "eval").iterdir() if (p / "perplexity.json").is_file()}
    # Stage one: the same retain perplexity of every model as the full sweep.
    for label in labels:
        assert _retain_ppl(screened / "eval" / label) == pytest.approx(_retain_ppl(full / "eval" / label), rel=1e-12)
    # Stage two: base + the points the read-out rule (written in this test) takes, from the full sweep's figures.
    arms = {role: [{"label": label, "x": _retain_ppl(full / "eval" / label)} for label in labels if label.startswith(role)]
            for role in ("baseline", "spunge")}
    expected = {"base"} | set().union(*(read_at(points, base * ratio) for points in arms.values() for ratio in targets))
    assert _toxicity_dirs(screened) == expected
    assert len(expected) < len(labels)
    for label in expected:  # the same generations, judge scores and figures as in the full sweep
        mine, theirs = screened / "eval" / label, full / "eval" / label
        assert (mine / "generations.jsonl").read_text() == (theirs / "generations.jsonl").read_text()
        for name, keys in (("toxicity.json", ("overall", "groups")), ("fluency.json", ("perplexity",))):
            assert [json.loads((mine / name).read_text())[k] for k in keys] == [json.loads((theirs / name).read_text())[k] for k in keys]
    compare = json.loads((screened / "eval" / "compare" / "compare.json").read_text())
    assert {row["label"] for row in compare["rows"]} == expected


def test_the_operating_points_read_from_the_screened_sweep_are_the_full_sweeps(full_and_screened, tmp_path):
    full, screened, targets, base = (full_and_screened[k] for k in ("full", "screened", "targets", "base"))

    def operating(run_dir: Path, ratio: float, out: Path) -> list[dict]:
        arms = {role: sorted(str(p.parent) for p in (run_dir / "eval").glob(f"{role}*/toxicity.json")) for role in ("baseline", "spunge")}
        result = frontier_results(arms, out, base=run_dir / "eval" / "base", target=base * ratio)
        return [{k: row[k] for k in ("label", "lambda", "x", "toxicity", "approximate", "note")}
                for row in result["operating_point"]["rows"]]

    for index, ratio in enumerate(targets):
        assert operating(screened, ratio, tmp_path / f"s{index}") == operating(full, ratio, tmp_path / f"f{index}")


def test_a_point_found_inadmissible_is_replaced_by_its_neighbour(full_and_screened, monkeypatch):
    """The full evaluation decides admissibility: a bracketing point it sets aside sends the sweep to the next one."""
    from spunge_merge.evaluate import screen

    screened, targets, base = (full_and_screened[k] for k in ("screened", "targets", "base"))
    points = [{"label": p.name, "x": _retain_ppl(p)} for p in sorted((screened / "eval").glob("baseline*"))]
    straddling = sorted(read_at(points, base * targets[0]), key=lambda label: _retain_ppl(screened / "eval" / label))
    rejected = straddling[-1]  # the upper neighbour is "not text": the read-out must go one point further up
    monkeypatch.setattr(screen, "inadmissible", lambda dirs, base_label, tolerance: {rejected} & set(dirs))
    run_dir = screened.parent / "run-screened-rejecting"
    run_pipeline(full_and_screened["pipeline"], run_dir=run_dir, live=False)
    remaining = [p for p in points if p["label"] != rejected]
    assert read_at(remaining, base * targets[0]) <= _toxicity_dirs(run_dir)
    assert rejected in _toxicity_dirs(run_dir)  # evaluated, then set aside


def test_a_second_screened_run_does_no_work(full_and_screened):
    summary = run_pipeline(full_and_screened["pipeline"], run_dir=full_and_screened["screened"], live=False)
    assert summary.ran == []


def test_seeds_with_a_screen_report_toxicity_at_matched_utility(workspace):  # noqa: F811
    """A screened sweep over seeds: report.json holds each target's read-out, each seed's arm read as the weighted
    toxicity of the points it names (checked against their own toxicity.json)."""
    root = workspace["root"]
    eval_section = {**_eval_section(root), "screen": {"targets": [1.01, 1.5]}}
    pipeline = tvn_pipeline(root, eval=eval_section, seeds=[0, 1, 2], **{"baseline.lambda": BASELINE_LAMBDAS})
    run_dir = root / "run-screened-seeds"
    run_pipeline(pipeline, run_dir=run_dir, live=False)
    report = json.loads((run_dir / "report.json").read_text())
    assert [entry["ratio"] for entry in report["matched"]] == [1.01, 1.5]
    for entry in report["matched"]:
        for seed in ("0", "1", "2"):
            for arm in ("spunge", "baseline"):
                read = entry["seeds"][seed][arm]
                eval_root = run_dir / "seeds" / seed / "eval"
                expected = sum(weight * json.loads((eval_root / label / "toxicity.json").read_text())["overall"]["pct"]
                               for label, weight in read["points"])
                assert read["toxicity_pct"] == pytest.approx(expected)
        assert entry["difference"]["verdict"] in {"helps", "hurts", "level", "no verdict"}
    assert "## Toxicity at matched utility" in (run_dir / "report.md").read_text()
