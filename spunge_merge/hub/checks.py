"""The checks a model directory passes before it is pushed: config, weights, shard index, credentials, repo id."""

from __future__ import annotations

import json
import re
from pathlib import Path

from spunge_merge.card import is_excluded
from spunge_merge.errors import SpungeError

LFS_THRESHOLD = 10 * 1000**2  # above this size (or for binary files) the Hub stores a file through LFS/Xet
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")  # torch/pickle formats
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
INDEX_NAME = "model.safetensors.index.json"
_SCAN_LIMIT = 200 * 1000**2  # text files larger than this are not scanned (none are expected)
_SECRET_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("a Hugging Face token (hf_...)", re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")),
    ("a Hugging Face org token (api_org_...)", re.compile(r"(?<![A-Za-z0-9])api_org_[A-Za-z0-9]{30,}")),
    ("an OpenAI/Anthropic API key (sk-...)", re.compile(r"(?<![A-Za-z0-9])sk-(?:proj-|ant-[a-z0-9]+-)?[A-Za-z0-9_-]{32,}")),
    ("a GitHub token", re.compile(r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})")),
    ("an AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])")),
    ("a Google API key", re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_-]{35}")),
    ("a Slack token", re.compile(r"(?<![A-Za-z0-9])xox[abprs]-[0-9A-Za-z-]{10,}")),
    ("a private key", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    ("a credential assignment", re.compile(
        r"(?i)(?:api[_-]?key|secret[_-]?key|client[_-]?secret|access[_-]?token|auth[_-]?token|hf[_-]?token|"
        r"wandb[_-]?api[_-]?key|password)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9_\-+/]{20,}")),
)


