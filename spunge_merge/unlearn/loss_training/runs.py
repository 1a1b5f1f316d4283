"""`train_runs`: one run per forget file or split subset, every check done before anything is written."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from spunge_merge.data.loading import Subset, is_split_dir, load_retain, load_subsets
from spunge_merge.errors import SpungeError
from spunge_merge.provenance import fingerprint, is_complete
from spunge_merge.runs import RunOutcome, execute_run, run_subsets
from spunge_merge.unlearn import lm_data
from spunge_merge.unlearn.loss_training.config import LossMethodConfig, Objective
from spunge_merge.unlearn.loss_training.session import _Session, has_pair_columns
from spunge_merge.unlearn.loss_training.weights import check_trainable
from spunge_merge.unlearn.registry import RetainNeed, TrainRequest


def _check_writable(out: Path) -> None:
    """Fail before training when nothing can be written where `out` would go."""
    probe = out if out.is_dir() else out.parent
    while not probe.exists():
        probe = probe.parent
    try:
        tempfile.TemporaryDirectory(dir=probe, prefix=".spunge-write-check-").cleanup()
    except OSError as exc:
        raise SpungeError(f"cannot write to {out}: {probe} is not writable ({exc.strerror or exc})") from exc


def check_retain(method: str, need: RetainNeed, config: LossMethodConfig, retain: Sequence[Path]) -> None:
    """Retain data exactly when the loss has a retain term (α > 0); the message names the key."""
    weight = config.retain_weight()
    if weight > 0 and not retain:
        hint = ", or set alpha to 0 for the loss without it" if need == "optional" else ""
        raise SpungeError(f"{method}: alpha = {weight} weighs a retain NLL term but no retain data was given; pass --retain{hint}")
    if retain and weight == 0:
        reason = "alpha is 0" if need == "optional" else "its loss has no retain term"
        raise SpungeError(f"{method}: retain data was given but {reason}; drop --retain")


def train_runs(request: TrainRequest, *, method: str, objective: Objective, retain_need: RetainNeed) -> list[RunOutcome]:
    """One run for a data file, or one per subset of a `spunge split` directory (plus `manifest.json`).

    A run whose `spunge.json` carries the same fingerprint (settings, forget and retain data,
    base model, device type, dtype) is skipped; every check happens before anything is written.
    """
    config = request.config
    if not isinstance(config, LossMethodConfig):
        raise TypeError(f"{method}: expected the method's settings object, got {type(config).__name__}")
    if len(request.forget) != 1:
        raise SpungeError(f"{method} takes one forget data file or split directory (got {len(request.forget)})")
    check_retain(method, retain_need, config, request.retain)
    resolved, forget, out = request.model, Path(request.forget[0]), Path(request.out)
    subsets = load_subsets(forget, config.answer_column or request.text_column)
    if request.retain_where and config.answer_column and any(has_pair_columns(Path(p), config) for p in request.retain):
        raise SpungeError("--retain-where: a question/answer retain file is read as pairs, unfiltered; filter it into a file "
                          "of its own first (or drop --retain-where)")
    retain = [subset for path in request.retain
              for subset in load_retain(path, config.answer_column if config.answer_column and has_pair_columns(path, config)
                                        else request.retain_text_column, tuple(request.retain_where))]
    if any(s.column for s in retain):
        raise SpungeError(f"{method}: --retain takes data files, not a split directory")
    _check_writable(out)
    session = _Session(method, objective, resolved, config, retain, progress=request.progress)
    fingerprints = {
        subset.name: fingerprint(method=method, config=config.fingerprint_part(), data=_data_sha(subset, config),
                                 retain=[_data_sha(s, config, retain=True) for s in retain], base_model=resolved.fingerprint,
                                 device=session.device.type, dtype=str(session.dtype))
        for subset in subsets
    }
    split_mode = is_split_dir(forget)
    run_dirs = {subset.name: (out / subset.name if split_mode else out) for subset in subsets}
    if request.force or not all(is_complete(run_dirs[name], fp) for name, fp in fingerprints.items()):
        check_trainable(config, resolved)

    def run_one(subset: Subset, run_dir: Path) -> RunOutcome:
        fp = fingerprints[subset.name]
        return execute_run(run_dir, fp, lambda tmp: session.train(subset, tmp, fp), force=request.force, name=subset.name)

    if split_mode:
        return run_subsets(subsets, out, method=method, run_one=run_one, split_source=forget, force=request.force)
    return [run_one(subsets[0], out)]


def _data_sha(subset: Subset, config: LossMethodConfig, *, retain: bool = False) -> str:
    """What a run's fingerprint knows of a subset: its texts, or in the question/answer form its (prompt, answer)
    pairs (reading them checks both columns before anything is written; a retain file without them is texts)."""
    from spunge_merge.fsutil import sha256_json

    if config.answer_column and (not retain or has_pair_columns(subset.source, config)):
        return sha256_json(lm_data.read_pairs(subset.source, config.prompt_column, config.answer_column))
    return subset.sha256
