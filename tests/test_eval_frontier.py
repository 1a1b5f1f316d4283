"""`spunge eval compare --arm`: the toxicity-utility frontier over a λ sweep, its tables and its plot.

Every evaluation here is real: models at several λ (Spunge arm: `merge_runs` task arithmetic, so
λ comes from the merged model's own spunge.json; baseline arm: base + λ·(run − base) recorded as
a materialised TVN model, result.lambda), evaluated with `evaluate_perplexity`,
`evaluate_toxicity` and `evaluate_fluency`. Only the toxicity judge is scripted: it calls the
first k generations toxic, k chosen per model, so the toxicity of each point is set by the test
(toxicity.json is still aggregated and written by the toxicity module itself).
"""

from __future__ import annotations

import json
import math

import pytest
from test_eval_toxicity import PNG_MAGIC
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate import evaluate_fluency, evaluate_perplexity, evaluate_toxicity
from spunge_merge.evaluate.frontier import ArmPoint, frontier_results, parse_arm, relative_change_interval

runner = CliRunner()
SPUNGE_LAMBDAS = (0.25, 0.5, 1.0, 2.0)
BASELINE_LAMBDAS = (0.5, 1.0, 2.0, 3.0)  # λ = 3 has no recorded λ: it is given on the command line
N = 20  # generations per model: 2 groups x 2 labels x 5 prompts
# Toxic counts by retain-PPL rank (lowest PPL first): each arm has one point dominated by its neighbour.
SPUNGE_TOXIC = (12, 8, 9, 4)
BASELINE_TOXIC = (14, 10, 6, 7)
BASE_TOXIC = 15


class ScriptedJudge:
    """A `ToxicityJudge` whose verdicts the test chooses: the first `toxic` texts score 0.9, the rest 0.1."""

    name = "scripted-test-judge"

    def __init__(self, toxic: int):
        self.toxic = toxic

    def score(self, texts: list[str]) -> list[float]:
        return [0.9 if i < self.toxic else 0.1 for i in range(len(texts))]

    def describe(self) -> dict:
        return {"type": "scripted", "name": self.name, "fingerprint": "scripted-judge-v1", "toxic_label": "toxic",
                "accuracy": 0.9, "accuracy_on": "made-up rows"}


def _scaled_model(base, run, lam: float, out, *, record: bool):
    """base + λ·(run − base) as a model directory; with `record`, a materialised-TVN spunge.json holding λ."""
    import shutil

    from safetensors.torch import load_file, save_file

    from spunge_merge.models import ResolvedModel
    from spunge_merge.provenance import write_provenance

    shutil.copytree(base, out)
    base_w, run_w = load_file(base / "model.safetensors"), load_file(run / "model.safetensors")
    save_file({k: (v + lam * (run_w[k] - v)).contiguous() for k, v in base_w.items()}, out / "model.safetensors",
              metadata={"format": "pt"})
    if record:
        write_provenance(out, kind="materialized-model", fingerprint=f"tvn-lam{lam}", method="tvn",
                         base_model=ResolvedModel(str(base), base).describe(), config={"lam": lam},
                         result={"lambda": lam, "steps": 3})
    return out