def collect_files(model_dir: Path, exclude: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Every regular file under `model_dir` that is not excluded (see `is_excluded`), sorted."""
    found = []
    for path in sorted(model_dir.rglob("*")):
        relative = path.relative_to(model_dir)
        if path.is_file() and not is_excluded(relative.as_posix(), exclude):
            found.append(relative)
    return found


def find_secrets(text: str, *, known: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """(line number, kind) of every token-like string in `text`; the match itself is never returned."""
    hits = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        for secret in known:
            if secret and secret in line:
                hits.append((line_number, "your Hugging Face token"))
        for kind, pattern in _SECRET_PATTERNS:
            if pattern.search(line):
                hits.append((line_number, kind))
    return hits


def _looks_binary(path: Path) -> bool:
    """A NUL byte early in the file (the Hub's own test looks at the first 512 bytes)."""
    with open(path, "rb") as handle:
        return b"\0" in handle.read(8192)


def _safetensors_keys(path: Path) -> tuple[set[str], str]:
    """Tensor names of a safetensors file, and the text of its header metadata (scanned for secrets)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return set(handle.keys()), json.dumps(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise _Problem(f"{path.name}: not a readable safetensors file ({exc})") from exc


class _Problem(Exception):
    """One failed check (collected, then reported together)."""


def _check_config(model_dir: Path, files: list[Path]) -> str:
    if Path("config.json") not in files:
        raise _Problem(f"{model_dir}/config.json is missing (a Hub model needs a config that transformers loads)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except Exception as exc:  # any failure means users of the Hub repo could not load it either
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _Problem(f"{model_dir}/config.json: transformers cannot load it ({reason})") from exc
    return ", ".join(config.architectures or [config.model_type])


def _check_adapter(model_dir: Path, files: list[Path]) -> str:
    """A LoRA run: peft must read its `adapter_config.json` (what the Hub repo's users will load)."""
    from peft import PeftConfig

    try:
        config = PeftConfig.from_pretrained(str(model_dir))
    except Exception as exc:  # any failure means users of the Hub repo could not load it either
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _Problem(f"{model_dir}/adapter_config.json: peft cannot load it ({reason})") from exc
    if Path("adapter_model.safetensors") not in files:
        raise _Problem(f"{model_dir}/adapter_model.safetensors is missing (the adapter's weights)")
    return f"{getattr(config.peft_type, 'value', config.peft_type)} adapter"


def _check_loadable(model_dir: Path, files: list[Path]) -> str:
    """A model (config.json, transformers) or a LoRA adapter (adapter_config.json, peft); a tensor-delta
    run holds only changed tensors and is no model until materialized on its base."""
    if Path("config.json") not in files and Path("adapter_config.json") in files:
        return _check_adapter(model_dir, files)
    if Path("config.json") not in files and Path("delta.safetensors") in files:
        raise _Problem(f"{model_dir} is a tensor-delta run (delta.safetensors holds only the changed tensors, no model): "
                       "push it with --materialize, which writes the base model with them and pushes that")
    return _check_config(model_dir, files)


def _check_weights(model_dir: Path, files: list[Path], allow_pickle: bool) -> tuple[dict, list[str], list[str]]:
    """Safetensors only (unless allowed), index ⟷ shards consistent, headers readable."""
    problems: list[str] = []
    pickles = [f.as_posix() for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
    if pickles and not allow_pickle:
        problems.append(f"pickle-format files {', '.join(pickles)}: only safetensors are pushed (pickles run code when loaded); "
                        "convert them, delete them, or pass --allow-pickle")
    shards = [f for f in files if f.suffix == ".safetensors" and len(f.parts) == 1]
    nested = [f.as_posix() for f in files if f.suffix == ".safetensors" and len(f.parts) > 1]
    metadata_texts: list[str] = []
    keys: dict[str, set[str]] = {}
    for shard in shards + [Path(p) for p in nested]:
        try:
            keys[shard.as_posix()], metadata = _safetensors_keys(model_dir / shard)
            metadata_texts.append(metadata)
        except _Problem as exc:
            problems.append(str(exc))
    index_path = model_dir / INDEX_NAME
    indexed = Path(INDEX_NAME) in files
    tensors = 0
    if indexed:
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{INDEX_NAME}: not a valid shard index ({exc})")
            weight_map = {}
        listed = set(weight_map.values())
        on_disk = {s.as_posix() for s in shards}
        if missing := sorted(listed - on_disk):
            problems.append(f"{INDEX_NAME} lists shard(s) that are not in the directory: {', '.join(missing)}")
        if unlisted := sorted(on_disk - listed):
            problems.append(f"{INDEX_NAME} does not list shard(s) {', '.join(unlisted)}")
        for shard_name in sorted(listed & on_disk):
            if shard_name not in keys:
                continue
            expected = {name for name, file in weight_map.items() if file == shard_name}
            if absent := sorted(expected - keys[shard_name]):
                problems.append(f"{INDEX_NAME} maps tensor {absent[0]} to {shard_name}, which does not hold it"
                                + (f" (+{len(absent) - 1} more)" if len(absent) > 1 else ""))
            if extra := sorted(keys[shard_name] - expected):
                problems.append(f"{shard_name} holds tensor {extra[0]} that {INDEX_NAME} does not map to it"
                                + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
        tensors = len(weight_map)
    elif len(shards) > 1:
        problems.append(f"{len(shards)} safetensors shards but no {INDEX_NAME} to say which tensor is where")
    else:
        tensors = sum(len(k) for name, k in keys.items() if "/" not in name)
    if not shards and not (pickles and allow_pickle):
        problems.append(f"{model_dir} has no *.safetensors weights")
    summary = {"shards": [s.as_posix() for s in shards], "tensors": tensors, "indexed": indexed,
               "pickles": pickles if allow_pickle else []}
    return summary, problems, metadata_texts


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo_id or repo_id.count("/") != 1:
        raise SpungeError(f"--repo '{repo_id}' must be OWNER/NAME (your user name or an organization, then the repo name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise SpungeError(f"--repo '{repo_id}' is not a valid Hub repo id ({exc})") from exc
