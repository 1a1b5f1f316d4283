"""The upload: one commit (stale weight files removed in it), and Hub and network failures as one-line errors."""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

from spunge_merge.card.results import MetricReader
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_write_text, human_bytes
from spunge_merge.hub.checks import WEIGHT_SUFFIXES, _check_repo_id
from spunge_merge.hub.plan import PushPlan, plan_push


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
               method_descriptions: Mapping[str, str] | None = None, metrics: MetricReader | None = None,
               task: str | None = None) -> dict[str, Any]:
    """Check `model_dir` (a merged model, a run's LoRA adapter, a full model), regenerate its model card,
    and commit it to `repo_id` in one commit.

    Returns what was (or, with `dry_run`, would be) uploaded: `files` [{path, size, storage}],
    `total_size`, `card`, `deleted` (stale weight files removed from the branch), `repo_url`,
    `commit_url` and `pr_url` (None on a dry run). A dry run needs no token and contacts nothing.
    `exclude` globs (`eval/generations.jsonl`, `eval/*`) keep files out; hidden paths are always left out.
    `eval_dirs`: `spunge eval` output folders kept outside `model_dir`, pushed as `eval/<folder name>/`
    and shown in the card (e.g. a pipeline's `runs/NAME/eval/compare`).
    """
    _check_repo_id(repo_id)  # offline, before the token: a bad name is the first thing to fix
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
                     known_secrets=known, method_descriptions=method_descriptions, metrics=metrics, task=task)
    result: dict[str, Any] = {
        "repo_id": repo_id, "private": private, "revision": revision, "create_pr": create_pr, "dry_run": dry_run,
        "files": [{"path": f.path_in_repo, "size": f.size, "storage": f.storage} for f in plan.files],
        "total_size": plan.total_size, "card": plan.card, "checks": plan.summary,
        "deleted": [], "repo_url": None, "commit_url": None, "pr_url": None,
    }
    if dry_run:
        return result
    message = commit_message or f"Upload {plan.model_dir.name} (spunge {plan.summary.get('subject', 'model')})"
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

        logging.getLogger("spunge_merge.hub").warning("pushed, but could not update the local model card %s: %s",
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
