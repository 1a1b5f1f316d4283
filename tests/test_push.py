"""`spunge push` and the model card, against a local fake of the Hub API (tests/fake_hub.py).

Nothing here reaches the internet: the client talks to 127.0.0.1 only. In-process tests patch
`huggingface_hub.constants` (it reads HF_ENDPOINT at import time); the subprocess tests run the
real `spunge` entry point with HF_ENDPOINT in its environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_hub import FakeHub
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.numpy import save_file
from typer.testing import CliRunner

from spunge_merge.card import build_model_card
from spunge_merge.cli import app
from spunge_merge.fsutil import human_bytes
from spunge_merge.hub import find_secrets, path_replacements, push_model, scrub_local_paths
from spunge_merge.provenance import write_provenance
from spunge_merge.unlearn import registry

TOKEN = "hf_" + "TestTokenForTheFakeHubOnly" + "x" * 8  # 34 characters after hf_, like a real token
OTHER_TOKEN = "hf_" + "y" * 34
REPO = "alice/tiny-spunge"
GROUPS = {"women": 20, "immigrant": 35, "lgbtq": 113}
TVN_CONFIG = {"lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-4, "epochs": 3, "lambda": 1.0, "seed": 0}
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def hub():
    with FakeHub(tokens={TOKEN: "alice", OTHER_TOKEN: "mallory"}, orgs={"alice": {"spunge-lab"}}) as fake:
        yield fake


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch):
    """Point huggingface_hub (already imported) at the fake Hub, with TOKEN in HF_TOKEN."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the fake speaks LFS, not Xet
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / "agent_harnesses.json"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return hub


def _writable_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return dst


