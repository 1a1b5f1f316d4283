"""`train_rmu`: one RMU run per subset of a split directory, or one run over several forget corpora."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spunge_merge.config import build_config
from spunge_merge.data.loading import Subset, is_split_dir, load_subsets
from spunge_merge.errors import SpungeError
from spunge_merge.models import ResolvedModel, resolve_model
from spunge_merge.provenance import fingerprint
from spunge_merge.runs import RunOutcome, execute_run, run_subsets
from spunge_merge.runtime import pick_device, pick_dtype
from spunge_merge.unlearn.rmu.data import Corpus, _corpus, _load_files
from spunge_merge.unlearn.rmu.selection import Selection, select_tensors
from spunge_merge.unlearn.rmu.session import _Session
from spunge_merge.unlearn.rmu.settings import RMUConfig


def _run_fingerprint(resolved: ResolvedModel, config: RMUConfig, selection: Selection, forget: list[Corpus],
                     retain: list[Corpus]) -> str:
    device = pick_device(config.device)
    return fingerprint(method="rmu", config=config.fingerprint_part(), base=resolved.fingerprint, tensors=list(selection.tensors),
                       forget=[c.subset.sha256 for c in forget], retain=[c.subset.sha256 for c in retain],
                       device=device.type, dtype=str(pick_dtype(config.dtype, device)))


def train_rmu(model: str | Path | ResolvedModel, forget: str | Path | Sequence[str | Path], retain: str | Path | Sequence[str | Path],
              out: str | Path, config: RMUConfig | Mapping[str, Any] | None = None, *, text_column: str | None = None,
              retain_text_column: str | None = None, retain_where: tuple[str, ...] = (), force: bool = False,
              progress: bool = True) -> list[RunOutcome]:
    """RMU from `model`: one run per subset when `forget` is one split directory (`out/<name>/` and
    `out/manifest.json`), else one run over all forget corpora, alternating a batch of each with one
    control vector (and c, α, max length) per corpus, into `out/`. Completed runs are skipped
    (same settings, data sha256, base model, device type and dtype)."""
    config = config if isinstance(config, RMUConfig) else build_config(RMUConfig, overrides=dict(config or {}))
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    forget_sources = [forget] if isinstance(forget, str | Path) else list(forget)
    retain_sources = [retain] if isinstance(retain, str | Path) else list(retain)
    if not forget_sources:
        raise SpungeError("give at least one --forget data file or split directory")
    if not retain_sources:
        raise SpungeError("give a --retain data file")
    selection = select_tensors(resolved, config)
    retain_corpora = [_corpus(s, config.min_chars, "retain") for s in _load_files(retain_sources, retain_text_column, "retain",
                                                                                   where=retain_where)]
    session = _Session(resolved, config, selection, progress=progress)
    out = Path(out)

    if len(forget_sources) == 1 and is_split_dir(forget_sources[0]):
        if len(retain_corpora) != 1:
            raise SpungeError("with a split directory as --forget give one --retain (every subset uses it)")
        for name in ("alpha", "steering_coeff", "forget_max_length"):
            config.per_corpus(name, 1)
        subsets = load_subsets(forget_sources[0], text_column)
        corpora = {s.name: _corpus(s, config.min_chars, "forget") for s in subsets}

        def run_one(subset: Subset, run_dir: Path) -> RunOutcome:
            corpus = corpora[subset.name]
            value = _run_fingerprint(resolved, config, selection, [corpus], retain_corpora)
            attribute = {"column": subset.column, "value": subset.value}
            def work(tmp: Path) -> None:
                session.run([corpus], retain_corpora, tmp, name=subset.name, fingerprint_value=value, attribute=attribute)

            return execute_run(run_dir, value, work, force=force, name=subset.name)

        return run_subsets(subsets, out, method="rmu", run_one=run_one, split_source=Path(forget_sources[0]), force=force)

    forget_corpora = [_corpus(s, config.min_chars, "forget") for s in _load_files(forget_sources, text_column, "forget")]
    if len(retain_corpora) not in (1, len(forget_corpora)):
        raise SpungeError(f"give one --retain, or one per --forget corpus ({len(forget_corpora)}); got {len(retain_corpora)}")
    for name in ("alpha", "steering_coeff", "forget_max_length"):
        config.per_corpus(name, len(forget_corpora))
    value = _run_fingerprint(resolved, config, selection, forget_corpora, retain_corpora)
    outcome = execute_run(out, value, lambda tmp: session.run(forget_corpora, retain_corpora, tmp, name=out.name, fingerprint_value=value,
                                                              attribute=None), force=force)
    return [outcome]
