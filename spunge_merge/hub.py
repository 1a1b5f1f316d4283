"""Publish a merged model directory to the Hugging Face Hub: check it, then upload it in one commit.

Why one commit: `create_commit` uploads the large files first (LFS/Xet blobs are invisible until
committed) and then makes a single commit, so a failure at any point leaves the repository as
it was. (`upload_folder` may split a large folder into several commits when hf_xet is installed.)

Why the checks: a pushed repository is public and hard to take back. Before anything leaves the
machine we make sure transformers can read the config, the weights are safetensors (pickles
run code when loaded), the shard index matches the shards, no file exceeds the Hub's
single-file limit and no text file holds something that looks like a credential.

The token comes from the caller, `HF_TOKEN` or `hf auth login` (`huggingface_hub.get_token`);
it is only ever handed to `HfApi`, never printed, logged or written.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

from spunge_merge.card import MERGEKIT_RECIPE, PORTABLE_RECIPE, build_model_card, is_excluded
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_write_text, human_bytes

HUB_FILE_LIMIT = 50 * 1000**3  # the Hub refuses any single file above 50 GB
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


@dataclass(frozen=True)
class UploadFile:
    """One file of the commit: its path in the repo, its size, and where its bytes come from."""

    path_in_repo: str
    size: int
    local_path: Path | None = None  # None for content generated here (the model card)
    content: bytes | None = None
    binary: bool = False

    @property
    def storage(self) -> str:
        """How the Hub will most likely store it (it decides at preupload: large or binary files go to LFS/Xet)."""
        return "lfs" if self.size > LFS_THRESHOLD or self.binary else "regular"


@dataclass
class PushPlan:
    """What a push uploads, after the checks passed."""

    model_dir: Path
    repo_id: str
    files: list[UploadFile]
    card: str
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


# --------------------------------------------------------------------------- the checks


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


def eval_repo_paths(eval_dirs: list[str | Path] | None, model_dir: Path) -> dict[str, Path]:
    """`spunge eval` output folders kept outside the model dir -> where they go in the repo (`eval/<folder name>`)."""
    placed: dict[str, Path] = {}
    for directory in eval_dirs or []:
        directory = Path(directory)
        if not directory.is_dir():
            raise SpungeError(f"--eval {directory}: not a directory (give a `spunge eval` output folder)")
        repo_path = f"eval/{directory.resolve().name}"
        if repo_path in placed or (model_dir / repo_path).exists():
            raise SpungeError(f"--eval {directory}: {repo_path} is already taken in the upload; rename the folder")
        placed[repo_path] = directory
    return placed


def plan_push(model_dir: str | Path, repo_id: str, *, allow_pickle: bool = False, datasets: list[str] | None = None,
              exclude: list[str] | None = None, eval_dirs: list[str | Path] | None = None,
              known_secrets: tuple[str, ...] = (), method_descriptions: Mapping[str, str] | None = None) -> PushPlan:
    """Run every check on `model_dir` and return what would be committed; SpungeError lists all problems."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SpungeError(f"model directory {model_dir} does not exist")
    _check_repo_id(repo_id)
    exclude = list(exclude or [])
    files = collect_files(model_dir, exclude)
    extra_eval = eval_repo_paths(eval_dirs, model_dir)
    sources = [(model_dir / f, f.as_posix()) for f in files]
    for repo_path, directory in extra_eval.items():
        sources += [(directory / f, f"{repo_path}/{f.as_posix()}") for f in collect_files(directory)
                    if not is_excluded(f"{repo_path}/{f.as_posix()}", exclude)]
    problems: list[str] = [f"pickle-format file {name} in an --eval folder; remove it or pass --allow-pickle"
                           for path, name in sources[len(files):] if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle]
    try:
        architecture = _check_config(model_dir, files)
    except _Problem as exc:
        problems.append(str(exc))
        architecture = None
    weights, weight_problems, metadata_texts = _check_weights(model_dir, files, allow_pickle)
    problems += weight_problems

    card = build_model_card(model_dir, repo_id=repo_id, datasets=datasets, exclude=exclude, extra_eval=extra_eval,
                            method_descriptions=method_descriptions).content
    uploads: list[UploadFile] = []
    for path, name in sources:
        if name == "README.md":
            continue  # replaced by the card regenerated below
        size = path.stat().st_size
        if size > HUB_FILE_LIMIT:
            problems.append(f"{name} is {human_bytes(size)}, over the Hub's {human_bytes(HUB_FILE_LIMIT)} single-file limit; "
                            "re-shard the model (smaller max shard size)")
        binary = path.suffix == ".safetensors" or _looks_binary(path)
        if not binary and size <= _SCAN_LIMIT:
            for line, kind in find_secrets(path.read_text(encoding="utf-8", errors="replace"), known=known_secrets):
                problems.append(f"{name}:{line} contains what looks like {kind}; remove it before pushing")
        uploads.append(UploadFile(name, size, local_path=path, binary=binary))
    for text in metadata_texts:
        if find_secrets(text, known=known_secrets):
            problems.append("a safetensors header's metadata contains what looks like a credential")
    for line, kind in find_secrets(card, known=known_secrets):
        problems.append(f"the model card (README.md, built from spunge.json):{line} contains what looks like {kind}")
    uploads = _without_local_paths(uploads, model_dir)
    card = scrub_local_paths(card, path_replacements(model_dir))  # built from spunge.json: every path scrubbed
    card_bytes = card.encode("utf-8")
    uploads.append(UploadFile("README.md", len(card_bytes), content=card_bytes))
    uploads.sort(key=lambda f: f.path_in_repo)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; (+{len(problems) - 6} more)" if len(problems) > 6 else "")
        raise SpungeError(f"refusing to push {model_dir}: {shown}")
    summary = {"architecture": architecture, **weights}
    return PushPlan(model_dir=model_dir, repo_id=repo_id, files=uploads, card=card, summary=summary)