@pytest.fixture
def base_dir(tiny_model, tmp_path) -> Path:
    """The 'base model': the tiny model with a card that states its licence."""
    base = _writable_copy(tiny_model, tmp_path / "base")
    (base / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# tiny base\n", encoding="utf-8")
    return base


@pytest.fixture
def merged_dir(tiny_model, base_dir, tmp_path) -> Path:
    """A merged-model dir in the contract format: weights + tokenizer, recipe, spunge.json."""
    out = _writable_copy(tiny_model, tmp_path / "merged")
    runs_root = tmp_path / "runs"
    recipe = (f"merge_method: ties\nbase_model: {base_dir}\nmodels:\n"
              + "".join(f"  - model: {runs_root}/{g}\n    parameters:\n      weight: 1.0\n      density: 0.5\n" for g in GROUPS)
              + "parameters:\n  normalize: true\ndtype: float32\n")
    (out / "mergekit_config.yml").write_text(recipe, encoding="utf-8")
    split = tmp_path / "split"  # what `spunge split` leaves beside the subset files
    split.mkdir()
    (split / "manifest.json").write_text(json.dumps({
        "kind": "split", "column": "target_group", "source": {"path": "/data/toxigen/toxigen_prompts.jsonl", "sha256": "c" * 64},
        "filters": [{"column": "label", "op": "==", "values": ["hate"], "expr": "label == hate"}]}))
    runs = [{"name": g, "attribute": {"column": "target_group", "value": g}, "value": g, "method": "tvn",
             "config": TVN_CONFIG, "rows": n, "path": str(runs_root / g), "result": {"lambda": 1.0, "steps": 12},
             "data": {"name": g, "value": g, "column": "target_group", "path": str(split / f"{g}.jsonl"), "rows": n}}
            for g, n in GROUPS.items()]
    write_provenance(out, kind="merged-model", fingerprint="f" * 64, method="ties",
                     base_model={"ref": "HuggingFaceTB/SmolLM2-135M-Instruct", "path": str(base_dir), "fingerprint": "b" * 64},
                     merge={"method": "ties", "parameters": {"density": 0.5, "weight": 1.0, "normalize": True}},
                     config={"method": "ties", "density": 0.5}, recipe=recipe, runs=runs,
                     attribute={"column": "target_group", "values": list(GROUPS)},
                     data=[run["data"] for run in runs], result={"tensors": 75})
    (out / ".cache" / "huggingface").mkdir(parents=True)
    (out / ".cache" / "huggingface" / "upload.lock").write_text("local state, never pushed")
    return out


def _expected_files(model_dir: Path) -> set[str]:
    """Independent listing: every non-hidden file, plus the README.md card."""
    found = {"README.md"}
    for root, dirs, names in os.walk(model_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if not name.startswith("."):
                found.add(Path(root, name).relative_to(model_dir).as_posix())
    return found


def _push(*args: str):
    return CliRunner().invoke(app, ["push", *args], catch_exceptions=False)


def _assert_token_nowhere(*texts: str, roots: list[Path]) -> None:
    for text in texts:
        assert TOKEN not in text
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), f"token written to {path}"


# --------------------------------------------------------------------------- a real push


def test_push_creates_repo_and_commits_every_file_in_one_commit(hub_env, merged_dir, tmp_path, capfd):
    hub = hub_env
    result = _push(str(merged_dir), "--repo", REPO, "--private", "--dataset", "toxigen/toxigen-data")
    assert result.exit_code == 0, result.output

    creates = hub.requests_to(r"^/api/repos/create$", "POST")
    assert len(creates) == 1
    assert creates[0].json() == {"name": "tiny-spunge", "organization": "alice", "visibility": "private", "type": "model"}
    assert hub.repos[REPO].private is True
    api_calls = [r for r in hub.requests if r.path.startswith(("/api/repos/", "/api/models/"))]
    assert api_calls and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in api_calls)

    # exactly one commit, holding exactly the directory's files (hidden ones excluded) plus the card
    assert len(hub.requests_to(r"/commit/", "POST")) == 1 and len(hub.commits) == 1
    commit = hub.commits[0]
    expected = _expected_files(merged_dir)
    assert ".cache/huggingface/upload.lock" not in expected
    assert set(commit.added) == expected and commit.deleted == []
    assert commit.revision == "main" and not commit.create_pr
    for path in expected:
        if path in ("spunge.json", "mergekit_config.yml"):  # they name local paths: published without them
            assert str(tmp_path).encode() not in commit.added[path].data, path
            continue
        assert commit.added[path].data == (merged_dir / path).read_bytes(), path
    published = json.loads(commit.added["spunge.json"].data)
    assert published.keys() == json.loads((merged_dir / "spunge.json").read_text()).keys()
    assert [run["path"] for run in published["runs"]] == [f"./{g}" for g in GROUPS]
    assert published["base_model"]["path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # the weights went through the LFS protocol (batch, upload, verify), not inline in the commit
    lines = {line["value"]["path"]: line["key"] for line in hub.requests_to(r"/commit/")[0].ndjson()[1:]}
    assert lines["model.safetensors"] == "lfsFile" and lines["config.json"] == "file"
    sha = hashlib.sha256((merged_dir / "model.safetensors").read_bytes()).hexdigest()
    assert hub.requests_to(rf"^/lfs-upload/{sha}$", "PUT") and hub.requests_to(r"^/lfs-verify$")
    assert f"{hub.url}/{REPO}/commit/{commit.oid}" in result.output

    # the card on the Hub is the regenerated README.md, with Hub metadata
    card_path = tmp_path / "pushed-README.md"
    card_path.write_bytes(commit.added["README.md"].data)
    card = ModelCard.load(card_path)
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.base_model_relation == "merge"
    assert card.data.license == "mit"  # from the base model's own card
    assert card.data.library_name == "transformers"
    assert {"spunge", "unlearning", "mergekit", "merge"} <= set(card.data.tags)
    assert card.data.datasets == ["toxigen/toxigen-data"]
    assert (merged_dir / "README.md").read_bytes() == commit.added["README.md"].data

    # what landed on the Hub is a model transformers loads, with the same weights
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for path, data in hub.files(REPO).items():
        (pulled / path).parent.mkdir(parents=True, exist_ok=True)
        (pulled / path).write_bytes(data)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(pulled)
    with safe_open(str(merged_dir / "model.safetensors"), "pt") as local:
        name = "model.layers.3.mlp.down_proj.weight"
        assert model.state_dict()[name].equal(local.get_tensor(name))

    captured = capfd.readouterr()
    _assert_token_nowhere(result.output, captured.out, captured.err, roots=[tmp_path])


def test_revision_creates_the_branch_and_commits_only_there(hub_env, merged_dir):
    hub = hub_env
    result = _push(str(merged_dir), "--repo", REPO, "--revision", "tvn-ties")
    assert result.exit_code == 0, result.output
    assert len(hub.requests_to(r"/branch/tvn-ties$", "POST")) == 1
    assert [c.revision for c in hub.commits] == ["tvn-ties"]
    assert hub.requests_to(r"/commit/tvn-ties$", "POST")
    assert set(hub.files(REPO, "main")) == {".gitattributes"}
    assert set(hub.files(REPO, "tvn-ties")) == _expected_files(merged_dir) | {".gitattributes"}
    assert "private" not in hub.requests_to(r"^/api/repos/create$")[0].json().get("visibility", "")

    # pushing the same directory again: the branch exists (409 tolerated), nothing changed, no new commit
    again = _push(str(merged_dir), "--repo", REPO, "--revision", "tvn-ties")
    assert again.exit_code == 0, again.output
    assert len(hub.requests_to(r"/branch/tvn-ties$", "POST")) == 2
    assert len(hub.commits) == 1


def test_create_pr_opens_a_pull_request_and_leaves_main_alone(hub_env, merged_dir):
    hub = hub_env
    hub.add_repo(REPO, files={"README.md": b"---\nlicense: mit\n---\nold card\n"})
    result = _push(str(merged_dir), "--repo", REPO, "--create-pr", "--commit-message", "TIES merge of 3 TVN runs")
    assert result.exit_code == 0, result.output
    (commit_request,) = hub.requests_to(r"/commit/main$", "POST")
    assert commit_request.query == {"create_pr": ["1"]}
    assert commit_request.ndjson()[0]["value"]["summary"] == "TIES merge of 3 TVN runs"
    assert hub.repos[REPO].pull_requests == [{"num": 1, "target": "main", "title": "TIES merge of 3 TVN runs"}]
    assert hub.files(REPO, "main")["README.md"] == b"---\nlicense: mit\n---\nold card\n"
    assert set(hub.files(REPO, "refs/pr/1")) == _expected_files(merged_dir) | {".gitattributes"}
    assert f"{hub.url}/{REPO}/discussions/1" in result.output

    # a later push onto the open pull request's ref
    (merged_dir / "notes.md").write_text("second iteration\n")
    again = _push(str(merged_dir), "--repo", REPO, "--revision", "refs/pr/1")
    assert again.exit_code == 0, again.output
    assert [c.revision for c in hub.commits] == ["refs/pr/1", "refs/pr/1"] and not hub.requests_to(r"/branch/")
    assert set(hub.commits[1].added) == {"notes.md"}  # unchanged files are not sent again
    assert hub.files(REPO, "refs/pr/1")["notes.md"] == b"second iteration\n"


def test_stale_weight_files_on_the_branch_are_removed_in_the_same_commit(hub_env, merged_dir):
    """A leftover pytorch_model.bin or old shard would shadow or mix with the new weights."""
    hub = hub_env
    hub.add_repo(REPO, files={"pytorch_model.bin": b"old pickle", "model-00001-of-00002.safetensors": b"old shard",
                              "model.safetensors.index.json": b"{}", "notes.txt": b"kept"})
    result = _push(str(merged_dir), "--repo", REPO)
    assert result.exit_code == 0, result.output
    (commit,) = hub.commits
    assert sorted(commit.deleted) == ["model-00001-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
    assert set(hub.files(REPO)) == _expected_files(merged_dir) | {".gitattributes", "notes.txt"}


def test_dry_run_lists_files_and_card_without_token_or_network(hub_env, merged_dir, monkeypatch):
    hub = hub_env
    monkeypatch.delenv("HF_TOKEN")
    before = sorted(p.name for p in merged_dir.iterdir())
    result = _push(str(merged_dir), "--repo", REPO, "--dry-run")
    assert result.exit_code == 0, result.output
    assert hub.requests == []
    assert sorted(p.name for p in merged_dir.iterdir()) == before  # README.md not written either
    size = (merged_dir / "model.safetensors").stat().st_size
    assert f"lfs      {human_bytes(size)}  model.safetensors" in result.output
    assert f"Would commit {len(_expected_files(merged_dir))} files" in result.output
    card_text = result.output.split("----- README.md (model card) -----\n")[1].split("----- end of README.md -----")[0]
    local_card = build_model_card(merged_dir, repo_id=REPO, method_descriptions=registry.descriptions()).content
    # published without this machine's paths
    assert card_text == scrub_local_paths(local_card, path_replacements(merged_dir)) and str(merged_dir.parent) not in card_text
    assert "Dry run: nothing was uploaded." in result.output

    plan = push_model(merged_dir, REPO, dry_run=True)
    assert {f["path"] for f in plan["files"]} == _expected_files(merged_dir)
    assert {f["path"]: f["size"] for f in plan["files"]}["config.json"] == (merged_dir / "config.json").stat().st_size
    assert plan["commit_url"] is None


# --------------------------------------------------------------------------- refusals


def _shard(merged_dir: Path) -> dict:
    """Split model.safetensors into two shards with an index (what save_pretrained does for big models)."""
    with safe_open(str(merged_dir / "model.safetensors"), "np") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, merged_dir / file, metadata={"format": "pt"})
    (merged_dir / "model.safetensors").unlink()
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": {k: file for file, keys in halves.items() for k in keys}}
    (merged_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


def test_sharded_weights_with_a_consistent_index_pass(hub_env, merged_dir):
    _shard(merged_dir)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(merged_dir)  # the shards are a valid checkpoint
    result = _push(str(merged_dir), "--repo", REPO, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "2 safetensors shard(s)" in result.output and "index consistent" in result.output


def _break_index_missing_shard(d: Path) -> str:
    _shard(d)
    (d / "model-00002-of-00002.safetensors").unlink()
    return "lists shard(s) that are not in the directory: model-00002-of-00002.safetensors"


def _break_index_unlisted_shard(d: Path) -> str:
    index = _shard(d)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return "does not list shard(s) model-00002-of-00002.safetensors"


def _break_index_wrong_tensor(d: Path) -> str:
    index = _shard(d)
    name = sorted(index["weight_map"])[0]
    index["weight_map"][name] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return f"maps tensor {name} to model-00002-of-00002.safetensors, which does not hold it"


def _break_truncated(d: Path) -> str:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-64])
    return "model.safetensors: not a readable safetensors file"


def _break_pickle(d: Path) -> str:
    (d / "training_args.bin").write_bytes(b"\x80\x04\x95 pickled")
    return "pickle-format files training_args.bin"


def _break_token_in_text(d: Path) -> str:
    (d / "notes.txt").write_text(f"run notes\nexport HF_TOKEN={OTHER_TOKEN}\n")
    return "notes.txt:2 contains what looks like a Hugging Face token"


def _break_own_token(d: Path) -> str:
    record = json.loads((d / "spunge.json").read_text())
    record["config"]["hub_auth"] = TOKEN
    (d / "spunge.json").write_text(json.dumps(record))
    return "spunge.json:1 contains what looks like your Hugging Face token"


def _break_missing_config(d: Path) -> str:
    (d / "config.json").unlink()
    return "config.json is missing"


def _break_unloadable_config(d: Path) -> str:
    (d / "config.json").write_text(json.dumps({"model_type": "not-a-real-architecture"}))
    return "config.json: transformers cannot load it"


@pytest.mark.parametrize("breaker", [_break_pickle, _break_token_in_text, _break_own_token, _break_missing_config,
                                     _break_unloadable_config, _break_index_missing_shard, _break_index_unlisted_shard,
                                     _break_index_wrong_tensor, _break_truncated])
def test_refuses_a_directory_that_fails_a_check(hub_env, merged_dir, breaker):
    expected = breaker(merged_dir)
    for args in (["--dry-run"], []):
        result = _push(str(merged_dir), "--repo", REPO, *args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: refusing to push"), result.output
        assert expected in lines[0]
        assert TOKEN not in result.output and OTHER_TOKEN not in result.output
    assert hub_env.requests == [] and hub_env.repos == {}


def test_files_over_the_hub_limit_are_refused(hub_env, merged_dir, monkeypatch):
    from spunge_merge.hub import plan as hub_plan  # where plan_push reads the limit

    size = (merged_dir / "model.safetensors").stat().st_size
    monkeypatch.setattr(hub_plan, "HUB_FILE_LIMIT", size - 1)  # instead of writing a 50 GB file
    result = _push(str(merged_dir), "--repo", REPO)
    assert result.exit_code == 2
    assert f"model.safetensors is {human_bytes(size)}, over the Hub's {human_bytes(size - 1)} single-file limit" in result.output
    assert hub_env.requests == []


def test_allow_pickle_lets_a_pickle_through(hub_env, merged_dir):
    _break_pickle(merged_dir)
    result = _push(str(merged_dir), "--repo", REPO, "--allow-pickle")
    assert result.exit_code == 0, result.output
    assert "training_args.bin" in hub_env.commits[0].added


def test_no_token_is_one_line_and_sends_nothing(hub_env, merged_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = _push(str(merged_dir), "--repo", REPO)
    assert result.exit_code == 2
    assert result.output.strip() == "Error: no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)"
    assert hub_env.requests == []


@pytest.mark.parametrize(("repo", "token", "expected"), [
    ("bob/tiny-spunge", TOKEN, "permission denied on bob/tiny-spunge (403 Forbidden)"),
    (REPO, "hf_" + "z" * 34, "rejected the token (401 Unauthorized)"),
])
def test_hub_refusals_are_one_line_and_commit_nothing(hub_env, merged_dir, monkeypatch, repo, token, expected):
    monkeypatch.setenv("HF_TOKEN", token)
    result = _push(str(merged_dir), "--repo", repo)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and lines[0].endswith("nothing was committed"), result.output
    assert token not in result.output
    assert hub_env.commits == [] and hub_env.lfs_objects == {}


def test_pushing_into_someone_elses_existing_repo_is_refused(hub_env, merged_dir):
    hub = hub_env
    hub.add_repo("bob/public-model", files={"README.md": b"bob's"})
    result = _push(str(merged_dir), "--repo", "bob/public-model")
    assert result.exit_code == 2
    assert "permission denied on bob/public-model (403 Forbidden)" in result.output
    assert hub.commits == [] and hub.files("bob/public-model")["README.md"] == b"bob's"


def test_create_pr_works_on_a_repo_the_user_can_only_read(hub_env, merged_dir):
    """Contributing a variant to someone else's public repo: a pull request needs no write access."""
    hub = hub_env
    hub.add_repo("bob/public-model", files={"README.md": b"bob's"})
    result = _push(str(merged_dir), "--repo", "bob/public-model", "--create-pr")
    assert result.exit_code == 0, result.output
    assert [(c.repo_id, c.revision, c.create_pr) for c in hub.commits] == [("bob/public-model", "refs/pr/1", True)]
    assert hub.files("bob/public-model")["README.md"] == b"bob's"


def test_network_unreachable_is_one_line(hub_env, merged_dir, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as sock:  # a port on 127.0.0.1 that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    result = _push(str(merged_dir), "--repo", REPO)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Hub at {closed} (network unreachable" in lines[0], result.output


def test_invalid_repo_id_is_refused_before_anything(hub_env, merged_dir):
    result = _push(str(merged_dir), "--repo", "just-a-name")
    assert result.exit_code == 2 and "must be OWNER/NAME" in result.output
    assert hub_env.requests == []


# --------------------------------------------------------------------------- the real entry point


def _run_cli(args: list[str], hub_url: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(home), HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0",
               OMP_NUM_THREADS="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return subprocess.run([sys.executable, "-m", "spunge_merge", "push", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=240)


def test_cli_subprocess_reads_hf_endpoint_and_keeps_the_token_secret(hub, merged_dir, tmp_path):
    home = tmp_path / "hf-home"
    done = _run_cli([str(merged_dir), "--repo", "spunge-lab/tiny-spunge"], hub.url, home)
    assert done.returncode == 0, done.stderr
    assert [c.repo_id for c in hub.commits] == ["spunge-lab/tiny-spunge"]
    assert hub.requests_to(r"^/api/repos/create$")[0].json()["organization"] == "spunge-lab"
    assert f"Commit: {hub.url}/spunge-lab/tiny-spunge/commit/{hub.commits[0].oid}" in done.stdout
    _assert_token_nowhere(done.stdout, done.stderr, roots=[tmp_path])


# --------------------------------------------------------------------------- the card


def test_card_describes_runs_recipe_and_eval_results(merged_dir):
    eval_dir = merged_dir / "eval"
    eval_dir.mkdir()
    toxicity = {"kind": "toxicity", "model": str(merged_dir), "toxic_fraction": 0.0421,
                "per_group": {"women": {"toxic_fraction": 0.031, "n": 50}, "lgbtq": {"toxic_fraction": 0.0552, "n": 50}}}
    (eval_dir / "toxicity.json").write_text(json.dumps(toxicity))
    harness = {"kind": "harness", "model": str(merged_dir), "results": {"arc_easy": {"acc,none": 0.5531}}}
    (eval_dir / "harness.json").write_text(json.dumps(harness))
    (eval_dir / "compare.md").write_text("# Base vs merged\n\n| model | toxic |\n|---|---|\n| base | 0.12 |\n")
    (eval_dir / "radar.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    card = build_model_card(merged_dir, repo_id=REPO, method_descriptions=registry.descriptions())
    text = card.text
    assert registry.get_method("tvn").description in text  # the method described from its registry record

    recipe = (merged_dir / "mergekit_config.yml").read_text()
    assert f"```yaml\n{recipe.rstrip()}\n```" in text  # the exact recipe
    for group, rows in GROUPS.items():
        assert f"| {group} | {group} | {rows} | tvn | 1 | 12 |" in text
    assert f"{sum(GROUPS.values())} texts in all, taken from toxigen_prompts.jsonl (rows kept where label == hate)" in text
    assert "`target_group`" in text and str(merged_dir.parent) not in text.split("```yaml")[0]  # no local paths
    assert "| learning_rate | 0.0001 |" in text and "| lambda | 1 |" in text
    assert "| toxic_fraction | 0.0421 |" in text
    assert "| lgbtq | 0.0552 | 50 |" in text and "| arc_easy | 0.5531 |" in text
    assert "#### Base vs merged" in text and "| base | 0.12 |" in text
    assert "![radar](eval/radar.png)" in text
    assert f'model_id = "{REPO}"' in text
    assert card.data.to_dict()["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not find_secrets(card.content)


def test_eval_summaries_are_embedded_and_excluded_files_stay_out(hub_env, merged_dir):
    base_eval = merged_dir / "eval" / "base"
    base_eval.mkdir(parents=True)
    (base_eval / "toxicity.json").write_text(json.dumps({"kind": "toxicity", "model": {"ref": "smollm2-135m"}, "overall": {"pct": 12.5}}))
    (base_eval / "toxicity.md").write_text("# Toxicity: smollm2-135m\n\n- **Overall: 12.5 % toxic** (25/200)\n")
    (base_eval / "generations.jsonl").write_text('{"prompt": "p", "generation": "g"}\n')
    (base_eval / "toxicity_radar.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    text = build_model_card(merged_dir).text
    assert "### `eval/base` (smollm2-135m)" in text
    assert "#### Toxicity: smollm2-135m\n\n- **Overall: 12.5 % toxic** (25/200)" in text  # the eval's own summary
    assert "| overall.pct |" not in text  # not the generic table
    assert "![toxicity radar](eval/base/toxicity_radar.png)" in text

    result = _push(str(merged_dir), "--repo", REPO, "--exclude", "eval/*/generations.jsonl", "--exclude", "*.png")
    assert result.exit_code == 0, result.output
    (commit,) = hub_env.commits
    assert "eval/base/toxicity.md" in commit.added and "eval/base/generations.jsonl" not in commit.added
    assert "eval/base/toxicity_radar.png" not in commit.added
    assert b"toxicity_radar.png" not in commit.added["README.md"].data  # no broken image in the card


def test_eval_folders_outside_the_model_dir_are_pushed_and_shown(hub_env, merged_dir, tmp_path):
    """A pipeline keeps evals in runs/NAME/eval/<model>/ and eval/compare/: --eval brings them along."""
    evals = tmp_path / "runs" / "demo" / "eval"
    (evals / "compare").mkdir(parents=True)
    (evals / "compare" / "compare.json").write_text(json.dumps({"kind": "compare", "model": ["base", "spunge"]}))
    (evals / "compare" / "compare.md").write_text("# Comparison\n\n| model | toxic % |\n|---|---|\n| base | 14.2 |\n| spunge | 8.1 |\n")
    (evals / "spunge").mkdir()
    (evals / "spunge" / "toxicity.json").write_text(json.dumps({"kind": "toxicity", "model": {"ref": "runs/demo/merge/spunge"}}))
    (evals / "spunge" / "toxicity.md").write_text("# Toxicity: spunge\n\n- **Overall: 8.1 % toxic**\n")
    (evals / "spunge" / "toxicity_radar.png").write_bytes(b"\x89PNG\r\n\x1a\n\0")
    result = _push(str(merged_dir), "--repo", REPO, "--eval", str(evals / "compare"), "--eval", str(evals / "spunge"))
    assert result.exit_code == 0, result.output
    (commit,) = hub_env.commits
    for name in ("compare/compare.json", "compare/compare.md", "spunge/toxicity.json", "spunge/toxicity.md",
                 "spunge/toxicity_radar.png"):
        assert commit.added[f"eval/{name}"].data == (evals / name).read_bytes()
    card = commit.added["README.md"].data.decode()
    assert "| spunge | 8.1 |" in card and "- **Overall: 8.1 % toxic**" in card
    assert "![toxicity radar](eval/spunge/toxicity_radar.png)" in card
    assert card.index("### `eval/compare`") < card.index("### `eval/spunge`")


def test_card_tolerates_a_sparse_record(tmp_path):
    (tmp_path / "spunge.json").write_text(json.dumps({"kind": "merged-model", "base_model": {"ref": str(tmp_path)}}))
    card = build_model_card(tmp_path)
    metadata = yaml.safe_load(card.content.split("---\n")[1])
    assert metadata["tags"][:4] == ["spunge", "unlearning", "mergekit", "merge"]
    assert metadata["library_name"] == "transformers"
    assert "base_model" not in metadata  # a local path is not a Hub id: no broken metadata link
    assert "No `spunge eval` results" in card.text and "The directory records no unlearning runs." in card.text


def test_card_data_sources_never_mistake_a_relative_file_for_a_hub_dataset(tmp_path):
    runs = [{"name": "women", "value": "women", "method": "rmu", "rows": 20, "attribute": {"column": "target_group", "value": "women"},
             "data": {"path": "split/women.jsonl", "column": "target_group", "rows": 20}},  # relative, manifest not at hand
            {"name": "all", "value": None, "method": "rmu", "rows": 500, "data": {"path": "toxigen/toxigen-data", "rows": 500}}]
    (tmp_path / "spunge.json").write_text(json.dumps({"kind": "merged-model", "runs": runs}))
    card = build_model_card(tmp_path)
    assert card.data.datasets == ["toxigen/toxigen-data"]
    assert "taken from the split `split/`, toxigen/toxigen-data" in card.text


def test_alias_base_resolves_to_the_upstream_hub_id_and_licence(tmp_path):
    alias_dir = tmp_path / "smollm2"
    alias_dir.mkdir()
    (alias_dir / "spunge-gguf.json").write_text(json.dumps(
        {"alias": "smollm2-135m", "original": "HuggingFaceTB/SmolLM2-135M-Instruct", "source": "x.Q4_1.gguf"}))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "spunge.json").write_text(json.dumps({"base_model": {"ref": "smollm2-135m", "path": str(alias_dir)}}))
    card = build_model_card(tmp_path / "m")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.license == "apache-2.0"
    assert "dequantized" in card.text


def test_secret_patterns_flag_tokens_but_not_tokenizer_vocabularies(tiny_model):
    assert find_secrets(f"token: {OTHER_TOKEN}") == [(1, "a Hugging Face token (hf_...)")]
    assert find_secrets("aws = AKIAABCDEFGHIJKLMNOP")[0][1] == "an AWS access key id"
    assert find_secrets("-----BEGIN OPENSSH PRIVATE KEY-----")[0][1] == "a private key"
    assert find_secrets('"wandb_api_key": "0123456789abcdef0123456789abcdef01234567"')[0][1] == "a credential assignment"
    assert find_secrets("sha256: " + "ab" * 32) == []
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert find_secrets((tiny_model / name).read_text()) == [], name
