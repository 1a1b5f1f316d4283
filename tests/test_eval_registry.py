"""The evaluation contract: an evaluation declared only here, through `registry.register`, runs in
`spunge run` (every evaluated model), appears in the comparison table and the model card, and has its
section in a pipeline file checked by its config class, with no other code knowing it; the registry's
list is exactly what the schema, compare and the card accept; no module outside the registry lists
evaluation names.

The toy evaluation `embnorm` reads the model's weights: the L2 norm of all its weights, times a `scale`
setting, which the test computes on its own from the safetensors files.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from pydantic import Field
from safetensors.torch import load_file
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.config import FrozenConfig
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate import registry
from spunge_merge.provenance import fingerprint

runner = CliRunner()
GROUPS = ("alpha", "beta")


class EmbNormConfig(FrozenConfig):
    scale: float = Field(1.0, gt=0, description="Factor applied to the norm.")


def _norm(model_dir: Path) -> float:
    squares = sum(float((tensor.double() ** 2).sum()) for shard in sorted(Path(model_dir).glob("*.safetensors"))
                  for tensor in load_file(shard).values())
    return math.sqrt(squares)


def _plan(request: registry.EvaluationRequest) -> registry.Planned:
    key = fingerprint(kind="embnorm", model=request.model.fingerprint, scale=request.config.scale)

    def compute() -> registry.Computed:
        value = _norm(request.model.path) * request.config.scale
        result = {"kind": "embnorm", "fingerprint": key, "model": request.model.describe(), "norm": value}
        return registry.Computed(result, {"embnorm.md": lambda path: path.write_text(f"# Weight norm\n\n{value:.6f}\n")})

    return registry.Planned(key, compute)


EMBNORM = registry.Evaluation(
    name="embnorm", summary="L2 norm of all the weights.", config_class=EmbNormConfig, plan=_plan,
    result_file="embnorm.json", headline=lambda result: result["norm"],
    columns=(registry.Column("emb_norm", "weight norm", lambda result: result["norm"], rank=60, digits=6),))


@pytest.fixture
def embnorm():
    registry.register(EMBNORM)
    yield EMBNORM
    registry.unregister("embnorm")


def _pipeline(tmp_path: Path, tiny_model: Path, evaluations: dict) -> Path:
    from conftest import TINY_CORPUS

    rows = [{"text": f"{t} {i}", "group": GROUPS[i % 2]} for i, t in enumerate(TINY_CORPUS * 2)]
    (tmp_path / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = {"name": "tiny-embnorm", "model": str(tiny_model), "run_dir": str(tmp_path / "run"),
            "split": {"data": {"path": "forget.jsonl"}, "by": "group"},
            "unlearn": {"method": "tvn", "config": {"max_steps": 2, "batch_size": 4, "lr": 0.05}},
            "baseline": {"enabled": False},
            "eval": {"models": ["base", "spunge"], "device": "cpu", **evaluations}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_an_evaluation_registered_in_a_test_runs_in_the_pipeline_compare_and_card(embnorm, tiny_model, tmp_path):
    from spunge_merge.card import build_model_card

    result = runner.invoke(app, ["run", str(_pipeline(tmp_path, tiny_model, {"embnorm": {"scale": 2.0}}))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    merged = run / "merge" / "spunge"
    expected = {"base": 2.0 * _norm(tiny_model), "spunge": 2.0 * _norm(merged)}
    assert not math.isclose(expected["base"], expected["spunge"], rel_tol=1e-9)  # unlearning moved the weights
    for label, value in expected.items():
        saved = json.loads((run / "eval" / label / "embnorm.json").read_text())
        assert saved["kind"] == "embnorm" and math.isclose(saved["norm"], value, rel_tol=1e-12)
        recorded = json.loads((run / "eval" / label / "spunge.json").read_text())["evaluations"]["embnorm"]
        assert recorded["files"] == ["embnorm.json", "embnorm.md"]

    compared = json.loads((run / "eval" / "compare" / "compare.json").read_text())
    rows = {row["label"]: row for row in compared["rows"]}
    assert set(rows) == {"base", "spunge"} and compared["reference"] == "base"
    assert math.isclose(rows["spunge"]["values"]["emb_norm"], expected["spunge"], rel_tol=1e-12)
    change = 100 * (expected["spunge"] - expected["base"]) / expected["base"]
    assert math.isclose(rows["spunge"]["relative"]["emb_norm"], change, rel_tol=1e-9)
    assert "| weight norm |" in (run / "eval" / "compare" / "compare.md").read_text()

    card = build_model_card(merged, extra_eval={"eval/spunge": run / "eval" / "spunge"}).text
    assert f"# Weight norm\n\n{expected['spunge']:.6f}" in card  # the evaluation's own summary, embedded


def test_its_section_is_checked_by_its_config_class(embnorm, tiny_model, tmp_path):
    from spunge_merge.pipeline.schema import load_pipeline

    for section, message in (({"scale": 0}, "eval.embnorm.scale: Input should be greater than 0"),
                             ({"scael": 1}, "eval.embnorm.scael: unknown setting (allowed: scale)"),
                             ("big", "expected a mapping of settings")):
        with pytest.raises(SpungeError) as caught:
            load_pipeline(_pipeline(tmp_path, tiny_model, {"embnorm": section}))
        assert message in str(caught.value)
    assert load_pipeline(_pipeline(tmp_path, tiny_model, {"embnorm": {}})).eval.embnorm == {}


def test_the_registry_list_is_what_schema_compare_and_card_accept(embnorm, tiny_model, tmp_path):
    from spunge_merge.card import is_evaluation_result
    from spunge_merge.evaluate.compare import RESULT_FILES, load_result
    from spunge_merge.pipeline import evals
    from spunge_merge.pipeline.schema import load_pipeline

    names = registry.names()
    assert set(names) == {"knowledge", "perplexity", "toxicity", "fluency", "harness", "embnorm",
                          "mia", "privleak", "extraction", "truth_ratio", "relearn"}
    assert names.index("toxicity") < names.index("fluency")  # fluency reads toxicity's generations
    assert list(evals.ORDER) == names and dict(RESULT_FILES) == {e.name: e.result_file for e in registry.all_evaluations()}
    for evaluation in registry.all_evaluations():
        # the schema takes each registered name as a section and asks for its required settings, nothing else
        given = (*evaluation.after, evaluation.name)
        try:
            load_pipeline(_pipeline(tmp_path, tiny_model, {name: {} for name in given}))
        except SpungeError as exc:
            missing = re.search(r"eval\.(\w+)\.\w+: required$", str(exc))
            assert missing and missing.group(1) in given, exc
        # compare and the card take its result file
        folder = tmp_path / "results" / evaluation.name
        folder.mkdir(parents=True)
        (folder / evaluation.result_file).write_text(json.dumps({"kind": evaluation.name, "fingerprint": "f"}))
        assert set(load_result(folder)) == {evaluation.name}
        assert is_evaluation_result(folder / evaluation.result_file, {"kind": evaluation.name})
    with pytest.raises(SpungeError, match="eval.nope: Extra inputs are not permitted"):
        load_pipeline(_pipeline(tmp_path, tiny_model, {"nope": {}}))


def test_unregistered_it_is_unknown_everywhere(tiny_model, tmp_path):
    from spunge_merge.evaluate.compare import load_result

    assert "embnorm" not in registry.names()
    with pytest.raises(SpungeError, match="unknown evaluation 'embnorm'"):
        registry.get("embnorm")
    (tmp_path / "embnorm.json").write_text(json.dumps({"kind": "embnorm", "fingerprint": "f"}))
    with pytest.raises(SpungeError, match="not a spunge evaluation result"):
        load_result(tmp_path / "embnorm.json")


def test_an_evaluation_reading_another_runs_after_it_and_needs_it():
    first = registry.Evaluation(name="zz_first", summary="", config_class=EmbNormConfig, plan=_plan, result_file="zz_first.json",
                                headline=lambda r: None, after=("zz_second",))
    second = registry.Evaluation(name="zz_second", summary="", config_class=EmbNormConfig, plan=_plan,
                                 result_file="zz_second.json", headline=lambda r: None)
    registry.register(first)
    registry.register(second)
    try:
        names = registry.names()
        assert names.index("zz_second") < names.index("zz_first")
        registry.register(registry.Evaluation(name="zz_second", summary="", config_class=EmbNormConfig, plan=_plan,
                                              result_file="zz_second.json", headline=lambda r: None, after=("zz_first",)))
        with pytest.raises(SpungeError, match="reads its own output"):
            registry.names()
    finally:
        registry.unregister("zz_first")
        registry.unregister("zz_second")


def test_no_module_outside_the_registry_lists_evaluation_names():
    """A literal list, tuple, set or mapping holding two or more evaluation names is a second declaration."""
    package = Path(__file__).resolve().parents[1] / "spunge_merge"
    names = set(registry.names())
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "evaluate" / "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.List | ast.Tuple | ast.Set):
                items = node.elts
            elif isinstance(node, ast.Dict):
                items = [key for key in node.keys if key is not None]
            else:
                continue
            listed = {item.value for item in items if isinstance(item, ast.Constant) and item.value in names}
            if len(listed) >= 2:
                offenders.append(f"{path.relative_to(package.parent)}:{node.lineno}: {sorted(listed)}")
    assert offenders == []


def test_its_command_is_generated_from_its_config_class(embnorm, tiny_model, tmp_path):
    listed = runner.invoke(app, ["eval", "--help"])
    assert listed.exit_code == 0 and "embnorm" in listed.output
    helped = runner.invoke(app, ["eval", "embnorm", "--help"])
    assert helped.exit_code == 0 and "--scale" in helped.output and "Factor applied to the norm." in helped.output
    done = runner.invoke(app, ["eval", "embnorm", "--model", str(tiny_model), "--scale", "3", "--out", str(tmp_path / "e")])
    assert done.exit_code == 0, done.output
    saved = json.loads((tmp_path / "e" / "embnorm.json").read_text())
    assert math.isclose(saved["norm"], 3 * _norm(tiny_model), rel_tol=1e-12) and "embnorm.json" in done.output
    refused = runner.invoke(app, ["eval", "embnorm", "--model", str(tiny_model), "--scale", "0", "--out", str(tmp_path / "f")])
    assert refused.exit_code == 2 and "--scale must be > 0" in refused.output and not (tmp_path / "f").exists()
