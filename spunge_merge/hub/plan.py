"""What a push uploads: every check run on the model directory, the model card regenerated, local paths scrubbed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from spunge_merge.card import MERGEKIT_RECIPE, PORTABLE_RECIPE, _base_model, build_model_card, is_excluded
from spunge_merge.card.results import MetricReader
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import human_bytes
from spunge_merge.hub.checks import (
    _SCAN_LIMIT,
    LFS_THRESHOLD,
    PICKLE_SUFFIXES,
    _check_loadable,
    _check_repo_id,
    _check_weights,
    _looks_binary,
    _Problem,
    collect_files,
    find_secrets,
)
from spunge_merge.hub.paths import _RECORDS, _VERBATIM, path_replacements, scrub_local_paths

HUB_FILE_LIMIT = 50 * 1000**3  # the Hub refuses any single file above 50 GB


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
              known_secrets: tuple[str, ...] = (), method_descriptions: Mapping[str, str] | None = None,
              metrics: MetricReader | None = None, task: str | None = None) -> PushPlan:
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
        architecture = _check_loadable(model_dir, files)
    except _Problem as exc:
        problems.append(str(exc))
        architecture = None
    weights, weight_problems, metadata_texts = _check_weights(model_dir, files, allow_pickle)
    problems += weight_problems

    card = build_model_card(model_dir, repo_id=repo_id, datasets=datasets, exclude=exclude, extra_eval=extra_eval,
                            method_descriptions=method_descriptions, metrics=metrics, task=task).content
    uploads: list[UploadFile] = []
    for path, name in sources:
        if name == "README.md" or (PurePosixPath(name).name == "README.md" and _is_peft_template(path)):
            continue  # replaced by the card regenerated below; peft's empty template in a sub-folder is left out
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
    uploads = _with_hub_base(_without_local_paths(uploads, model_dir), model_dir)
    card = scrub_local_paths(card, path_replacements(model_dir))  # built from spunge.json: every path scrubbed
    card_bytes = card.encode("utf-8")
    uploads.append(UploadFile("README.md", len(card_bytes), content=card_bytes))
    uploads.sort(key=lambda f: f.path_in_repo)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; (+{len(problems) - 6} more)" if len(problems) > 6 else "")
        raise SpungeError(f"refusing to push {model_dir}: {shown}")
    from spunge_merge.card import output_subject
    from spunge_merge.provenance import read_provenance

    kind = output_subject(model_dir, read_provenance(model_dir) or {})
    subject = {"merged": "merged model", "adapter": "LoRA adapter", "model": "model"}[kind]
    summary = {"architecture": architecture, "subject": subject, **weights}
    return PushPlan(model_dir=model_dir, repo_id=repo_id, files=uploads, card=card, summary=summary)


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


def _is_peft_template(path: Path) -> bool:
    """peft's `save_pretrained` card: a template whose sections all say "[More Information Needed]"."""
    try:
        return "[More Information Needed]" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _with_hub_base(uploads: list[UploadFile], model_dir: Path) -> list[UploadFile]:
    """Every published `adapter_config.json` names the base by its Hub id where one is known (the alias's
    upstream model, a Hub download), so `AutoPeftModelForCausalLM.from_pretrained(repo)` works anywhere;
    the local file keeps the path the run was trained from."""
    import json

    from spunge_merge.provenance import read_provenance

    hub_id = _base_model(read_provenance(model_dir) or {})["hub_id"]
    if not hub_id:
        return uploads
    published = []
    for upload in uploads:
        if PurePosixPath(upload.path_in_repo).name != "adapter_config.json":
            published.append(upload)
            continue
        raw = upload.content if upload.content is not None else upload.local_path.read_bytes()
        try:
            config = json.loads(raw)
        except ValueError:
            published.append(upload)  # not JSON: the adapter check has reported it
            continue
        config["base_model_name_or_path"] = hub_id
        data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
        published.append(UploadFile(upload.path_in_repo, len(data), content=data))
    return published
