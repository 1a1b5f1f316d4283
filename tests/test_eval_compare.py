"""`spunge eval compare`: a Table-1-shaped table with relative changes, and the overlaid radar plot."""

from __future__ import annotations

import json
import shutil

import pytest
from test_eval_toxicity import PNG_MAGIC, build_tiny_judge
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.evaluate import evaluate_perplexity, evaluate_toxicity

runner = CliRunner()


@pytest.fixture(scope="module")
def two_results(tiny_model, shared_data, tmp_path_factory):
    from conftest import build_tiny_llama

    root = tmp_path_factory.mktemp("cmp")
    other_model = build_tiny_llama(root / "other-model", layers=2, seed=1)
    judge = build_tiny_judge(root / "judge", tiny_model, card={"name": "tiny", "accuracy": 0.5, "accuracy_on": "test"})
    retain = root / "retain.jsonl"
    retain.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["cats and dogs live together",
                                                                       "the sun rises in the east"]), encoding="utf-8")
    dirs = {}
    for label, model in (("base", tiny_model), ("spunge", other_model)):
        out = root / label
        evaluate_toxicity(str(model), shared_data / "toxigen" / "prompts", out, groups=["women", "muslim", "lgbtq"],
                          n_per_group=3, classifier=str(judge), max_new_tokens=6, batch_size=6, progress=False)
        evaluate_perplexity(str(model), retain, out, max_length=32, stride=16, progress=False)
        dirs[label] = out
    return dirs


