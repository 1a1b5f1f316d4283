"""What a user sees while spunge works: figures before and after in every method's summary, no dependency
deprecation noise from the calls that trigger it (and only there), `--retain-where`, and inputs checked
before any model is resolved."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
from conftest import TINY_CORPUS
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.runtime import PEFT_WRAP_WARNINGS, listen_to_steps, quiet_dependency, report_step


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    forget = _jsonl(tmp_path / "forget.jsonl", [{"text": t} for t in TINY_CORPUS])
    retain = _jsonl(tmp_path / "retain.jsonl", [{"text": f"{t} kept", "lang": ["en", "fr"][i % 2]} for i, t in enumerate(TINY_CORPUS * 2)])
    return {"forget": forget, "retain": retain}


def _unlearn(*args, columns: int = 200):
    return CliRunner().invoke(app, ["unlearn", *map(str, args)], env={"COLUMNS": str(columns)}, catch_exceptions=False)


@pytest.mark.parametrize("method", ["ga", "graddiff", "npo", "simnpo", "rmu", "tvn"])
def test_every_method_summary_shows_figures_before_and_after(method, tiny_model, data, tmp_path):
    args = [method, "--model", tiny_model, "--forget", data["forget"], "--out", tmp_path / "run", "--device", "cpu", "--no-progress"]
    if method == "rmu":
        args += ["--retain", data["retain"], "--layer", "3", "--update-layers", "2,3", "--batch-size", "2", "--max-num-batches", "2"]
    elif method != "tvn":
        args += ["--max-steps", "2", "--batch-size", "4", "--eval-samples", "4"]
        args += ["--retain", data["retain"]] if method in ("graddiff", "npo", "simnpo") else []
    else:
        args += ["--max-steps", "2", "--batch-size", "4", "--eval-samples", "4"]
    result = _unlearn(*args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "run" / "spunge.json").read_text())["result"]
    text = " ".join(result.output.split())
    if method == "rmu":  # forget and retain loss at the first and the last step, from the run's own history
        first, last = record["history"][0], record["history"][-1]
        assert f"{first['forget_loss']:.4g} → {last['forget_loss']:.4g}" in text
        assert f"{first['retain_loss']:.4g} → {last['retain_loss']:.4g}" in text
    else:
        nll = record["forget_nll"]
        assert f"{nll['base']:.4g} → {nll['trained']:.4g}" in text or f"{nll['base']:.3f} → {nll['trained']:.3f}" in text
        if method in ("graddiff", "npo", "simnpo"):
            terms = record["retain_terms"]
            assert f"{terms[0]:.4g} → {terms[-1]:.4g}" in text


def test_peft_deprecation_is_silenced_only_around_its_call():
    message = "`is_gradient_checkpointing` is deprecated and will be removed in v6."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_dependency(PEFT_WRAP_WARNINGS):
            warnings.warn(message, FutureWarning, stacklevel=1)
            warnings.warn("something else", FutureWarning, stacklevel=1)
        warnings.warn(message, FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else", message]


def test_training_raises_no_gradient_checkpointing_warning(tiny_model, data, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _unlearn("npo", "--model", tiny_model, "--forget", data["forget"], "--retain", data["retain"], "--out",
                          tmp_path / "run", "--max-steps", "1", "--batch-size", "4", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_dependency_log_records_are_dropped_only_inside_the_scope(caplog):
    logger = logging.getLogger("transformers.spunge_probe")
    with caplog.at_level(logging.WARNING, logger="transformers"):
        with quiet_dependency(logs_like=("`torch_dtype` is deprecated",), logger="transformers.spunge_probe"):
            logger.warning("`torch_dtype` is deprecated! Use `dtype` instead!")
            logger.warning("kept")
        logger.warning("`torch_dtype` is deprecated! Use `dtype` instead!")
    assert [r.getMessage() for r in caplog.records] == ["kept", "`torch_dtype` is deprecated! Use `dtype` instead!"]


def test_step_listeners_hear_every_step_while_open():
    heard = []
    with listen_to_steps(lambda *event: heard.append(event)):
        report_step("geo", 1, 2)
        report_step("geo", 2, 2)
    report_step("geo", 3, 3)
    assert heard == [("geo", 1, 2), ("geo", 2, 2)]


def test_retain_where_filters_the_retain_rows_and_is_recorded(tiny_model, data, tmp_path):
    result = _unlearn("npo", "--model", tiny_model, "--forget", data["forget"], "--retain", data["retain"], "--retain-where",
                      "lang == en", "--out", tmp_path / "run", "--max-steps", "1", "--batch-size", "4", "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    retain = json.loads((tmp_path / "run" / "spunge.json").read_text())["data"]["retain"]
    english = [json.loads(line) for line in data["retain"].read_text().splitlines() if json.loads(line)["lang"] == "en"]
    assert retain[0]["rows"] == len(english) and retain[0]["where"] == ["lang == en"]


@pytest.mark.parametrize("extra, expected", [
    (["--retain", "missing.jsonl"], "--retain missing.jsonl: no such file or directory"),
    (["--retain", "{retain}", "--retain-where", "dialect == en"], "unknown column 'dialect'"),
    (["--retain-where", "lang == en"], "--retain-where filters the --retain data: give --retain too"),
])
def test_inputs_are_checked_before_the_model_is_resolved(extra, expected, data, tmp_path, monkeypatch):
    import spunge_merge.models

    def never(*args, **kwargs):
        raise AssertionError("the model was resolved before the inputs were checked")
    monkeypatch.setattr(spunge_merge.models, "resolve_model", never)
    args = [a.format(retain=data["retain"]) for a in extra]
    result = _unlearn("npo", "--model", "smollm2-135m", "--forget", data["forget"], *args, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()) and not (tmp_path / "run").exists()


def test_run_plan_prints_stages_jobs_and_steps_computing_nothing(tmp_path, monkeypatch):
    import spunge_merge.models
    from spunge_merge.cli.run import DEMO_PIPELINE

    def never(*args, **kwargs):
        raise AssertionError("--plan resolved a model")
    monkeypatch.setattr(spunge_merge.models, "resolve_model", never)
    result = CliRunner().invoke(app, ["run", str(DEMO_PIPELINE), "--plan", "--run-dir", str(tmp_path / "run")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run").exists()
    lines = result.output.splitlines()
    assert [line.split(":")[0].strip() for line in lines if line.startswith("  ") and not line.startswith("    ")] == \
        ["split", "unlearn", "baseline", "merge", "eval"]
    assert any("capitals (" in line and " steps)" in line for line in lines)
    assert "3 seeds" in lines[0] and "Nothing was computed" in result.output


def test_a_pipeline_missing_its_retain_file_stops_before_the_model_and_writes_nothing(data, tmp_path, monkeypatch):
    import yaml

    import spunge_merge.models

    def never(*args, **kwargs):
        raise AssertionError("the model was resolved before the inputs were checked")
    monkeypatch.setattr(spunge_merge.models, "resolve_model", never)
    split = _jsonl(tmp_path / "facts.jsonl", [{"text": t, "domain": ["a", "b"][i % 2]} for i, t in enumerate(TINY_CORPUS * 2)])
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "missing-retain", "model": "smollm2-135m",
                                        "split": {"data": split.name, "by": "domain"},
                                        "unlearn": {"method": "npo", "retain": "missing.jsonl"},
                                        "eval": {"models": ["base"], "perplexity": {"data": split.name}}}))
    result = CliRunner().invoke(app, ["run", str(pipeline), "--run-dir", str(tmp_path / "run")], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "unlearn.retain.0.path: missing.jsonl: no such file" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()
