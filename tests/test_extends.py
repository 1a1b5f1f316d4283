"""`extends:` in pipeline files: a variant names only what it changes, and means what `--set` would."""

from __future__ import annotations

from pathlib import Path

import pytest

from spunge_merge.config import apply_overrides, as_run_text, deep_merge, load_pipeline_yaml, load_yaml, parse_yaml
from spunge_merge.errors import SpungeError
from spunge_merge.pipeline.schema import load_pipeline, parse_pipeline

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# The paper-setting variants were once --set lists in the Makefile: the files must mean exactly that.
PAPER_VARIANTS = {
    "bench-toxigen-smollm2-tvn-paper.yaml": ("bench-toxigen-smollm2-tvn.yaml", [
        "baseline.config.lr=2e-5", "eval.models=[baseline]", "baseline.lambda=[1, 2, 5]", "merge.lambda=[1]"]),
    "bench-toxigen-smollm2-rmu-paper.yaml": ("bench-toxigen-smollm2-rmu.yaml", [
        "baseline.config.lr=2e-4", "eval.models=[baseline]", "baseline.lambda=[0.5, 1]", "merge.lambda=[1]"]),
}


@pytest.mark.parametrize("variant", sorted(PAPER_VARIANTS))
def test_a_variant_means_its_parent_with_the_same_changes_given_by_set(variant):
    parent, sets = PAPER_VARIANTS[variant]
    extended = load_pipeline(RECIPES / variant).model_dump()
    by_set = parse_pipeline(apply_overrides(load_yaml(RECIPES / parent), sets, parent), parent).model_dump()
    for key in ("name", "description"):  # what a variant may also rename
        extended.pop(key), by_set.pop(key)
    assert extended == by_set


def test_deep_merge_merges_mappings_and_replaces_everything_else():
    base = {"a": {"x": 1, "y": [1, 2], "z": {"k": 1}}, "b": 2}
    assert deep_merge(base, {"a": {"y": [3], "z": {"j": 2}}, "c": None}) == {
        "a": {"x": 1, "y": [3], "z": {"k": 1, "j": 2}}, "b": 2, "c": None}
    assert base == {"a": {"x": 1, "y": [1, 2], "z": {"k": 1}}, "b": 2}  # the base is not changed


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_chains_resolve_in_order_and_the_record_stands_alone(tmp_path):
    _write(tmp_path / "a.yaml", "name: a\nmerge: {method: ties, density: 0.2, lambda: [1.0]}\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\nname: b\nmerge: {density: 0.5}\n")
    child = _write(tmp_path / "c.yaml", "extends: b.yaml\nmerge: {lambda: [2.0]}\n")
    data = load_pipeline_yaml(child)
    assert data == {"name": "b", "merge": {"method": "ties", "density": 0.5, "lambda": [2.0]}}
    recorded = as_run_text(child, data)
    assert "extends" not in parse_yaml(recorded) and parse_yaml(recorded) == data
    plain = _write(tmp_path / "plain.yaml", "name: plain\n")
    assert as_run_text(plain, load_pipeline_yaml(plain)) == "name: plain\n"  # a file without extends is recorded as written


@pytest.mark.parametrize(("files", "message"), [
    ({"sub/child.yaml": "extends: ../parent.yaml\n", "parent.yaml": "name: p\n"}, "must be in the same folder"),
    ({"child.yaml": "extends: child.yaml\n"}, "forms a cycle"),
    ({"child.yaml": "extends: b.yaml\n", "b.yaml": "extends: child.yaml\n"}, "forms a cycle"),
    ({"child.yaml": "extends: missing.yaml\n"}, "missing.yaml: file not found"),
    ({"child.yaml": "extends: [a.yaml]\n"}, "must name a pipeline file"),
    ({"child.yaml": "extends: list.yaml\n", "list.yaml": "- 1\n"}, "expected a mapping"),
])
def test_bad_extends_is_one_clear_error(tmp_path, files, message):
    for name, text in files.items():
        _write(tmp_path / name, text)
    child = tmp_path / ("sub/child.yaml" if "sub/child.yaml" in files else "child.yaml")
    with pytest.raises(SpungeError, match=message):
        load_pipeline_yaml(child)