@pytest.fixture(scope="module")
def sweep(tiny_model, shared_data, tmp_path_factory):
    from conftest import TINY_CORPUS, build_tiny_llama

    from spunge_merge.merge import merge_runs

    root = tmp_path_factory.mktemp("frontier")
    run_a = build_tiny_llama(root / "run-a", seed=1)
    run_b = build_tiny_llama(root / "run-b", seed=2)
    judge_lm = build_tiny_llama(root / "judge-lm", layers=2, seed=3)
    retain = root / "retain.jsonl"
    retain.write_text("".join(json.dumps({"text": t}) + "\n" for t in TINY_CORPUS[:4]), encoding="utf-8")
    models = {("base", None): tiny_model}
    for lam in SPUNGE_LAMBDAS:
        models[("spunge", lam)] = merge_runs(str(tiny_model), [str(run_a)], root / "models" / f"spunge-lam{lam:g}",
                                             method="task_arithmetic", lam=lam, views_dir=root / "views", progress=False)
    for lam in BASELINE_LAMBDAS:
        models[("baseline", lam)] = _scaled_model(tiny_model, run_b, lam, root / "models" / f"baseline-lam{lam:g}",
                                                  record=lam != 3.0)
    evals = {key: root / "eval" / (key[0] if key[1] is None else f"{key[0]}-lam{key[1]:g}") for key in models}
    ppl = {key: evaluate_perplexity(str(model), retain, evals[key], max_length=32, stride=16, progress=False)["perplexity"]
           for key, model in models.items()}
    toxic = {("base", None): BASE_TOXIC}
    for arm, counts in (("spunge", SPUNGE_TOXIC), ("baseline", BASELINE_TOXIC)):
        ranked = sorted((key for key in models if key[0] == arm), key=lambda k: ppl[k])
        toxic.update(zip(ranked, counts, strict=True))
    for key, model in models.items():
        evaluate_toxicity(str(model), shared_data / "toxigen" / "prompts", evals[key], groups=["women", "muslim"],
                          n_per_group=5, classifier=ScriptedJudge(toxic[key]), max_new_tokens=3, batch_size=N, progress=False)
        evaluate_fluency(evals[key] / "generations.jsonl", str(judge_lm), evals[key], progress=False)
    return {"root": root, "evals": evals, "ppl": ppl, "toxic": toxic}


def _raw(directory):
    return {kind: json.loads((directory / f"{kind}.json").read_text()) for kind in ("toxicity", "perplexity", "fluency")}


def _independent_pareto(points: list[tuple[float, float]]) -> list[bool]:
    """Brute force: a point is efficient unless another has x and y both <= and one of them <."""
    flags = []
    for i, (x, y) in enumerate(points):
        flags.append(not any(j != i and ox <= x and oy <= y and (ox < x or oy < y) for j, (ox, oy) in enumerate(points)))
    return flags


def _arm_dirs(sweep, arm):
    return {key[1]: path for key, path in sweep["evals"].items() if key[0] == arm}


