"""Outputs never harm inputs, and what spunge writes or publishes works elsewhere.

- no output file shares an inode with the base model or a run (a `save_pretrained` into a
  materialized model must not edit the base: seen with generation_config.json);
- the portable recipe beside a merged model runs through mergekit's own `mergekit-yaml` on copied
  run folders and gives spunge's tensors; nothing a push uploads names a local absolute path;
- a push that fails leaves the directory byte for byte as it was;
- a run directory refuses other settings than those it recorded, naming them and what they redo;
- Ctrl-C during `spunge run`: one line, exit 130, jobs that never began shown as not started;
- a table of bad output-side invocations: one line, exit code, output location left clean, inputs unchanged.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from fake_hub import FakeHub
from test_merge import MERGEKIT_YAML, make_rmu_run, make_tvn_runs, read_model, write_manifest
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError

TOKEN = "hf_" + "OutputsSafeTestToken" + "z" * 14
REPO = "alice/outputs-safe"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file (links followed) under `root` by relative path -> sha256; a file root is one entry."""
    root = Path(root)
    if not root.exists():
        return {"": "missing"}
    if root.is_file():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".spunge-state/lock" not in p.as_posix()}


def inodes(root: Path) -> set[tuple[int, int]]:
    return {(p.stat().st_dev, p.stat().st_ino) for p in Path(root).rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPUNGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory) -> dict:
    """A writable base (with generation_config.json), RMU and TVN runs, and a TVN merge, all under one folder."""
    from transformers import GenerationConfig

    root = tmp_path_factory.mktemp("outputs")
    base = root / "base"
    shutil.copytree(tiny_model, base)
    GenerationConfig(max_new_tokens=7, do_sample=False).save_pretrained(base)
    rmu = [make_rmu_run(base, root / "rmu" / v, seed=i, value=v, rows=5) for i, v in enumerate(("alpha", "beta"))]
    write_manifest(root / "rmu", rmu)
    tvn = make_tvn_runs(base, root / "tvn", seeds=(5, 6))
    write_manifest(root / "tvn", tvn)
    from spunge_merge.merge import merge_runs

    previous = os.environ.get("SPUNGE_CACHE")
    os.environ["SPUNGE_CACHE"] = str(root / "cache")
    try:
        merged = merge_runs(str(base), tvn, root / "merged-tvn", density=0.5, views_dir=root / "views", progress=False)
    finally:
        if previous is None:
            os.environ.pop("SPUNGE_CACHE")
        else:
            os.environ["SPUNGE_CACHE"] = previous
    return {"root": root, "base": base, "rmu": rmu, "tvn": tvn, "merged": merged, "views": root / "views"}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    with FakeHub(tokens={TOKEN: "alice"}) as fake:
        home = tmp_path / "hf-home"
        home.mkdir()
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / "agent_harnesses.json"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        yield fake


def _copy_merged(world: dict, where: Path) -> Path:
    return Path(shutil.copytree(world["merged"], where / "merged"))


# --------------------------------------------------------------------------- 4: no write reaches the base


def test_materialize_shares_no_inode_with_the_base_and_writes_stay_in_the_output(world, tmp_path):
    from transformers import AutoModelForCausalLM, GenerationConfig

    from spunge_merge.unlearn.rmu import materialize

    base = world["base"]
    before = tree_hashes(base)
    out = materialize(str(base), world["rmu"][0], tmp_path / "materialized")
    shared = inodes(out) & inodes(base)
    assert not shared, "an output file shares an inode with the base model"
    assert all(p.stat().st_nlink == 1 for p in out.rglob("*") if p.is_file())
    # what the issue saw: a save_pretrained into the output edited the base's generation_config.json
    GenerationConfig(max_new_tokens=99).save_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    model.save_pretrained(out)
    (out / "tokenizer.json").write_text("{}")
    assert tree_hashes(base) == before
    assert GenerationConfig.from_pretrained(base).max_new_tokens == 7


def test_a_pipeline_baseline_model_shares_no_inode_with_the_base(world, tmp_path):
    from transformers import GenerationConfig

    from spunge_merge.models import ResolvedModel
    from spunge_merge.unlearn.outputs import apply_adapter

    base = ResolvedModel(str(world["base"]), world["base"])
    before = tree_hashes(world["base"])
    out = apply_adapter(base, world["tvn"][0], tmp_path / "baseline")
    assert not inodes(out) & (inodes(world["base"]) | inodes(world["tvn"][0]))
    GenerationConfig(max_new_tokens=42).save_pretrained(out)
    assert tree_hashes(world["base"]) == before


def test_negate_into_another_folder_and_views_share_no_inode_with_their_inputs(world, tmp_path):
    from spunge_merge.unlearn.tvn import negate_output

    runs_before = tree_hashes(world["root"] / "tvn")
    negate_output(world["root"] / "tvn", 0.5, tmp_path / "negated")
    assert not inodes(tmp_path / "negated") & inodes(world["root"] / "tvn")
    for path in (tmp_path / "negated").rglob("*.json"):
        path.write_text("{}")
    assert tree_hashes(world["root"] / "tvn") == runs_before
    # views: their config, tokenizer files and changed tensors are their own (only the pool is linked, by symlink)
    base_inodes = inodes(world["base"]) | inodes(world["root"] / "rmu") | inodes(world["root"] / "tvn")
    for view in world["views"].iterdir():
        for path in view.iterdir():
            if path.is_file() and not path.is_symlink():
                assert (path.stat().st_dev, path.stat().st_ino) not in base_inodes, path
            if path.is_symlink():
                assert world["views"] in Path(os.readlink(path)).parents, path  # links point into the private pool only


def test_copy_file_is_independent_and_a_full_disk_names_the_output_and_the_bytes(tmp_path, monkeypatch):
    from spunge_merge import fsutil

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    how = fsutil.copy_file(src, tmp_path / "dst.bin")
    assert how in ("reflink", "copy")
    assert os.stat(src).st_ino != os.stat(tmp_path / "dst.bin").st_ino
    (tmp_path / "dst.bin").write_bytes(b"x")
    assert len(src.read_bytes()) == 3000

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil, "reflink", lambda *_: False)
    monkeypatch.setattr(fsutil.shutil, "copyfile", full)
    with pytest.raises(SpungeError) as caught:
        fsutil.copy_file(src, tmp_path / "full.bin")
    message = str(caught.value)
    assert str(tmp_path / "full.bin") in message and "no space left" in message and "3.0 kB" in message
    assert not (tmp_path / "full.bin").exists()
    with pytest.raises(SpungeError, match=r"cannot write .*out.*: no space left on device \(it needs more than"):
        with fsutil.atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "part").write_bytes(b"y" * 500)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst.bin", "src.bin"]


# --------------------------------------------------------------------------- 5: portable recipes, nothing local published