# --------------------------------------------------------------------------- no local paths in what is published

# Published as they are: a vocabulary may hold tokens such as "/usr" that only look like paths.
_VERBATIM = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "special_tokens_map.json",
             "chat_template.jinja", "chat_template.json"}
# spunge's own records: any absolute path in them is this machine's (other text files: the known folders only).
_RECORDS = {"spunge.json", MERGEKIT_RECIPE, PORTABLE_RECIPE}
# An absolute path: not inside a URL or a relative path (nothing path-like right before the slash).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~$<>:/\\-])/(?:[\w.@+=,-]+/)*[\w.@+=,-]+/?")


def path_replacements(model_dir: Path) -> list[tuple[str, str]]:
    """(local absolute path, what the published text says instead), longest first: the model directory,
    the runs' folder (as in the portable recipe), the base model, spunge's cache, the home directory."""
    from spunge_merge.models import cache_root

    record = _read_record(model_dir)
    pairs: dict[str, str] = {str(model_dir.resolve()): "."}
    runs = [Path(run["path"]) for run in record.get("runs") or [] if isinstance(run, dict) and isinstance(run.get("path"), str)
            and Path(run["path"]).is_absolute()]
    if runs:
        folder = Path(os.path.commonpath([str(run.parent) for run in runs]))
        if folder != Path(folder.anchor):
            pairs[str(folder)] = "."
    base = record.get("base_model") if isinstance(record.get("base_model"), dict) else {}
    if isinstance(base.get("path"), str) and Path(base["path"]).is_absolute():
        from spunge_merge.card import _base_model  # the card's naming of the base (Hub id, alias)

        named = _base_model(record)
        pairs[base["path"]] = named["hub_id"] or (base.get("ref") if base.get("ref") and not Path(str(base["ref"])).is_absolute()
                                                  else f"<base model>/{Path(base['path']).name}")
    pairs[str(cache_root())] = "$SPUNGE_CACHE"
    pairs[str(Path.home())] = "~"
    for key in list(pairs):  # the same folders as the resolved paths name them
        with_real = os.path.realpath(key)
        pairs.setdefault(with_real, pairs[key])
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def _read_record(model_dir: Path) -> dict:
    try:
        record = json.loads((model_dir / "spunge.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def scrub_local_paths(text: str, replacements: list[tuple[str, str]], *, every_path: bool = True) -> str:
    """`text` with local absolute paths replaced: the known folders by their portable names, and (with
    `every_path`) any other absolute path whose top folder exists on this machine by `<local>/NAME`."""
    for local, public in replacements:
        if len(local) > 1:
            text = re.sub(re.escape(local) + r"(?![\w.@+=,-])", lambda _m, public=public: public, text)
    if not every_path:
        return text

    def generic(match: re.Match) -> str:
        path = match.group(0)
        top = path.strip("/").split("/")[0]
        if top and Path("/" + top).is_dir():
            return "<local>/" + Path(path.rstrip("/")).name
        return path
    return _ABSOLUTE_PATH.sub(generic, text)


def _without_local_paths(uploads: list[UploadFile], model_dir: Path) -> list[UploadFile]:
    """The text files as published: local paths scrubbed, and `mergekit_config.yml` replaced by the portable recipe
    (the recipe as run names merge views that exist only on this machine)."""
    replacements = path_replacements(model_dir)
    portable = model_dir / PORTABLE_RECIPE
    published = []
    for upload in uploads:
        if upload.binary or upload.local_path is None or upload.size > _SCAN_LIMIT or upload.path_in_repo in _VERBATIM:
            published.append(upload)
            continue
        source = portable if upload.path_in_repo == MERGEKIT_RECIPE and portable.is_file() else upload.local_path
        original = upload.local_path.read_bytes()
        text = scrub_local_paths(source.read_text(encoding="utf-8", errors="replace"), replacements,
                                 every_path=upload.path_in_repo in _RECORDS)
        data = text.encode("utf-8")
        published.append(upload if data == original else UploadFile(upload.path_in_repo, len(data), content=data))
    return published


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo_id or repo_id.count("/") != 1:
        raise SpungeError(f"--repo '{repo_id}' must be OWNER/NAME (your user name or an organization, then the repo name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise SpungeError(f"--repo '{repo_id}' is not a valid Hub repo id ({exc})") from exc


# --------------------------------------------------------------------------- the upload


def resolve_token(token: str | None = None) -> str:
    """The explicit token, else HF_TOKEN, else the `hf auth login` token; SpungeError when there is none."""
    from huggingface_hub import get_token

    resolved = token or get_token()
    if not resolved:
        raise SpungeError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    return resolved


def push_model(model_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
               create_pr: bool = False, commit_message: str | None = None, dry_run: bool = False,
               allow_pickle: bool = False, token: str | None = None, datasets: list[str] | None = None,
               exclude: list[str] | None = None, eval_dirs: list[str | Path] | None = None,
               method_descriptions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Check `model_dir`, regenerate its model card, and commit it to `repo_id` in one commit.

    Returns what was (or, with `dry_run`, would be) uploaded: `files` [{path, size, storage}],
    `total_size`, `card`, `deleted` (stale weight files removed from the branch), `repo_url`,
    `commit_url` and `pr_url` (None on a dry run). A dry run needs no token and contacts nothing.
    `exclude` globs (`eval/generations.jsonl`, `eval/*`) keep files out; hidden paths are always left out.
    `eval_dirs`: `spunge eval` output folders kept outside `model_dir`, pushed as `eval/<folder name>/`
    and shown in the card (e.g. a pipeline's `runs/NAME/eval/compare`).
    """
    if dry_run:  # no token needed; the user's own token, when there is one, is still looked for in the files
        from huggingface_hub import get_token

        try:
            known = tuple(t for t in (token, get_token()) if t)
        except Exception:  # e.g. an OIDC exchange that fails: a dry run does not need the token
            known = (token,) if token else ()
    else:
        token = resolve_token(token)
        known = (token,)
    plan = plan_push(model_dir, repo_id, allow_pickle=allow_pickle, datasets=datasets, exclude=exclude, eval_dirs=eval_dirs,
                     known_secrets=known, method_descriptions=method_descriptions)
    result: dict[str, Any] = {
        "repo_id": repo_id, "private": private, "revision": revision, "create_pr": create_pr, "dry_run": dry_run,
        "files": [{"path": f.path_in_repo, "size": f.size, "storage": f.storage} for f in plan.files],
        "total_size": plan.total_size, "card": plan.card, "checks": plan.summary,
        "deleted": [], "repo_url": None, "commit_url": None, "pr_url": None,
    }
    if dry_run:
        return result
    message = commit_message or f"Upload {plan.model_dir.name} (spunge merged model)"
    # The card is uploaded from memory; the directory is touched only after the commit exists, so a failed
    # push (offline, refused, interrupted) leaves every local file as it was.
    with _hub_errors(repo_id):
        repo_url, deleted, info = _upload(plan, token=token, private=private, revision=revision,
                                          create_pr=create_pr, commit_message=message)
    result.update(repo_url=str(repo_url), deleted=deleted, commit_url=info.commit_url, pr_url=info.pr_url)
    try:
        atomic_write_text(plan.model_dir / "README.md", plan.card)  # now the local dir matches what the Hub got
    except (OSError, SpungeError) as exc:
        import logging

        logging.getLogger(__name__).warning("pushed, but could not update the local model card %s: %s",
                                            plan.model_dir / "README.md", exc)
    return result


def _upload(plan: PushPlan, *, token: str, private: bool, revision: str | None, create_pr: bool, commit_message: str):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    repo_url = api.create_repo(plan.repo_id, repo_type="model", private=True if private else None, exist_ok=True)
    if revision and revision != "main" and not revision.startswith("refs/"):
        api.create_branch(plan.repo_id, branch=revision, repo_type="model", exist_ok=True)
    stale = _stale_weights(api, plan, revision)
    operations: list = [CommitOperationDelete(path_in_repo=path) for path in stale]
    for upload in plan.files:
        source = upload.content if upload.content is not None else str(upload.local_path)
        operations.append(CommitOperationAdd(path_in_repo=upload.path_in_repo, path_or_fileobj=source))
    description = (f"{len(plan.files)} files, {human_bytes(plan.total_size)}, checked and uploaded by `spunge push`."
                   + (f" Removed stale weight files: {', '.join(stale)}." if stale else ""))
    info = api.create_commit(plan.repo_id, operations, commit_message=commit_message, commit_description=description,
                             repo_type="model", revision=revision, create_pr=create_pr)
    return repo_url, stale, info


def _stale_weights(api, plan: PushPlan, revision: str | None) -> list[str]:
    """Weight files on the target branch that this push does not replace: a leftover `model.safetensors`
    beside a new sharded index would be loaded instead of the new weights, so they go in the same commit."""
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        remote = api.list_repo_files(plan.repo_id, repo_type="model", revision=revision)
    except RevisionNotFoundError:
        return []
    local = {f.path_in_repo for f in plan.files}
    weights = [p for p in remote if PurePosixPath(p).suffix in WEIGHT_SUFFIXES or fnmatch(p, "*.index.json")]
    return sorted(p for p in weights if p not in local)


class _hub_errors:
    """Turn Hub and network failures into one-line SpungeErrors (no token in them: the client never puts it there)."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, SpungeError):
            return False
        message = None
        cause: BaseException | None = exc
        while cause is not None and message is None:  # the LFS uploader wraps errors in RuntimeError
            message = _describe_hub_error(cause, self.repo_id)
            cause = cause.__cause__ or cause.__context__
        if message is None:
            return False
        raise SpungeError(message + "; nothing was committed") from exc


def _describe_hub_error(exc: BaseException, repo_id: str) -> str | None:
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    endpoint = constants.ENDPOINT
    owner = repo_id.split("/")[0]
    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it to push"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        server = (getattr(exc, "server_message", None) or "").strip().splitlines()
        detail = f" (server: {server[0][:200]})" if server else ""
        if status == 401:
            return f"the Hub at {endpoint} rejected the token (401 Unauthorized){detail}; check HF_TOKEN or run `hf auth login`"
        if status == 403:
            return (f"permission denied on {repo_id} (403 Forbidden){detail}: the token cannot write to '{owner}' "
                    "(the repo belongs to someone else, or the token is read-only)")
        if isinstance(exc, RepositoryNotFoundError) or status == 404:
            return f"{repo_id} was not found or is not accessible with this token (404){detail}"
        return f"the Hub refused the push to {repo_id} (HTTP {status}){detail}"
    if _is_network_error(exc):
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return f"cannot reach the Hub at {endpoint} (network unreachable: {reason})"
    return None


def _is_network_error(exc: BaseException) -> bool:
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:  # older huggingface_hub versions use httpx or requests
        pass
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectionError", "ConnectError", "TransportError", "TimeoutException", "Timeout"}) or isinstance(
        exc, (ConnectionError, TimeoutError))