def test_frontier_cli_pareto_nearest_match_lambda_one_and_plot(sweep, tmp_path):
    evals, out = sweep["evals"], tmp_path / "frontier"
    baseline = _arm_dirs(sweep, "baseline")
    recorded = ",".join(str(baseline[lam]) for lam in (0.5, 1.0, 2.0))
    result = runner.invoke(app, ["eval", "compare", "--base", str(evals[("base", None)]), "--arm", f"baseline={recorded}",
                                 "--arm", f"baseline@3={baseline[3.0]}",
                                 "--arm", f"spunge={sweep['root'] / 'eval' / 'spunge-lam*'}", "--match", "nearest",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "frontier.json").read_text())
    assert stored["kind"] == "frontier" and stored["reference"] == "baseline" and stored["metric"] == "retain_ppl"
    assert stored["model"]["base"] and len(stored["model"]["spunge"]) == 4
    assert stored["warnings"] == [], stored["warnings"]

    # λ from provenance (merged model, materialised TVN model) or given; x and y from the result files.
    points = {name: arm["points"] for name, arm in stored["arms"].items()}
    assert sorted(p["lambda"] for p in points["spunge"]) == list(SPUNGE_LAMBDAS)
    assert all(p["lambda_source"] == "merged-model merge.parameters.lambda" for p in points["spunge"])
    assert sorted(p["lambda"] for p in points["baseline"]) == list(BASELINE_LAMBDAS)
    assert {p["lambda"]: p["lambda_source"] for p in points["baseline"]}[3.0] == "given"
    assert {p["lambda"]: p["lambda_source"] for p in points["baseline"]}[1.0] == "materialized-model result.lambda"
    for name, arm_points in points.items():
        assert [p["x"] for p in arm_points] == sorted(sweep["ppl"][(name, p["lambda"])] for p in arm_points)
        for p in arm_points:
            raw = _raw(evals[(name, p["lambda"])])
            assert p["toxicity"]["toxic"] == sweep["toxic"][(name, p["lambda"])] == raw["toxicity"]["overall"]["toxic"]
            assert p["toxicity"]["n"] == N and p["toxicity"]["ci95"] == raw["toxicity"]["overall"]["ci95"]
            assert p["values"]["fluency_ppl"] == raw["fluency"]["perplexity"]

    # Pareto sets against a brute-force computation, within each arm and over everything.
    for arm_points in points.values():
        expected = _independent_pareto([(p["x"], p["toxicity"]["pct"]) for p in arm_points])
        assert [p["pareto"] for p in arm_points] == expected
        assert expected.count(False) == 1  # by design: one dominated point per arm
    everything = points["baseline"] + points["spunge"] + [stored["base"]]
    expected_all = _independent_pareto([(p["x"], p["toxicity"]["pct"]) for p in everything])
    assert [p["pareto_all"] for p in everything] == expected_all

    # Operating point: default target = baseline at λ = 1; each arm's nearest point and its mismatch.
    op = stored["operating_point"]
    target = sweep["ppl"][("baseline", 1.0)]
    assert op["target"] == target and op["target_source"] == "baseline at λ = 1" and op["match"] == "nearest"
    rows = {row["label"]: row for row in op["rows"]}
    assert list(rows) == ["base", "baseline", "spunge"]
    nearest = min(SPUNGE_LAMBDAS, key=lambda lam: abs(sweep["ppl"][("spunge", lam)] - target))
    assert rows["spunge"]["lambda"] == nearest and not rows["spunge"]["approximate"]
    assert rows["spunge"]["mismatch"] == pytest.approx(sweep["ppl"][("spunge", nearest)] - target)
    assert rows["baseline"]["lambda"] == 1.0 and rows["baseline"]["mismatch"] == 0
    ref_k, new_k = sweep["toxic"][("baseline", 1.0)], sweep["toxic"][("spunge", nearest)]
    assert rows["spunge"]["relative"]["toxicity_pct"] == pytest.approx(100 * (new_k - ref_k) / ref_k, abs=1e-3)
    fl_ref, fl_new = _raw(evals[("baseline", 1.0)])["fluency"]["perplexity"], _raw(evals[("spunge", nearest)])["fluency"]["perplexity"]
    assert rows["spunge"]["relative"]["fluency_ppl"] == pytest.approx(100 * (fl_new - fl_ref) / fl_ref)
    assert rows["base"]["toxicity"]["toxic"] == BASE_TOXIC

    # λ = 1 table: the measured λ = 1 points.
    one = {row["label"]: row for row in stored["lambda_one"]["rows"]}
    assert one["spunge"]["x"] == sweep["ppl"][("spunge", 1.0)] and one["spunge"]["toxicity"]["toxic"] == sweep["toxic"][("spunge", 1.0)]
    assert stored["lambda_one"]["missing"] == []

    markdown = (out / "frontier.md").read_text()
    assert "## At λ = 1 (the paper's setting)" in markdown and "| model | λ | toxicity % [95 % CI] |" in markdown
    assert f"{target:.4g}" in markdown and "scripted-test-judge" in markdown and "### spunge" in markdown
    png = (out / "frontier.png").read_bytes()
    assert png[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(out / "frontier.png") as image:
        image.verify()
        assert image.size[0] > 500 and image.size[1] > 400
    assert json.loads((out / "spunge.json").read_text())["evaluations"]["frontier"]["files"] == [
        "frontier.json", "frontier.md", "frontier.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left over


def _interpolate(points: list[tuple[float, dict]], target: float) -> tuple[str, dict]:
    """Independent reading of a curve at `target`: linear between bracketing neighbours, else the nearest point."""
    points = sorted(points, key=lambda item: item[0])
    for (x0, v0), (x1, v1) in zip(points, points[1:], strict=False):
        if x0 < target < x1:
            w = (target - x0) / (x1 - x0)
            return "interpolated", {key: v0[key] + w * (v1[key] - v0[key]) for key in v0}
    return "nearest", min(points, key=lambda item: abs(item[0] - target))[1]


def test_interpolated_operating_point_against_independent_interpolation(sweep, tmp_path):
    evals = sweep["evals"]
    spunge_dirs, baseline_dirs = _arm_dirs(sweep, "spunge"), _arm_dirs(sweep, "baseline")
    ranked = sorted(SPUNGE_LAMBDAS, key=lambda lam: sweep["ppl"][("spunge", lam)])
    x1, x2 = sweep["ppl"][("spunge", ranked[1])], sweep["ppl"][("spunge", ranked[2])]
    target = 0.3 * x1 + 0.7 * x2  # strictly inside the Spunge curve
    arms = {"baseline": [{"path": str(baseline_dirs[lam]), "lambda": 3.0} if lam == 3.0 else baseline_dirs[lam]
                         for lam in BASELINE_LAMBDAS],
            "spunge": [str(path) for path in spunge_dirs.values()]}
    stored = frontier_results(arms, tmp_path / "f", base=evals[("base", None)], target=target)
    assert stored["operating_point"]["match"] == "interpolate" and stored["operating_point"]["target_source"] == "given"
    rows = {row["label"]: row for row in stored["operating_point"]["rows"]}

    def curve(arm, lambdas):
        items = []
        for lam in lambdas:
            raw = _raw(evals[(arm, lam)])
            tox = raw["toxicity"]["overall"]
            items.append((raw["perplexity"]["perplexity"], {"pct": tox["pct"], "low": tox["ci95"][0], "high": tox["ci95"][1],
                                                            "toxic": tox["toxic"], "fluency": raw["fluency"]["perplexity"],
                                                            "lam": lam}))
        return items

    readings = {}
    for arm, lambdas in (("spunge", SPUNGE_LAMBDAS), ("baseline", BASELINE_LAMBDAS)):
        how, expected = _interpolate(curve(arm, lambdas), target)
        readings[arm] = expected
        row = rows[arm]
        assert row["approximate"] == (how == "interpolated")
        assert row["toxicity"]["pct"] == pytest.approx(expected["pct"], abs=1e-9)
        assert row["toxicity"]["ci95"] == pytest.approx([expected["low"], expected["high"]], abs=1e-9)
        assert row["values"]["fluency_ppl"] == pytest.approx(expected["fluency"])
        assert row["lambda"] == pytest.approx(expected["lam"])
    assert rows["spunge"]["approximate"] and rows["spunge"]["values"]["retain_ppl"] == pytest.approx(target)
    assert sorted(b["lambda"] for b in rows["spunge"]["bracket"]) == sorted([ranked[1], ranked[2]])
    assert [b["weight"] for b in rows["spunge"]["bracket"]] == pytest.approx([0.3, 0.7] if rows["spunge"]["bracket"][0]["x"] == x1
                                                                             else [0.7, 0.3])
    change = rows["spunge"]["relative"]["toxicity_pct"]
    assert change == pytest.approx(100 * (readings["spunge"]["pct"] - readings["baseline"]["pct"]) / readings["baseline"]["pct"])
    ci = rows["spunge"]["toxicity_change_ci95"]
    assert ci[0] < change < ci[1]
    assert "≈" in (tmp_path / "f" / "frontier.md").read_text()

    # The same evaluations on the fluency axis: x is fluency PPL, and the default target is baseline λ = 1's.
    by_fluency = frontier_results(arms, tmp_path / "g", metric="fluency_ppl", match="nearest")
    assert by_fluency["operating_point"]["target"] == _raw(evals[("baseline", 1.0)])["fluency"]["perplexity"]
    xs = [p["x"] for p in by_fluency["arms"]["spunge"]["points"]]
    assert xs == sorted(_raw(path)["fluency"]["perplexity"] for path in spunge_dirs.values())


def test_rerun_is_skipped_and_other_settings_need_force(sweep, tmp_path):
    arms = {"spunge": list(_arm_dirs(sweep, "spunge").values())}
    first = frontier_results(arms, tmp_path, match="nearest")
    (tmp_path / "frontier.png").unlink()  # a skipped rerun writes nothing
    assert frontier_results(arms, tmp_path, match="nearest") == first and not (tmp_path / "frontier.png").exists()
    with pytest.raises(SpungeError, match="pass --force"):
        frontier_results(arms, tmp_path, match="interpolate", target=first["operating_point"]["target"] * 1.01)
    again = frontier_results(arms, tmp_path, match="interpolate", target=first["operating_point"]["target"] * 1.01, force=True)
    assert again["fingerprint"] != first["fingerprint"] and (tmp_path / "frontier.png").is_file()


def test_given_lambda_that_contradicts_provenance_is_used_and_flagged(sweep, tmp_path):
    spunge = _arm_dirs(sweep, "spunge")
    arms = {"spunge": [ArmPoint(spunge[0.5], 7.0), spunge[1.0]]}
    stored = frontier_results(arms, tmp_path, match="nearest")
    assert sorted(p["lambda"] for p in stored["arms"]["spunge"]["points"]) == [1.0, 7.0]
    assert any("λ 7 given" in w and "records λ 0.5" in w for w in stored["warnings"])


def test_relative_change_interval_by_hand():
    # 10/100 against 20/100: ratio 0.5, se(log ratio) = sqrt(1/10 - 1/100 + 1/20 - 1/100) = sqrt(0.13).
    low, high = relative_change_interval(10, 100, 20, 100)
    half = 1.959963984540054 * math.sqrt(0.13)
    assert low == pytest.approx(100 * (0.5 * math.exp(-half) - 1)) and low == pytest.approx(-75.34, abs=0.01)
    assert high == pytest.approx(1.36, abs=0.01)
    assert relative_change_interval(0, 100, 20, 100) is None


def test_parse_arm_syntax(tmp_path):
    for name in ("spunge-lam0.5", "spunge-lam1", "other"):
        (tmp_path / name).mkdir()
    assert parse_arm(f"tvn={tmp_path / 'a'},{tmp_path / 'b'}") == ("tvn", [ArmPoint(tmp_path / "a"), ArmPoint(tmp_path / "b")])
    assert parse_arm(f"tvn@0.5={tmp_path / 'a'}") == ("tvn", [ArmPoint(tmp_path / "a", 0.5)])
    name, points = parse_arm(f"spunge={tmp_path / 'spunge-lam*'}")
    assert name == "spunge" and [p.path.name for p in points] == ["spunge-lam0.5", "spunge-lam1"]
    for bad, message in (("tvn", "expected NAME=DIR"), ("=x", "expected NAME=DIR"), ("tvn@big=x", "is not a number"),
                         (f"s={tmp_path / 'nothing-*'}", "no directory matches")):
        with pytest.raises(SpungeError, match=message):
            parse_arm(bad)


def test_frontier_errors(sweep, tmp_path):
    spunge = _arm_dirs(sweep, "spunge")
    only_ppl = tmp_path / "only-ppl"
    only_ppl.mkdir()
    (only_ppl / "perplexity.json").write_text((spunge[1.0] / "perplexity.json").read_text())
    cases = [
        (["--arm", f"spunge={only_ppl}"], "no toxicity.json"),
        (["--arm", f"spunge={spunge[1.0]}", "--metric", "utility"], "no utility (mean acc) (harness.json)"),
        (["--arm", f"spunge={spunge[1.0]}", "--metric", "speed"], "--metric 'speed'"),
        (["--arm", f"spunge={spunge[1.0]}", "--match", "closest"], "--match 'closest'"),
        (["--arm", f"spunge={spunge[1.0]}", "--reference", "nope"], "--reference 'nope'"),
        (["--arm", f"base={spunge[1.0]}"], "reserved for --base"),
        ([f"x={spunge[1.0]}", "--arm", f"spunge={spunge[1.0]}"], "not both"),
        ([f"x={spunge[1.0]}", "--target", "3"], "belong to frontier mode"),
        ([], "nothing to compare"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["eval", "compare", *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert not (tmp_path / "out" / "frontier.json").exists()
    unknown = tmp_path / "no-lambda"
    unknown.mkdir()
    for name in ("toxicity.json", "perplexity.json"):  # evaluations of a model whose directory is gone: λ unknown
        data = json.loads((spunge[1.0] / name).read_text())
        data["model"]["path"] = data["model"]["ref"] = str(tmp_path / "gone")
        (unknown / name).write_text(json.dumps(data))
    with pytest.raises(SpungeError, match="give the operating point with --target"):
        frontier_results({"arm": [unknown]}, tmp_path / "o")
    stored = frontier_results({"arm": [unknown]}, tmp_path / "o", target=1.0)
    assert any("λ unknown" in w for w in stored["warnings"]) and stored["lambda_one"]["missing"] == ["arm"]


def _rewrite_generations(directory, broken: int) -> float:
    """Every generation plain text except the first `broken` (symbol soup); toxicity.json's recorded share is
    dropped, so the share is counted again from generations.jsonl. Returns the broken share in percent."""
    rows = [json.loads(line) for line in (directory / "generations.jsonl").read_text().splitlines()]
    for index, row in enumerate(rows):
        row["generation"] = "$$ ## %% 12 ::" if index < broken else "They walked to the market to buy some bread."
        row.pop("non_text", None)
    (directory / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = json.loads((directory / "toxicity.json").read_text())
    result.pop("non_text", None)
    (directory / "toxicity.json").write_text(json.dumps(result), encoding="utf-8")
    return 100.0 * broken / len(rows)


def test_a_point_that_wins_by_writing_non_text_is_inadmissible(sweep, tmp_path):
    import shutil

    from spunge_merge.evaluate.compare import compare_results

    dirs = {lam: shutil.copytree(path, tmp_path / path.name) for lam, path in _arm_dirs(sweep, "spunge").items()}
    base = shutil.copytree(sweep["evals"][("base", None)], tmp_path / "base")
    # The least toxic spunge point (highest retain PPL) writes non-text on 60 % of its prompts.
    breaker = max(dirs, key=lambda lam: sweep["ppl"][("spunge", lam)])
    shares = {lam: _rewrite_generations(path, 12 if lam == breaker else 1) for lam, path in dirs.items()}
    _rewrite_generations(base, 0)
    target = sweep["ppl"][("spunge", breaker)]
    arms = {"spunge": [ArmPoint(path) for path in dirs.values()]}

    checked = frontier_results(arms, tmp_path / "checked", base=base, target=target, match="nearest")
    points = {p["path"]: p for p in checked["arms"]["spunge"]["points"]}
    for lam, path in dirs.items():
        assert points[str(path)]["values"]["non_text_pct"] == pytest.approx(shares[lam])
        assert points[str(path)]["admissible"] is (lam != breaker)  # 60 % vs base 0 % (+5 allowed); 5 % is fine
    assert points[str(dirs[breaker])]["pareto"] is False and points[str(dirs[breaker])]["pareto_all"] is False
    row = next(r for r in checked["operating_point"]["rows"] if r["label"] == "spunge")
    assert row["path"] != str(dirs[breaker]) and row["admissible"]
    assert checked["non_text_check"] == {"tolerance": 5.0, "yardstick": "base", "yardstick_pct": 0.0,
                                         "rule": checked["non_text_check"]["rule"]}
    assert any("not text" in w and str(dirs[breaker]) in w for w in checked["warnings"])
    assert "| **no** |" in (tmp_path / "checked" / "frontier.md").read_text()

    unchecked = frontier_results(arms, tmp_path / "unchecked", base=base, target=target, match="nearest", non_text_tolerance=None)
    row = next(r for r in unchecked["operating_point"]["rows"] if r["label"] == "spunge")
    assert row["path"] == str(dirs[breaker])  # without the check the broken point wins the match

    table = compare_results({"base": base, "spunge": dirs[breaker]}, tmp_path / "table")
    assert [r["admissible"] for r in table["rows"]] == [True, False]
    assert [r["values"]["non_text_pct"] for r in table["rows"]] == pytest.approx([0.0, shares[breaker]])
    assert any(w.startswith("spunge: 60.0 % of its generations are not text") for w in table["warnings"])

    result = runner.invoke(app, ["eval", "compare", "--base", str(base), "--arm", f"spunge={','.join(map(str, dirs.values()))}",
                                 "--target", str(target), "--match", "nearest", "--non-text-tolerance", "70",
                                 "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "cli" / "frontier.json").read_text())
    assert saved["non_text_check"]["tolerance"] == 70 and all(p["admissible"] for p in saved["arms"]["spunge"]["points"])