def test_portable_tvn_recipe_runs_through_mergekit_yaml_on_copied_runs(world, tmp_path):
    merged = world["merged"]
    portable = merged / "mergekit_config.portable.yml"
    text = portable.read_text()
    assert str(world["root"]) not in text and "/" + str(world["root"]).split("/")[1] + "/" not in text
    data = yaml.safe_load(text)
    assert data["base_model"] == "./base/"
    models = [m["model"] for m in data["models"]]
    assert [m.rsplit("@", 1)[0] for m in models] == ["./base/+./tvn/alpha", "./base/+./tvn/beta"]
    assert len({m.rsplit("@", 1)[1] for m in models}) == 2  # each adapter's own tag (its weights and the base)
    assert "--lora-merge-cache" in text
    elsewhere = tmp_path / "another-machine"  # the runs and the base, nothing else (no views, no cache)
    shutil.copytree(world["base"], elsewhere / "base")
    for run in world["tvn"]:
        shutil.copytree(run, elsewhere / "tvn" / run.name)
    shutil.copy(portable, elsewhere / "recipe.yml")
    done = subprocess.run([str(MERGEKIT_YAML), "recipe.yml", "out", "--lora-merge-cache", "lora-cache"], cwd=elsewhere,
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = read_model(merged), read_model(elsewhere / "out")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    # spunge reads the same file (from that folder): same tensors
    here = Path.cwd()
    try:
        os.chdir(elsewhere)
        result = CliRunner().invoke(app, ["merge", "--recipe", "recipe.yml", "--out", "by-spunge", "--no-progress",
                                          "--views-dir", "views"])
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    again = read_model(elsewhere / "by-spunge")
    assert all(torch.equal(again[name], ours[name]) for name in ours)


def _header_command(recipe: Path, out: str, cache: Path) -> list[str]:
    """The mergekit-yaml command line the recipe's own header gives, with its placeholders filled in."""
    line = next(line for line in recipe.read_text().splitlines() if line.startswith("#   mergekit-yaml THIS_FILE"))
    command = line.removeprefix("#   ").split("     or     ")[0].split()
    filled = {"THIS_FILE": recipe.name, "OUT": out, "LORA_CACHE_DIR": str(cache)}
    return [str(MERGEKIT_YAML)] + [filled.get(part, part) for part in command[1:]]


def test_portable_recipes_of_two_methods_run_verbatim_sharing_one_lora_cache(world, tmp_path):
    """Two methods' adapters at the same relative paths (./tvn/alpha, ./tvn/beta) over the same base: each portable
    recipe, run from a copied folder with the command its header gives and one shared --lora-merge-cache, gives
    its own merge's tensors (mergekit keys that cache by the text BASE+ADAPTER@TAG, so the tag keeps them apart)."""
    from spunge_merge.merge import merge_runs

    second = tmp_path / "second-method"
    shutil.copytree(world["base"], second / "base")
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"text": f"line {i} about the capital of france", "group": ("alpha", "beta")[i % 2]})
                              + "\n" for i in range(8)))
    split = CliRunner().invoke(app, ["split", str(forget), "--by", "group", "--out", str(tmp_path / "split")])
    assert split.exit_code == 0, split.output
    trained = CliRunner().invoke(app, ["unlearn", "ga", "--model", str(second / "base"), "--forget", str(tmp_path / "split"),
                                       "--out", str(second / "tvn"), "--max-steps", "1", "--lr", "1e-2", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    merged_second = merge_runs(str(second / "base"), [second / "tvn" / "alpha", second / "tvn" / "beta"], tmp_path / "merged-ga",
                               density=0.5, views_dir=tmp_path / "views", progress=False)
    cache = tmp_path / "shared-lora-cache"
    outputs = {}
    for name, merged, folder in (("tvn", world["merged"], world["root"]), ("ga", merged_second, second)):
        copy = tmp_path / f"copy-{name}"  # the base and the runs, nothing else (no views, no spunge cache)
        shutil.copytree(folder / "base", copy / "base")
        shutil.copytree(folder / "tvn", copy / "tvn")
        recipe = Path(shutil.copy(merged / "mergekit_config.portable.yml", copy / "mergekit_config.portable.yml"))
        done = subprocess.run(_header_command(recipe, "out", cache), cwd=copy, capture_output=True, text=True, env=ENV, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        ours, theirs = read_model(merged), read_model(copy / "out")
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
        outputs[name] = theirs
    assert any(not torch.equal(outputs["tvn"][key], outputs["ga"][key]) for key in outputs["tvn"])  # two different merges
    assert len(list(cache.iterdir())) == 4  # one cache entry per adapter, none reused across methods


def test_portable_recipe_over_an_alias_names_a_folder_mergekit_reads(world, tmp_path, monkeypatch):
    """The alias `smollm2-135m` is no Hub id: the portable recipe names ./smollm2-135m/, which `spunge merge --recipe`
    resolves by itself and mergekit-yaml reads once the base is copied there as the header says. (The alias points at
    the tiny base here: the real one is a 135M-parameter download.)"""
    from spunge_merge import models
    from spunge_merge.merge import merge_runs

    monkeypatch.setitem(models.ALIASES, "smollm2-135m", lambda: world["base"])
    merged = merge_runs("smollm2-135m", world["tvn"], tmp_path / "merged", density=0.5, views_dir=tmp_path / "views", progress=False)
    recipe_file = merged / "mergekit_config.portable.yml"
    text = recipe_file.read_text()
    data = yaml.safe_load(text)
    assert data["base_model"] == "./smollm2-135m/"
    assert all(m["model"].startswith("./smollm2-135m/+./") for m in data["models"])
    assert "resolve_model('smollm2-135m').path" in text and "--lora-merge-cache" in text
    copy = tmp_path / "copy"
    for run in world["tvn"]:
        shutil.copytree(run, copy / run.name)
    shutil.copy(recipe_file, copy / recipe_file.name)
    ours = read_model(merged)
    monkeypatch.chdir(copy)
    by_spunge = CliRunner().invoke(app, ["merge", "--recipe", recipe_file.name, "--out", "by-spunge", "--views-dir", "views"])
    assert by_spunge.exit_code == 0, by_spunge.output
    again = read_model(copy / "by-spunge")
    assert all(torch.equal(ours[k], again[k]) for k in ours)
    shutil.copytree(world["base"], copy / "smollm2-135m")  # what the header's cp line does
    done = subprocess.run(_header_command(copy / recipe_file.name, "out", tmp_path / "lora-cache"), cwd=copy,
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = read_model(copy / "out")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_portable_rmu_recipe_says_to_materialize_and_runs_once_that_is_done(world, tmp_path, monkeypatch):
    from spunge_merge.merge import merge_runs

    merged = merge_runs(str(world["base"]), world["rmu"], tmp_path / "merged-rmu", density=0.5, progress=False)
    text = (merged / "mergekit_config.portable.yml").read_text()
    assert "spunge materialize ./rmu/alpha --out ./rmu/alpha-materialized/ --model ./base/" in text
    assert [m["model"] for m in yaml.safe_load(text)["models"]] == ["./rmu/alpha-materialized/", "./rmu/beta-materialized/"]
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(world["base"], elsewhere / "base")
    shutil.copytree(world["root"] / "rmu", elsewhere / "rmu")
    shutil.copy(merged / "mergekit_config.portable.yml", elsewhere / "recipe.yml")
    monkeypatch.chdir(elsewhere)
    refused = CliRunner().invoke(app, ["merge", "--recipe", "recipe.yml", "--out", "m"])
    assert refused.exit_code == 2 and "spunge materialize" in refused.output and "Traceback" not in refused.output
    for line in text.splitlines():
        if line.startswith("#   spunge materialize"):
            args = line.removeprefix("#   spunge ").split()
            assert CliRunner().invoke(app, args).exit_code == 0
    done = subprocess.run([str(MERGEKIT_YAML), "recipe.yml", "out"], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = read_model(merged), read_model(elsewhere / "out")
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_a_push_publishes_no_local_absolute_path(world, hub, tmp_path):
    model_dir = _copy_merged(world, tmp_path)
    vocabulary = json.loads((model_dir / "tokenizer.json").read_text())
    vocabulary["model"]["vocab"]["/tmp"] = len(vocabulary["model"]["vocab"])  # a token that looks like a path
    (model_dir / "tokenizer.json").write_text(json.dumps(vocabulary))
    result = CliRunner().invoke(app, ["push", str(model_dir), "--repo", REPO])
    assert result.exit_code == 0, result.output
    assert hub.files(REPO)["tokenizer.json"] == (model_dir / "tokenizer.json").read_bytes()  # vocabularies: as they are
    forbidden = {str(world["root"]), str(tmp_path), os.path.realpath(world["root"]), str(Path.home()), os.environ["SPUNGE_CACHE"]}
    files = hub.files(REPO)
    assert {"spunge.json", "mergekit_config.yml", "mergekit_config.portable.yml", "README.md"} <= set(files)
    for name, data in files.items():
        for path in forbidden:
            assert path.encode() not in data, f"{name} names {path}"
    assert files["mergekit_config.yml"] == files["mergekit_config.portable.yml"]  # the recipe that works elsewhere
    published = json.loads(files["spunge.json"])
    assert [run["path"] for run in published["runs"]] == ["./alpha", "./beta"]
    assert "model_id = \"" + REPO + "\"" in files["README.md"].decode()


# --------------------------------------------------------------------------- 6: a failed push changes nothing


def test_a_failed_push_leaves_every_file_byte_identical(world, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    model_dir = _copy_merged(world, tmp_path)
    (model_dir / "README.md").write_text("my own notes, not the generated card\n")
    before = tree_hashes(model_dir)
    stamps = {p: p.stat().st_mtime_ns for p in model_dir.rglob("*")}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    result = CliRunner().invoke(app, ["push", str(model_dir), "--repo", REPO])
    assert result.exit_code == 2 and "cannot reach the Hub" in result.output
    assert tree_hashes(model_dir) == before
    assert {p: p.stat().st_mtime_ns for p in model_dir.rglob("*")} == stamps
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(Path(k).parts[0] for k in before)


# --------------------------------------------------------------------------- 8: a run directory remembers


def _recorded_run(run_dir: Path, raw: dict, stages=("split", "unlearn", "baseline", "merge", "eval"), header: str = "") -> Path:
    from spunge_merge.pipeline.state import StateStore

    run_dir.mkdir(parents=True)
    (run_dir / "pipeline.yaml").write_text(header + yaml.safe_dump(raw, sort_keys=False))
    state = StateStore(run_dir)
    for stage in stages:
        state.done(f"stage/{stage}", "f" * 64, outputs=[])
    return run_dir


def _pipeline(root: Path, **changes) -> tuple[Path, dict]:
    raw = {"name": "p", "model": "./model", "split": {"data": {"path": "forget.jsonl"}, "by": "group"},
           "unlearn": {"method": "tvn", "config": {"seed": 0, "lr": 0.01}},
           "merge": {"method": "ties", "density": 0.5, "lambda": [1.0]},
           "eval": {"models": ["base", "spunge"], "device": "cpu",
                    "perplexity": {"data": {"path": "forget.jsonl"}, "max_length": 32, "stride": 32}}}
    for key, value in changes.items():
        target = raw
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(parts[-1])
        else:
            target[parts[-1]] = value
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "forget.jsonl").exists():
        (root / "forget.jsonl").write_text("".join(json.dumps({"text": f"text {i}", "group": f"g{i % 2}"}) + "\n" for i in range(6)))
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


def test_settings_that_differ_are_listed_with_what_they_redo_and_accepted_only_on_request(tiny_model, tmp_path):
    from spunge_merge.pipeline.runner import check_recorded_settings

    _, recorded = _pipeline(tmp_path / "a", **{"unlearn.config.seed": 1})
    run_dir = _recorded_run(tmp_path / "run", recorded, header="# pipeline.yaml with --set unlearn.config.seed=1\n")
    _, current = _pipeline(tmp_path / "b")
    stages = ["split", "unlearn", "baseline", "merge", "eval"]
    with pytest.raises(SpungeError) as caught:
        check_recorded_settings(run_dir, current, stages, accept=False)
    message = str(caught.value)
    assert "unlearn.config.seed: 1 -> 0" in message and "This would redo: unlearn, baseline, merge, eval" in message
    assert "--accept-changes" in message and "\n" not in message
    note = check_recorded_settings(run_dir, current, stages, accept=True)
    assert "unlearn.config.seed: 1 -> 0" in note and "redoing where inputs changed: unlearn, baseline, merge, eval" in note
    assert check_recorded_settings(run_dir, recorded, stages, accept=False) == ""  # same settings: nothing to say
    # a change no stage reads is only noted
    _, described = _pipeline(tmp_path / "c", **{"unlearn.config.seed": 1, "description": "hello"})
    assert "no stage depends on them" in check_recorded_settings(run_dir, described, stages, accept=False)


def _seeded_workspace(w: dict, root: Path, **changes) -> Path:
    pipeline, _ = _pipeline(root, seeds=[0], **changes)
    (root / "model").symlink_to(w["base"])
    return pipeline


def _said(result, run_dir: Path) -> str:
    log = run_dir / "pipeline.log"
    return result.output + (log.read_text() if log.is_file() else "")


def test_an_unchanged_seeded_rerun_reports_no_settings_that_differ(world, tmp_path):
    """Every rerun printed `settings differ (seeds: [0] -> null)`: the seeded run's split compared the file as
    given with its own internal `seeds=null`; now the file as given is compared with the file as given."""
    pipeline = _seeded_workspace(world, tmp_path / "ws")
    run_dir = tmp_path / "run"
    first = CliRunner().invoke(app, ["run", str(pipeline), "--run-dir", str(run_dir), "--only", "split"])
    assert first.exit_code == 0, first.output
    recorded = yaml.safe_load((run_dir / "pipeline.yaml").read_text())
    assert recorded["seeds"] == [0]  # the file as given
    before = tree_hashes(run_dir / "split")
    again = CliRunner().invoke(app, ["run", str(pipeline), "--run-dir", str(run_dir), "--only", "split"])
    assert again.exit_code == 0, again.output
    assert "settings differ" not in _said(again, run_dir) and "seeds" not in again.output
    assert tree_hashes(run_dir / "split") == before
    changed = CliRunner().invoke(app, ["run", str(pipeline), "--run-dir", str(run_dir), "--only", "split", "--set", "description=x"])
    assert changed.exit_code == 0 and "settings differ from the recorded run (description: (not set) -> x)" in changed.output


def test_a_refused_seeded_rerun_leaves_the_run_directory_byte_identical(world, tmp_path):
    """`--set merge.density=0.9` on a seeded run directory whose seed merged with 0.5 is refused, and refused before
    the run directory's pipeline.yaml (or anything else) is rewritten."""
    from spunge_merge.config import apply_overrides
    from spunge_merge.pipeline.schema import parse_pipeline
    from spunge_merge.pipeline.seeds import seed_overrides

    pipeline = _seeded_workspace(world, tmp_path / "ws")
    run_dir = tmp_path / "run"
    assert CliRunner().invoke(app, ["run", str(pipeline), "--run-dir", str(run_dir), "--only", "split"]).exit_code == 0
    raw = yaml.safe_load(pipeline.read_text())
    seed_raw = apply_overrides(raw, seed_overrides(parse_pipeline(raw), 0, raw), str(pipeline))
    _recorded_run(run_dir / "seeds" / "0", seed_raw)  # seed 0 merged (and evaluated) with density 0.5
    before = tree_hashes(run_dir)
    listing = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*"))
    result = CliRunner().invoke(app, ["run", str(pipeline), "--run-dir", str(run_dir), "--set", "merge.density=0.9"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "merge.density: 0.5 -> 0.9. This would redo: merge, eval" in result.output
    assert "Traceback" not in result.output
    assert tree_hashes(run_dir) == before
    assert sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")) == listing


@pytest.mark.parametrize("seeds", [None, [0]], ids=["single", "seeded"])
def test_a_missing_data_path_writes_nothing_so_the_fixed_file_runs(world, tmp_path, seeds):
    """A typo in the data path used to fail in the split stage, after the run directory recorded the typo; the
    corrected file was then refused as "run with other settings"."""
    pipeline, raw = _pipeline(tmp_path / "ws", **{"split.data.path": "forgt.jsonl", **({"seeds": seeds} if seeds else {})})
    (tmp_path / "ws" / "model").symlink_to(world["base"])
    run_dir = tmp_path / "run"
    refused = CliRunner().invoke(app, ["run", str(pipeline), "--run-dir", str(run_dir), "--only", "split"])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1, refused.output
    assert "split.data.path: forgt.jsonl: no such file or directory" in refused.output
    assert not run_dir.exists()
    raw["split"]["data"]["path"] = "forget.jsonl"
    pipeline.write_text(yaml.safe_dump(raw, sort_keys=False))
    fixed = CliRunner().invoke(app, ["run", str(pipeline), "--run-dir", str(run_dir), "--only", "split"])
    assert fixed.exit_code == 0, fixed.output
    assert "settings differ" not in _said(fixed, run_dir)
    assert sorted(p.name for p in (run_dir / "split").iterdir()) == ["g0.jsonl", "g1.jsonl", "manifest.json"]


# --------------------------------------------------------------------------- Ctrl-C during a run


def test_ctrl_c_during_a_run_is_one_line_exit_130_and_queued_jobs_are_not_started(tiny_model, tmp_path):
    from conftest import TINY_CORPUS

    root = tmp_path / "ws"
    root.mkdir()
    (root / "model").symlink_to(tiny_model)
    rows = [{"text": f"{t} {i}", "group": ("g1", "g2", "g3")[i % 3]} for i, t in enumerate(TINY_CORPUS * 30)]
    (root / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pipeline, _ = _pipeline(root, **{"unlearn.config": {"epochs": 200, "batch_size": 2, "max_length": 32, "device": "cpu",
                                                        "eval_samples": 0}, "baseline.enabled": False})
    run_dir = tmp_path / "run"
    # Ctrl-C as a terminal delivers it. A test runner started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then keeps ignoring it: the child starts with the default action.
    process = subprocess.Popen([sys.executable, "-m", "spunge_merge", "run", str(pipeline), "--run-dir", str(run_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = run_dir / "pipeline.log"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (log.is_file() and "[unlearn] g1: running" in log.read_text()):
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out
    interrupted = [line for line in err.splitlines() if line.startswith("Interrupted")]
    assert len(interrupted) == 1 and str(run_dir) in interrupted[0]
    text = log.read_text()
    assert "[unlearn] g1: interrupted" in text
    assert "[unlearn] g2: not started" in text and "[unlearn] g3: not started" in text
    assert "g2: failed" not in text and "g3: failed" not in text
    assert "[unlearn] not started" not in text and "[unlearn] interrupted" in text


# --------------------------------------------------------------------------- the table of bad output-side invocations


@dataclass
class Case:
    id: str
    setup: Callable[[dict, Path], tuple[list[str], Path, list[Path]]]  # -> argv, output location, inputs
    message: str
    code: int = 2
    file_size_limit: int | None = None  # run in a subprocess under RLIMIT_FSIZE (a file too large)
    needs_hub: bool = False
    strict: bool = False  # the whole output is that one line (refused before any work printed anything)


def _file(path: Path, text: str = "precious\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _nonempty(path: Path) -> Path:
    _file(path / "keep.txt")
    return path


def _run_case(kind: str, **changes):
    def setup(w: dict, tmp: Path):
        pipeline, current = _pipeline(tmp / "ws", **changes)
        (tmp / "ws" / "model").symlink_to(w["base"])
        (tmp / "ws" / "other").symlink_to(w["base"])  # a model that resolves: the refusal is about the settings
        _, recorded = _pipeline(tmp / "recorded-from")
        run_dir = _recorded_run(tmp / "run", recorded)
        argv = ["run", str(pipeline), "--run-dir", str(run_dir)] + (["--only", "merge"] if kind == "only" else [])
        return argv, run_dir, [pipeline, w["base"]]
    return setup


def _materialize_into(target: Callable[[dict, Path], Path], *extra: str):
    def setup(w: dict, tmp: Path):
        out = target(w, tmp)
        return ["materialize", str(w["rmu"][0]), "--out", str(out), "--model", str(w["base"]), *extra], out, [w["base"], w["rmu"][0]]
    return setup


def _merge_into(target: Callable[[dict, Path], Path], *extra: str):
    def setup(w: dict, tmp: Path):
        out = target(w, tmp)
        return (["merge", *map(str, w["tvn"]), "--base", str(w["base"]), "--out", str(out), "--views-dir", str(tmp / "views"),
                 "--no-progress", *extra], out, [w["base"], *w["tvn"]])
    return setup


def _merge_rmu_into(target: Callable[[dict, Path], Path], *extra: str):
    def setup(w: dict, tmp: Path):
        out = target(w, tmp)
        return (["merge", *map(str, w["rmu"]), "--base", str(w["base"]), "--out", str(out), "--views-dir", str(tmp / "views"),
                 "--no-progress", *extra], out, [w["base"], *w["rmu"]])
    return setup


def _overflowing_recipe(w: dict, tmp: Path):
    """A hand-written recipe over the TVN runs whose λ overflows float16 (the recipe path, not --lambda)."""
    recipe = {"merge_method": "ties", "base_model": str(w["base"]), "dtype": "float16", "parameters": {"lambda": 1e9, "normalize": True},
              "models": [{"model": str(run), "parameters": {"density": 0.5, "weight": 1.0}} for run in w["tvn"]]}
    path = _file(tmp / "recipe.yml", yaml.safe_dump(recipe))
    return ["merge", "--recipe", str(path), "--out", str(tmp / "out"), "--views-dir", str(tmp / "views")], tmp / "out", [path]


def _materialize_inf(w: dict, tmp: Path):
    """An RMU run whose delta.safetensors holds one inf (written by a broken trainer): materialize refuses it."""
    from safetensors.torch import load_file, save_file

    run = Path(shutil.copytree(w["rmu"][0], tmp / "run-with-inf"))
    delta = load_file(run / "delta.safetensors")
    delta["model.layers.5.mlp.down_proj.weight"][3, 5] = float("inf")
    save_file(delta, run / "delta.safetensors", metadata={"format": "pt"})
    return ["materialize", str(run), "--out", str(tmp / "out"), "--model", str(w["base"])], tmp / "out", [run]


def _recipe_out(target: Callable[[dict, Path], Path]):
    def setup(w: dict, tmp: Path):
        out = target(w, tmp)
        return (["merge", *map(str, w["tvn"]), "--base", str(w["base"]), "--dry-run", "--recipe-out", str(out),
                 "--out", str(tmp / "m")], out, [w["base"], *w["tvn"]])
    return setup


def _views_dir_is_a_file(w: dict, tmp: Path):
    views = _file(tmp / "views-file")
    return (["merge", *map(str, w["tvn"]), "--base", str(w["base"]), "--out", str(tmp / "m"), "--views-dir", str(views)],
            tmp / "m", [w["base"], *w["tvn"], views])


def _deleted_views(w: dict, tmp: Path):
    merged = _copy_merged(w, tmp)
    recipe = yaml.safe_load((merged / "mergekit_config.yml").read_text())
    recipe["models"] = [{**m, "model": str(tmp / "gone-cache" / "merge-views" / Path(m["model"]).name)} for m in recipe["models"]]
    (merged / "mergekit_config.yml").write_text(yaml.safe_dump(recipe))
    return ["merge", "--recipe", str(merged / "mergekit_config.yml"), "--out", str(tmp / "again")], tmp / "again", [merged]


def _negate_into(target: Callable[[dict, Path], Path], *extra: str, lam: str = "0.5"):
    def setup(w: dict, tmp: Path):
        out = target(w, tmp)
        return ["negate", str(w["tvn"][0]), "--lambda", lam, "--out", str(out), *extra], out, [w["tvn"][0]]
    return setup


def _push_failing(how: str):
    def setup(w: dict, tmp: Path, monkeypatch=None):
        from huggingface_hub import constants

        model_dir = _copy_merged(w, tmp)
        _file(model_dir / "README.md", "my notes\n")
        if how == "unreachable":
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{sock.getsockname()[1]}")
        elif how == "offline":
            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        elif how == "no-token":
            monkeypatch.delenv("HF_TOKEN")
        elif how == "bad-token":
            monkeypatch.setenv("HF_TOKEN", "hf_" + "q" * 34)
        repo = "mallory/theirs" if how == "forbidden" else REPO
        return ["push", str(model_dir), "--repo", repo], model_dir, [model_dir]
    return setup


TOO_LARGE = "file too large for this filesystem or its limits (it needs about"
CASES = [
    # spunge run: where it writes, and what it would redo
    Case("run-dir-is-a-file", lambda w, t: (["run", str(_pipeline(t / "ws")[0]), "--run-dir", str(_file(t / "run"))], t / "run",
                                            [t / "ws"]), "is a file; give a directory"),
    Case("run-dir-under-a-file", lambda w, t: (["run", str(_pipeline(t / "ws")[0]), "--run-dir", str(_file(t / "f") / "run")],
                                               t / "f", [t / "ws"]), "cannot create it"),
    Case("run-seed-differs-from-recorded", _run_case("all", **{"unlearn.config.seed": 1}),
         "unlearn.config.seed: 0 -> 1. This would redo: unlearn, baseline, merge, eval"),
    Case("run-merge-lambda-differs", _run_case("all", **{"merge.lambda": [0.5]}),
         "merge.lambda: [1.0] -> [0.5]. This would redo: merge, eval"),
    Case("run-model-differs", _run_case("all", model="./other"),
         "model: ./model -> ./other. This would redo: split, unlearn, baseline, merge, eval"),
    Case("run-setting-removed", _run_case("all", **{"merge.density": None}), "merge.density: 0.5 -> (not set)"),
    Case("run-setting-added", _run_case("all", **{"unlearn.config.epochs": 3}), "unlearn.config.epochs: (not set) -> 3"),
    Case("run-only-with-other-settings", _run_case("only", **{"merge.density": 0.9}), "merge.density: 0.5 -> 0.9"),
    # spunge materialize: its --out
    Case("materialize-out-is-a-file", _materialize_into(lambda w, t: _file(t / "out")), "exists and is not a directory"),
    Case("materialize-out-not-empty", _materialize_into(lambda w, t: _nonempty(t / "out")), "is not empty; pass --force"),
    Case("materialize-out-is-the-base", _materialize_into(lambda w, t: w["base"]), "is the input"),
    Case("materialize-out-under-a-file", _materialize_into(lambda w, t: _file(t / "f") / "out"), "cannot write to"),
    Case("materialize-file-too-large", _materialize_into(lambda w, t: t / "out"), TOO_LARGE, file_size_limit=60_000),
    # spunge merge: --out, --recipe-out, --views-dir, a recipe whose views were deleted
    Case("merge-out-is-a-file", _merge_into(lambda w, t: _file(t / "out")), "exists and is not a directory"),
    Case("merge-out-not-empty", _merge_into(lambda w, t: _nonempty(t / "out")), "is not empty; pass --force"),
    Case("merge-out-is-a-run", _merge_into(lambda w, t: w["tvn"][0]), "is the input"),
    Case("merge-recipe-out-is-a-directory", _recipe_out(lambda w, t: _nonempty(t / "recipe")), "it is a directory; give a file name"),
    Case("merge-recipe-out-under-a-file", _recipe_out(lambda w, t: _file(t / "f") / "recipe.yml"), "cannot write"),
    Case("merge-views-dir-is-a-file", _views_dir_is_a_file, "cannot write to"),
    Case("merge-recipe-views-deleted", _deleted_views, "is a merge view that no longer exists (views are a cache); run the recipe "
         "that names the runs instead: cd "),
    Case("merge-file-too-large", _merge_into(lambda w, t: t / "out"), TOO_LARGE, file_size_limit=60_000),
    # no non-finite weight is written: a λ that overflows the output dtype is refused, naming the tensor and the settings
    Case("merge-overflows-float16", _merge_into(lambda w, t: t / "out", "--lambda", "1e9", "--dtype", "float16"),
         "values are inf or nan in float16 (merge_method ties, dtype float16, lambda 1000000000.0)"),
    Case("merge-overflows-bfloat16", _merge_into(lambda w, t: t / "out", "--lambda", "1e300", "--dtype", "bfloat16"),
         "values are inf or nan in bfloat16 (merge_method ties, dtype bfloat16, lambda 1e+300)"),
    Case("merge-overflows-float32", _merge_into(lambda w, t: t / "out", "--lambda", "1e300", "--method", "task_arithmetic"),
         "values are inf or nan in float32 (merge_method task_arithmetic, dtype float32, lambda 1e+300)"),
    Case("merge-rmu-overflows-float16", _merge_rmu_into(lambda w, t: t / "out", "--lambda", "1e9", "--dtype", "float16"),
         "mlp.down_proj.weight: "),
    Case("merge-recipe-overflows", _overflowing_recipe, "values are inf or nan in float16 (merge_method ties, dtype float16"),
    Case("negate-overflows", _negate_into(lambda w, t: t / "out", lam="1e300"),
         "values are inf or nan in float32 (negation with lambda 1e+300)"),
    Case("materialize-run-holds-inf", _materialize_inf, "model.layers.5.mlp.down_proj.weight: 1 of 2048 values are inf or nan in float32"),
    # spunge negate --out
    Case("negate-out-is-a-file", _negate_into(lambda w, t: _file(t / "out")), "exists and is not a directory"),
    Case("negate-out-not-empty", _negate_into(lambda w, t: _nonempty(t / "out")), "is not empty; pass --force"),
    Case("negate-out-under-a-file", _negate_into(lambda w, t: _file(t / "f") / "out"), "cannot write to"),
    # spunge push that fails: the directory stays as it was
    Case("push-unreachable", _push_failing("unreachable"), "cannot reach the Hub", needs_hub=True),
    Case("push-offline", _push_failing("offline"), "HF_HUB_OFFLINE is set", needs_hub=True),
    Case("push-no-token", _push_failing("no-token"), "no Hugging Face token", needs_hub=True),
    Case("push-rejected-token", _push_failing("bad-token"), "rejected the token (401", needs_hub=True),
    Case("push-forbidden", _push_failing("forbidden"), "permission denied on mallory/theirs (403", needs_hub=True),
]


# ---- never over, into or around an input, nor into the cache, --force or not (issue 25)


def _data(tmp: Path) -> Path:
    """A folder of the user's: the data file and a file beside it."""
    rows = [{"text": f"some text number {i}", "group": ("alpha", "beta")[i % 2]} for i in range(6)]
    data = _file(tmp / "DATA" / "good.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _file(tmp / "DATA" / "notes.txt", "the user's notes\n")
    return data


def _link(tmp: Path, target: Path) -> Path:
    (tmp / "link").symlink_to(target)
    return tmp / "link"


def _split(target: Callable[[dict, Path, Path], Path], *extra: str):
    def setup(w: dict, tmp: Path):
        data = _data(tmp)
        out = target(w, tmp, data)
        return ["split", str(data), "--by", "group", "--out", str(out), "--force", *extra], out, [data.parent]
    return setup


RETAIN = {"rmu": True, "graddiff": True, "npo": True}  # methods that need (or here get) retain data


def _unlearn(method: str, target: Callable[[dict, Path, Path], Path], *extra: str):
    def setup(w: dict, tmp: Path):
        data = _data(tmp)
        out = target(w, tmp, data)
        retain = ["--retain", str(data)] if RETAIN.get(method) else []
        return (["unlearn", method, "--model", str(w["base"]), "--forget", str(data), *retain, "--out", str(out), "--force", *extra],
                out, [data.parent, w["base"]])
    return setup


def _config_inside_out(w: dict, tmp: Path):
    data = _data(tmp)
    config = _file(tmp / "job" / "settings.yaml", "lr: 1.0e-4\n")
    return (["unlearn", "ga", "--model", str(w["base"]), "--forget", str(data), "--config", str(config), "--out", str(tmp / "job"),
             "--force"], tmp / "job", [data.parent, config])


def _eval_perplexity(target: Callable[[dict, Path, Path], Path]):
    def setup(w: dict, tmp: Path):
        data = _data(tmp)
        out = target(w, tmp, data)
        return (["eval", "perplexity", "--model", str(w["base"]), "--data", str(data), "--out", str(out), "--force"], out,
                [data.parent, w["base"]])
    return setup


def _compare_into_its_input(w: dict, tmp: Path):
    results = _file(tmp / "eval-a" / "perplexity.json", json.dumps({"kind": "perplexity", "perplexity": 3.0}))
    return ["eval", "compare", f"a={results.parent}", "--out", str(results.parent)], results.parent, [results.parent]


def _recipe_run_into_its_folder(w: dict, tmp: Path):
    merged = _copy_merged(w, tmp)
    return (["merge", "--recipe", str(merged / "mergekit_config.yml"), "--out", str(merged), "--force"], merged, [merged])


def _run_dir(target: Callable[[dict, Path, Path], Path], **changes):
    def setup(w: dict, tmp: Path):
        pipeline, _ = _pipeline(tmp / "ws", **changes)
        (tmp / "ws" / "model").symlink_to(w["base"])
        run_dir = target(w, tmp, pipeline)
        return ["run", str(pipeline), "--run-dir", str(run_dir), "--force"], run_dir, [tmp / "ws", w["base"]]
    return setup


def _in_cache(tmp: Path) -> Path:
    return Path(os.environ["SPUNGE_CACHE"]) / "out"


INPUTS = "spunge never writes over or into its inputs, even with --force"
NOT_OURS = "holds files that spunge did not write"
CASES += [
    # the data loss: --force deleted the data folder, and the base model
    Case("split-force-out-is-the-data-folder", _split(lambda w, t, d: d.parent), f"contains the input {{data}}; {INPUTS}", strict=True),
    Case("split-force-out-is-the-data-file", _split(lambda w, t, d: d), "is the input", strict=True),
    Case("split-force-out-inside-a-symlink-to-the-data-folder", _split(lambda w, t, d: _link(t, d.parent)), "contains the input",
         strict=True),
    Case("split-force-out-contains-the-data", _split(lambda w, t, d: t), "contains the input", strict=True),
    Case("split-force-out-in-the-cache", _split(lambda w, t, d: _in_cache(t)), "lies inside spunge's cache", strict=True),
    Case("split-force-over-a-folder-of-the-users", _split(lambda w, t, d: _nonempty(t / "mine")), NOT_OURS, strict=True),
    *(Case(f"unlearn-{m}-force-out-is-the-model", _unlearn(m, lambda w, t, d: w["base"]), f"is the input {{base}}; {INPUTS}",
           strict=True) for m in ("ga", "tvn", "rmu", "graddiff", "npo", "simnpo")),
    Case("unlearn-force-out-inside-the-model", _unlearn("ga", lambda w, t, d: w["base"] / "runs"), "lies inside the input", strict=True),
    Case("unlearn-force-out-via-a-symlink-to-the-model", _unlearn("ga", lambda w, t, d: _link(t, w["base"])), "is the input",
         strict=True),
    Case("unlearn-force-out-holds-the-forget-data", _unlearn("ga", lambda w, t, d: d.parent), "contains the input", strict=True),
    Case("unlearn-force-out-holds-the-retain-data", _unlearn("npo", lambda w, t, d: d.parent), "contains the input", strict=True),
    Case("unlearn-force-out-holds-the-config", _config_inside_out, "contains the input", strict=True),
    Case("unlearn-force-out-in-the-cache", _unlearn("ga", lambda w, t, d: _in_cache(t)), "spunge's cache", strict=True),
    Case("unlearn-force-over-a-folder-of-the-users", _unlearn("ga", lambda w, t, d: _nonempty(t / "mine")), NOT_OURS, strict=True),
    Case("negate-force-out-is-the-run", _negate_into(lambda w, t: w["tvn"][0], "--force"), "is the input", strict=True),
    Case("negate-force-out-inside-the-run", _negate_into(lambda w, t: w["tvn"][0] / "again", "--force"), "lies inside the input",
         strict=True),
    Case("negate-force-out-holds-the-run", _negate_into(lambda w, t: w["root"] / "tvn", "--force"), "contains the input", strict=True),
    Case("materialize-force-out-is-the-base", _materialize_into(lambda w, t: w["base"], "--force"), "is the input", strict=True),
    Case("materialize-force-out-is-the-run", _materialize_into(lambda w, t: w["rmu"][0], "--force"), "is the input", strict=True),
    Case("materialize-force-out-inside-the-base", _materialize_into(lambda w, t: w["base"] / "materialized", "--force"),
         "lies inside the input", strict=True),
    Case("materialize-force-over-a-folder-of-the-users", _materialize_into(lambda w, t: _nonempty(t / "mine"), "--force"), NOT_OURS,
         strict=True),
    Case("merge-force-out-is-the-base", _merge_into(lambda w, t: w["base"], "--force"), "is the input", strict=True),
    Case("merge-force-out-is-a-run", _merge_into(lambda w, t: w["tvn"][1], "--force"), "is the input", strict=True),
    Case("merge-force-out-holds-the-runs", _merge_into(lambda w, t: w["root"] / "tvn", "--force"), "contains the input", strict=True),
    Case("merge-force-out-in-the-cache", _merge_into(lambda w, t: _in_cache(t), "--force"), "spunge's cache", strict=True),
    Case("merge-force-over-a-folder-of-the-users", _merge_into(lambda w, t: _nonempty(t / "mine"), "--force"), NOT_OURS, strict=True),
    Case("merge-recipe-force-out-holds-the-recipe", _recipe_run_into_its_folder, "contains the input", strict=True),
    Case("merge-recipe-out-is-the-base-config", _recipe_out(lambda w, t: w["base"] / "config.json"), "lies inside the input", strict=True),
    Case("eval-force-out-is-the-model", _eval_perplexity(lambda w, t, d: w["base"]), "is the input", strict=True),
    Case("eval-force-out-holds-the-data", _eval_perplexity(lambda w, t, d: d.parent), "contains the input", strict=True),
    Case("eval-compare-out-is-a-result", _compare_into_its_input, "is the input", strict=True),
    Case("run-dir-holds-the-pipeline-file", _run_dir(lambda w, t, p: p.parent), "--run-dir", strict=True),
    Case("run-dir-inside-the-model", _run_dir(lambda w, t, p: w["base"] / "run"), "lies inside the input", strict=True),
    Case("run-dir-in-the-cache", _run_dir(lambda w, t, p: _in_cache(t)), "spunge's cache", strict=True),
    Case("run-dir-a-folder-of-the-users", _run_dir(lambda w, t, p: _nonempty(t / "mine")), NOT_OURS, strict=True),
    Case("run-data-path-missing", _run_dir(lambda w, t, p: t / "run", **{"split.data.path": "gone.jsonl"}),
         "split.data.path: gone.jsonl: no such file or directory", strict=True),
    Case("run-retain-path-missing", _run_dir(lambda w, t, p: t / "run", **{"unlearn.method": "npo", "unlearn.retain": "./gone"}),
         "unlearn.retain.0.path: ./gone: no such file or directory", strict=True),
    Case("run-eval-data-missing", _run_dir(lambda w, t, p: t / "run", **{"eval.perplexity.data": {"path": "gone.txt"}}),
         "eval.perplexity.data.path: gone.txt: no such file or directory", strict=True),
]


def test_the_markers_of_a_spunge_output_are_the_files_spunge_writes():
    """`--force` recognises spunge's outputs by these names; each is the constant its writer uses."""
    from spunge_merge.data.loading import SPLIT_MANIFEST
    from spunge_merge.fsutil import OWNED_MARKERS
    from spunge_merge.pipeline.state import STATE_DIR
    from spunge_merge.provenance import PROVENANCE_FILE
    from spunge_merge.runs import RUNS_MANIFEST

    assert set(OWNED_MARKERS) == {PROVENANCE_FILE, SPLIT_MANIFEST, RUNS_MANIFEST, STATE_DIR}


def test_force_replaces_a_spunge_output_and_an_empty_folder(tmp_path):
    data = _data(tmp_path)
    out = tmp_path / "split"
    for by in ("group", "text"):  # the second replaces the first: a split (manifest.json) spunge wrote
        result = CliRunner().invoke(app, ["split", str(data), "--by", by, "--out", str(out), "--force"])
        assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["column"] == "text" and not (out / "alpha.jsonl").exists()
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["split", str(data), "--by", "group", "--out", str(tmp_path / "empty"), "--force"])
    assert result.exit_code == 0 and (tmp_path / "empty" / "alpha.jsonl").is_file()


def test_the_guard_resolves_symlinks_on_both_sides(tmp_path):
    from spunge_merge.fsutil import guard_output

    model = _file(tmp_path / "real" / "model" / "config.json", "{}").parent
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(SpungeError, match="lies inside the input"):  # out through a link, input by its real path
        guard_output(tmp_path / "alias" / "model" / "out", inputs=[model])
    with pytest.raises(SpungeError, match="contains the input"):  # input through a link, out by its real path
        guard_output(tmp_path / "real", inputs=[tmp_path / "alias" / "model"])
    guard_output(tmp_path / "real" / "elsewhere", inputs=[tmp_path / "alias" / "model", "org/hub-id"])  # a sibling: fine


def _limited(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_output_side_input(case: Case, world, tmp_path, request, monkeypatch):
    assert len(CASES) >= 60
    if case.needs_hub:
        request.getfixturevalue("hub")
        argv, output, inputs = case.setup(world, tmp_path, monkeypatch)
    else:
        argv, output, inputs = case.setup(world, tmp_path)
    inputs = [*inputs, world["base"]]
    before_inputs = {str(p): tree_hashes(p) for p in inputs}
    before_output = tree_hashes(output)
    caches = {"cache", "views"}  # merge views are built (a cache) before an output is refused

    def listing(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.name not in caches)
    siblings = listing(output.parent) if output.parent.is_dir() else None
    if case.file_size_limit:
        done = subprocess.run([sys.executable, "-m", "spunge_merge", *argv], capture_output=True, text=True, timeout=600,
                              env={**ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                                   "SPUNGE_CACHE": os.environ["SPUNGE_CACHE"]},
                              preexec_fn=_limited(case.file_size_limit))
        code, text = done.returncode, done.stdout + done.stderr
    else:
        result = CliRunner().invoke(app, argv)
        code, text = result.exit_code, result.output
    assert code == case.code, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    message = case.message.replace("{base}", str(world["base"])).replace("{data}", str(tmp_path / "DATA" / "good.jsonl"))
    assert len(errors) == 1 and message in errors[0], text[-3000:]
    assert "Traceback" not in text
    if case.strict:
        assert text.strip() == errors[0], text[-3000:]
    assert tree_hashes(output) == before_output  # left as it was (or still absent)
    if siblings is not None:  # no temporaries or half-written outputs beside it
        assert listing(output.parent) == siblings
    for path in inputs:
        assert tree_hashes(path) == before_inputs[str(path)], f"input {path} changed"


# --------------------------------------------------------------------------- identical runs, identical bytes


def _safetensors_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.safetensors"))}


def test_identical_runs_write_byte_identical_safetensors_with_sorted_metadata(world, tmp_path):
    """Two identical runs of every writer (RMU delta, TVN and GA adapters through peft, a full GA delta, a merge, a
    materialized model) give the same file bytes, not only equal tensors: safetensors writes a metadata map's keys in
    random order, so spunge sorts them (the RMU delta has three keys)."""
    from safetensors import safe_open

    from spunge_merge.tensorfiles import read_header  # noqa: F401 - the reader the merge uses accepts the rewritten header

    data = tmp_path / "data"
    data.mkdir()
    forget = data / "forget.jsonl"
    forget.write_text("".join(json.dumps({"text": f"forget line {i} about the capital of france"}) + "\n" for i in range(6)))
    retain = data / "retain.txt"
    retain.write_text("\n".join(f"retain line {i} about water and the sun" for i in range(6)) + "\n")
    base = str(world["base"])
    commands = {
        "rmu": ["unlearn", "rmu", "--model", base, "--forget", str(forget), "--retain", str(retain), "--max-num-batches", "2",
                "--batch-size", "2", "--device", "cpu", "--quiet"],
        "tvn": ["unlearn", "tvn", "--model", base, "--forget", str(forget), "--max-steps", "1", "--no-progress", "--device", "cpu"],
        "ga-full": ["unlearn", "ga", "--model", base, "--forget", str(forget), "--max-steps", "1", "--full", "--device", "cpu"],
    }
    digests = []
    for attempt in ("first", "second"):
        root = tmp_path / attempt
        for name, argv in commands.items():
            result = CliRunner().invoke(app, [*argv, "--out", str(root / name)])
            assert result.exit_code == 0, result.output[-3000:]
        for name in ("materialized", "merged"):
            argv = (["materialize", str(root / "rmu"), "--out", str(root / name), "--model", base] if name == "materialized" else
                    ["merge", *map(str, world["tvn"]), "--base", base, "--out", str(root / name), "--no-progress",
                     "--views-dir", str(tmp_path / f"views-{attempt}")])
            result = CliRunner().invoke(app, argv)
            assert result.exit_code == 0, result.output[-3000:]
        digests.append(_safetensors_digests(root))
    first, second = digests
    assert {"rmu/delta.safetensors", "tvn/adapter_model.safetensors", "tvn/unnegated/adapter_model.safetensors",
            "ga-full/delta.safetensors", "materialized/model.safetensors"} <= first.keys()
    assert any(name.startswith("merged/model-") for name in first)
    assert first == second
    for name in first:
        with safe_open(str(tmp_path / "first" / name), framework="pt") as handle:
            metadata = handle.metadata() or {}
        raw = (tmp_path / "first" / name).read_bytes()
        header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
        assert list(header.get("__metadata__", {})) == sorted(metadata), name
    with safe_open(str(tmp_path / "first" / "rmu" / "delta.safetensors"), framework="pt") as handle:
        assert len(handle.metadata()) == 3


def test_an_adapters_portable_tag_follows_its_weights_and_base(world, tmp_path):
    """Re-negating a run in place (same folder, new λ) or moving it onto another base changes its tag, so a shared
    --lora-merge-cache cannot serve the adapter as it was; an identical copy elsewhere keeps it."""
    from spunge_merge.merge.recipe import adapter_tag
    from spunge_merge.models import resolve_model

    run = Path(shutil.copytree(world["tvn"][0], tmp_path / "alpha"))
    base = resolve_model(world["base"]).describe()
    before = adapter_tag(run, base)
    assert adapter_tag(Path(shutil.copytree(run, tmp_path / "copy" / "alpha")), base) == before
    assert adapter_tag(run, {**base, "fingerprint": "another base"}) != before
    result = CliRunner().invoke(app, ["negate", str(run), "--lambda", "0.25"])
    assert result.exit_code == 0, result.output
    assert adapter_tag(run, base) != before


def test_save_tensors_refuses_a_non_finite_tensor_before_writing_and_sorts_the_metadata(tmp_path):
    from safetensors import safe_open

    from spunge_merge.tensorfiles import save_tensors

    target = tmp_path / "delta.safetensors"
    bad = {"ok": torch.ones(4), "w": torch.tensor([1.0, float("inf"), float("nan")])}
    with pytest.raises(SpungeError, match=r"tensor w: 2 of 3 values are inf or nan in float32 \(a test setting\)"):
        save_tensors(target, bad, {"format": "pt"}, cause="a test setting")
    with pytest.raises(SpungeError, match="in float8_e4m3fn"):  # torch has no isfinite for float8
        save_tensors(target, {"q": torch.tensor([float("nan")]).to(torch.float8_e4m3fn)}, None, cause="x")
    assert not target.exists()
    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(2, dtype=torch.bfloat16)}
    metadata = {"zeta": "1", "format": "pt", "alpha": "ü" * 3, "mid": "x"}
    save_tensors(target, tensors, metadata, cause="x")
    raw = target.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert list(header["__metadata__"]) == sorted(metadata)
    with safe_open(str(target), framework="pt") as handle:
        assert handle.metadata() == metadata
        assert all(torch.equal(handle.get_tensor(name), tensor) for name, tensor in tensors.items())
