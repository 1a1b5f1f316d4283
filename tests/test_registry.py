"""The method contract: a method declared only here, through `registry.register`, goes through
`spunge run` (split → unlearn → baseline → merge → eval) and `spunge unlearn NAME` with no other
code knowing it; an unknown method is refused up front; no module outside a method's own compares
a method's name.

The toy method `shrink` is linear on purpose: each run writes, as a tensor delta, one tensor of the
base multiplied by (1 − scale × steps). With the baseline at the matched budget (steps = all split
runs' steps) and task arithmetic as the merge, the merged model and the baseline are then the same
weights, base × (1 − scale × total steps), which the test computes on its own.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import Field
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.config import FrozenConfig
from spunge_merge.data.loading import is_split_dir, load_subsets
from spunge_merge.errors import SpungeError
from spunge_merge.provenance import fingerprint, read_provenance, write_provenance
from spunge_merge.runs import execute_run, run_subsets
from spunge_merge.unlearn import registry
from spunge_merge.unlearn.outputs import delta_to_model

REPO = Path(__file__).resolve().parents[1]
TENSOR = "model.layers.0.mlp.down_proj.weight"
GROUPS = ("alpha", "beta", "gamma")
runner = CliRunner()


class ShrinkConfig(FrozenConfig):
    scale: float = Field(0.01, gt=0, description="Fraction of the tensor removed per step.")
    batch_size: int = Field(4, ge=1, description="Texts per step.")
    epochs: int = Field(1, ge=1, description="Passes over the forget texts.")
    steps: int | None = Field(None, ge=1, description="Steps to take (None: epochs × batches).")
    shuffle: bool = Field(False, description="A flag, to show as --shuffle/--no-shuffle.")
    seed: int = Field(0, description="Seed (unused: the method is deterministic).")


def _steps(config: ShrinkConfig, texts) -> int:
    return config.steps or math.ceil(len(texts) / config.batch_size) * config.epochs


def _train(request: registry.TrainRequest):
    config = ShrinkConfig.model_validate(request.config) if isinstance(request.config, dict) else request.config
    base = load_file(request.model.path / "model.safetensors")[TENSOR]
    source = request.forget[0]
    subsets = load_subsets(source, request.text_column)

    def run_one(subset, run_dir):
        steps = _steps(config, subset.texts)
        fp = fingerprint(method="shrink", config=config.model_dump(mode="json"), data=subset.sha256, base=request.model.fingerprint)

        def work(tmp: Path) -> None:
            save_file({TENSOR: base * (1 - config.scale * steps)}, str(tmp / "delta.safetensors"))
            write_provenance(tmp, kind="shrink-delta", fingerprint=fp, method="shrink", base_model=request.model.describe(),
                             config=config.model_dump(mode="json"), data=subset.describe(),
                             attribute={"column": subset.column, "value": subset.value} if subset.column else None,
                             result={"steps": steps})

        return execute_run(run_dir, fp, work, force=request.force, name=subset.name)

    if is_split_dir(source):
        return run_subsets(subsets, request.out, method="shrink", run_one=run_one, split_source=source, force=request.force)
    return [run_one(subsets[0], request.out)]


def _match(split_configs, split_texts, baseline, retain_texts, corpora) -> registry.BaselineBudget:
    per_run = {name: _steps(ShrinkConfig.model_validate(split_configs[name]), texts) for name, texts in split_texts.items()}
    total = sum(per_run.values())
    return registry.BaselineBudget(config={**baseline, "steps": total},
                                   record={"split_runs": per_run, "split_total": total, "baseline_planned": total,
                                           "changed": {"steps": total}})


SHRINK = registry.UnlearningMethod(
    name="shrink",
    summary="Toy method: scale one tensor down by a fixed amount per step.",
    description="**Shrink** (a test method): one MLP tensor is multiplied by (1 − scale × steps).",
    config_class=ShrinkConfig,
    retain="none",
    output_kind=lambda config: "tensor-delta",
    train=_train,
    planned_steps=lambda config, forget, retain: _steps(config, forget),
    match_baseline=_match,
    to_model=delta_to_model,
)


@pytest.fixture
def shrink():
    registry.register(SHRINK)
    yield SHRINK
    registry.unregister("shrink")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pipeline_file(tmp_path: Path, tiny_model: Path, **changes) -> Path:
    from conftest import TINY_CORPUS

    write_jsonl(tmp_path / "forget.jsonl", [{"text": f"{t} {i}", "group": GROUPS[i % 3]} for i, t in enumerate(TINY_CORPUS * 3)])
    write_jsonl(tmp_path / "retain.jsonl", [{"text": f"the market {t}"} for t in TINY_CORPUS])
    data = {
        "name": "tiny-shrink",
        "model": str(tiny_model),
        "run_dir": str(tmp_path / "run"),
        "split": {"data": {"path": "forget.jsonl"}, "by": "group"},
        "unlearn": {"method": "shrink", "config": {"scale": 0.01, "batch_size": 4}, "overrides": {"beta": {"epochs": 2}}},
        "merge": {"method": "task_arithmetic", "weight": 1.0, "lambda": [1.0]},
        "baseline": {"budget": "matched", "lambda": [1.0, 0.5]},
        "eval": {"models": ["base", "baseline", "spunge"], "device": "cpu",
                 "perplexity": {"data": "retain.jsonl", "max_length": 32, "stride": 32}},
        **changes,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_a_method_registered_in_a_test_goes_through_the_whole_pipeline(shrink, tiny_model, tmp_path):
    result = runner.invoke(app, ["run", str(pipeline_file(tmp_path, tiny_model))])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    base = load_file(tiny_model / "model.safetensors")[TENSOR]
    # 7 rows per subset, batch 4 → 2 steps; beta takes 2 epochs → 4; the baseline is matched to 2 + 4 + 2.
    split_steps = {name: read_provenance(run_dir / "unlearn" / name)["result"]["steps"] for name in GROUPS}
    assert split_steps == {"alpha": 2, "beta": 4, "gamma": 2}
    assert read_provenance(run_dir / "baseline" / "run")["result"]["steps"] == 8
    expected = base * (1 - 0.01 * 8)

    def weights(directory: Path) -> dict[str, torch.Tensor]:
        found = {}
        for file in sorted(directory.glob("*.safetensors")):
            found.update(load_file(file))
        return found

    merged = weights(run_dir / "merge" / "spunge")
    torch.testing.assert_close(merged[TENSOR], expected, rtol=0, atol=1e-6)
    untouched = [name for name in merged if name != TENSOR]
    assert untouched and all(torch.equal(merged[n], weights(tiny_model)[n]) for n in untouched)
    torch.testing.assert_close(weights(run_dir / "baseline" / "models" / "baseline-lam1")[TENSOR], expected, rtol=0, atol=0)
    torch.testing.assert_close(weights(run_dir / "baseline" / "models" / "baseline-lam0.5")[TENSOR],
                               base + 0.5 * (expected - base), rtol=0, atol=1e-6)
    ppl = {label: json.loads((run_dir / "eval" / label / "perplexity.json").read_text())
           for label in ("base", "baseline-lam1", "baseline-lam0.5", "spunge")}
    values = {label: r["perplexity"] for label, r in ppl.items()}
    assert values["spunge"] == pytest.approx(values["baseline-lam1"], rel=1e-5)  # the same weights, the same figure
    assert values["spunge"] != values["base"]
    # The merged model's card describes the method from its record (the pipeline hands the card the registry's text).
    assert SHRINK.description in (run_dir / "merge" / "spunge" / "README.md").read_text(encoding="utf-8")


def test_a_registered_methods_settings_in_a_pipeline_are_its_own_class(shrink, tiny_model, tmp_path):
    from spunge_merge.pipeline import load_pipeline

    pipeline = load_pipeline(pipeline_file(tmp_path, tiny_model))
    assert type(pipeline.unlearn.config) is ShrinkConfig and pipeline.unlearn.config.scale == 0.01
    beta = pipeline.unlearn.overrides["beta"]
    assert type(beta) is ShrinkConfig and (beta.epochs, beta.scale, beta.batch_size) == (2, 0.01, 4)
    assert type(pipeline.baseline.config) is ShrinkConfig and pipeline.baseline.config.epochs == 1
    bad = pipeline_file(tmp_path, tiny_model, unlearn={"method": "shrink", "overrides": {"beta": {"scale": 0}}})
    with pytest.raises(SpungeError, match=r"unlearn\.overrides\.beta\.scale: Input should be greater than 0"):
        load_pipeline(bad)


def test_generated_command_trains_the_registered_method(shrink, tiny_model, tmp_path):
    write_jsonl(tmp_path / "forget.jsonl", [{"body": f"text {i}"} for i in range(5)])
    settings = tmp_path / "settings.yaml"
    settings.write_text("scale: 0.5\nbatch_size: 2\n", encoding="utf-8")
    result = runner.invoke(app, ["unlearn", "shrink", "--model", str(tiny_model), "--forget", str(tmp_path / "forget.jsonl"),
                                 "--out", str(tmp_path / "run"), "--config", str(settings), "--scale", "0.1", "--text-column",
                                 "body", "--no-progress"])
    assert result.exit_code == 0, result.output
    record = read_provenance(tmp_path / "run")
    assert record["config"]["scale"] == 0.1 and record["config"]["batch_size"] == 2 and record["result"]["steps"] == 3
    base = load_file(tiny_model / "model.safetensors")[TENSOR]
    torch.testing.assert_close(load_file(tmp_path / "run" / "delta.safetensors")[TENSOR], base * (1 - 0.1 * 3))
    bad = runner.invoke(app, ["unlearn", "shrink", "--model", str(tiny_model), "--forget", str(tmp_path / "forget.jsonl"),
                              "--out", str(tmp_path / "bad"), "--scale", "-1"])
    assert bad.exit_code == 2 and "scale" in bad.output and not (tmp_path / "bad").exists()


def test_unlearn_help_lists_every_method_and_each_command_documents_its_settings(shrink):
    listing = runner.invoke(app, ["unlearn", "--help"], env={"COLUMNS": "250"}).output
    for name in registry.method_names():
        assert name in listing and registry.get_method(name).summary[:40] in listing
    own = runner.invoke(app, ["unlearn", "shrink", "--help"], env={"COLUMNS": "250"}).output
    for documented in ("--scale", "Fraction of the tensor removed per step.", "[default: 0.01]", "--shuffle", "--no-shuffle",
                       "--forget", "--out", "--config", "--model"):
        assert documented in own, documented
    assert "--retain" not in own  # the record says it uses none
    assert "--retain" in runner.invoke(app, ["unlearn", "rmu", "--help"], env={"COLUMNS": "250"}).output


def test_an_unknown_method_is_refused_in_one_line_before_anything_is_written(tiny_model, tmp_path):
    path = pipeline_file(tmp_path, tiny_model, unlearn={"method": "nope"})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "unlearn.method" in lines[0] and "nope" in lines[0]
    assert all(name in lines[0] for name in registry.method_names())
    assert not (tmp_path / "run").exists()


def test_the_card_describes_the_methods_it_is_given_and_no_other(shrink, tmp_path):
    from spunge_merge.card import build_model_card

    described = registry.descriptions()
    assert described["shrink"] == SHRINK.description and described["tvn"] == registry.get_method("tvn").description
    model = tmp_path / "merged"
    model.mkdir()
    (model / "spunge.json").write_text(json.dumps({"kind": "merged-model", "runs": [{"method": "shrink"}, {"method": "other"}]}))
    text = build_model_card(model, repo_id="me/m", method_descriptions=described).content
    assert SHRINK.description in text and registry.get_method("tvn").description not in text


# What comparing a value against a method's name looks like in source.
_NAME_CHECKS = [r"[=!]=\s*['\"]{n}['\"]", r"['\"]{n}['\"]\s*[=!]=", r"['\"]{n}['\"]\s*:", r"Literal\[[^\]]*['\"]{n}['\"]",
                r"\bin\s*[\(\[\{{][^\)\]\}}]*['\"]{n}['\"]", r"\bcase\s+['\"]{n}['\"]"]


def test_no_module_outside_a_methods_own_compares_its_name():
    names = set(registry.method_names()) | {"tvn", "rmu", "ga", "graddiff", "npo", "simnpo"}
    package = REPO / "spunge_merge"
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative in {f"unlearn/{n}.py" for n in names} | {f"cli/{n}.py" for n in names}:
            continue  # a method's own modules may name it
        text = path.read_text(encoding="utf-8")
        for name in names:
            for pattern in _NAME_CHECKS:
                for match in re.finditer(pattern.format(n=re.escape(name)), text):
                    line = text.count("\n", 0, match.start()) + 1
                    found.append(f"{relative}:{line}: {match.group(0)}")
    assert not found, "method names compared outside their modules:\n" + "\n".join(found)


def test_a_peft_adapter_run_becomes_base_plus_lambda_times_its_update(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from spunge_merge.models import ResolvedModel
    from spunge_merge.unlearn.outputs import peft_adapter_to_model

    torch.manual_seed(0)
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    for name, parameter in lm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)  # peft starts B at zero; give the adapter an update
    lm.save_pretrained(tmp_path / "run")
    adapter = load_file(tmp_path / "run" / "adapter_model.safetensors")
    a = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    base = ResolvedModel(str(tiny_model), tiny_model)
    name = "model.layers.0.self_attn.q_proj.weight"
    original = load_file(tiny_model / "model.safetensors")[name]
    for lam in (None, 0.5):
        out = peft_adapter_to_model(base, tmp_path / "run", lam, tmp_path / f"model-{lam}", tmp_path / f"scratch-{lam}")
        merged = load_file(next(out.glob("*.safetensors")))[name]
        torch.testing.assert_close(merged, original + (1.0 if lam is None else lam) * (4 / 2) * b @ a, rtol=0, atol=1e-5)
        assert read_provenance(out)["kind"] == "materialized-model"


def test_every_registered_method_documents_every_setting_and_has_a_seed():
    for method in registry.all_methods():
        fields = method.config_class.model_fields
        undocumented = [name for name, field in fields.items() if not (field.description or "").strip()]
        assert not undocumented, f"{method.name}: settings without a description (their --help is empty): {undocumented}"
        assert fields["seed"].annotation is int, method.name
        assert method.summary and method.description and method.baseline_corpora
        assert method.output_kind(method.config_class()) in ("peft-adapter", "tensor-delta", "full-checkpoint")