def test_compare_table_relative_changes_and_radar(two_results, tmp_path):
    out = tmp_path / "compare"
    result = runner.invoke(app, ["eval", "compare", f"base={two_results['base']}", f"spunge={two_results['spunge']}",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "compare.json").read_text())
    assert stored["kind"] == "compare" and stored["reference"] == "base"
    assert set(stored["model"]) == {"base", "spunge"}
    raw = {label: {kind: json.loads((path / f"{kind}.json").read_text()) for kind in ("toxicity", "perplexity")}
           for label, path in two_results.items()}
    rows = {row["label"]: row for row in stored["rows"]}
    assert rows["base"]["values"]["toxicity_pct"] == raw["base"]["toxicity"]["overall"]["pct"]
    base_ppl, new_ppl = raw["base"]["perplexity"]["perplexity"], raw["spunge"]["perplexity"]["perplexity"]
    assert rows["spunge"]["relative"]["retain_ppl"] == pytest.approx(100 * (new_ppl - base_ppl) / base_ppl)
    assert rows["base"]["relative"]["retain_ppl"] == 0
    base_tox, new_tox = raw["base"]["toxicity"]["overall"]["pct"], raw["spunge"]["toxicity"]["overall"]["pct"]
    expected = None if base_tox == 0 else 100 * (new_tox - base_tox) / base_tox
    assert rows["spunge"]["relative"]["toxicity_pct"] == (pytest.approx(expected) if expected is not None else None)
    assert rows["spunge"]["values"]["fluency_ppl"] is None and rows["spunge"]["values"]["utility"] is None
    for group in ("women", "muslim", "lgbtq"):
        assert stored["groups"][group] == {label: raw[label]["toxicity"]["groups"][group]["pct"] for label in raw}
    markdown = (out / "compare.md").read_text()
    assert "| model | toxicity % | fluency PPL | retain PPL | utility (mean acc) |" in markdown
    assert f"{new_ppl:.2f}" in markdown and "## Toxicity per group (%)" in markdown
    assert stored["warnings"] == []
    png = (out / "compare_radar.png").read_bytes()
    assert png[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(out / "compare_radar.png") as image:
        image.verify()


def test_compare_flags_different_judges(two_results, tmp_path):
    altered = tmp_path / "other"
    shutil.copytree(two_results["spunge"], altered)
    data = json.loads((altered / "toxicity.json").read_text())
    data["judge"]["fingerprint"] = "another-judge"
    (altered / "toxicity.json").write_text(json.dumps(data))
    argv = ["eval", "compare", f"base={two_results['base']}", f"other={altered}", "--out", str(tmp_path / "c"), "--reference", "other"]
    refused = runner.invoke(app, argv)
    assert refused.exit_code == 2 and "toxicity judges differ" in refused.output and "--allow-mixed" in refused.output
    assert not (tmp_path / "c").exists()
    result = runner.invoke(app, [*argv, "--allow-mixed"])
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert stored["reference"] == "other"
    assert any("(--allow-mixed): toxicity judges differ" in w and "another-judge" in w for w in stored["warnings"])
    assert "toxicity judges differ" in (tmp_path / "c" / "compare.md").read_text()


def _knowledge_result(folder, *, form="completion", facts="facts-a", max_new_tokens=8, accuracy=0.5):
    folder.mkdir(parents=True)
    settings = {"form": form, "batch_size": 32, "dtype": "auto"}
    settings.update({"choices": 4, "seed": 0} if form == "choice" else {"max_new_tokens": max_new_tokens, "decoding": "greedy"})
    (folder / "knowledge.json").write_text(json.dumps({
        "kind": "knowledge", "fingerprint": folder.name, "model": {"ref": folder.name}, "settings": settings,
        "facts": {"path": "facts.jsonl", "where": [], "sha256": facts},
        "domains": {"bio": {"n": 10, "correct": int(10 * accuracy), "accuracy": accuracy}}}))
    return folder


@pytest.mark.parametrize(("change", "named"), [
    ({"form": "choice"}, "knowledge forms (4-option choice vs greedy completion) differ (base completion, npo choice)"),
    ({"facts": "facts-b"}, "knowledge fact sets differ (sha256: base facts-a, npo facts-b)"),
    ({"max_new_tokens": 32}, "knowledge settings differ (max_new_tokens: base 8, npo 32)"),
])
def test_compare_refuses_results_measured_differently_and_names_the_difference(tmp_path, change, named):
    """Choice accuracy beside completion accuracy (or two fact sets, or other settings) in one column compares the
    measurements, not the models: refused unless --allow-mixed, which records the difference as a warning."""
    base = _knowledge_result(tmp_path / "base", accuracy=0.8)
    npo = _knowledge_result(tmp_path / "npo", accuracy=0.3, **change)
    argv = ["eval", "compare", f"base={base}", f"npo={npo}", "--out", str(tmp_path / "c")]
    refused = runner.invoke(app, argv)
    assert refused.exit_code == 2, refused.output
    assert named in refused.output and refused.output.strip().count("\n") == 0 and "Traceback" not in refused.output
    assert not (tmp_path / "c").exists()
    allowed = runner.invoke(app, [*argv, "--allow-mixed"])
    assert allowed.exit_code == 0, allowed.output
    warnings = json.loads((tmp_path / "c" / "compare.json").read_text())["warnings"]
    assert [w for w in warnings if named in w] and named in allowed.output


def test_compare_accepts_results_that_differ_only_in_speed_settings(tmp_path):
    base = _knowledge_result(tmp_path / "base")
    data = json.loads((base / "knowledge.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    data["settings"]["batch_size"] = 4  # how fast, not what is measured
    (other / "knowledge.json").write_text(json.dumps({**data, "fingerprint": "other"}))
    result = runner.invoke(app, ["eval", "compare", f"base={base}", f"other={other}", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["warnings"] == []


def test_compare_errors(two_results, tmp_path):
    result = runner.invoke(app, ["eval", "compare", str(tmp_path), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "no evaluation results here" in result.output
    result = runner.invoke(app, ["eval", "compare", f"base={two_results['base']}", "--reference", "nope",
                                 "--out", str(tmp_path / "c2")])
    assert result.exit_code == 2 and "--reference 'nope'" in result.output


def test_compare_reads_knowledge_probe_results(two_results, tmp_path):
    """A knowledge-only evaluation folder (evaluate/knowledge.py's knowledge.json) is compared per domain."""
    folders = {}
    for label, accuracy in (("base", 0.8), ("spunge", 0.2)):
        folder = tmp_path / label
        folder.mkdir()
        (folder / "knowledge.json").write_text(json.dumps({
            "kind": "knowledge", "fingerprint": label, "model": {"ref": label},
            "domains": {"bio": {"n": 10, "correct": int(10 * accuracy), "accuracy": accuracy}}}))
        folders[label] = folder
    result = runner.invoke(app, ["eval", "compare", f"base={folders['base']}", f"spunge={folders['spunge']}",
                                 "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [row["knowledge"] for row in stored["rows"]] == [{"bio": 0.8}, {"bio": 0.2}]
    assert "| spunge | 20.0 |" in (tmp_path / "c" / "compare.md").read_text()
