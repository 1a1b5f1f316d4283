"""Running a checked mergekit recipe into a model directory, computing only what the runs changed.

mergekit's planner (`MergePlanner`) decides which tensors the output holds and how each is computed;
mergekit's executor and merge methods compute them, its lazy loader reading only what each tensor
needs. What spunge adds:

- **Copying what no run changed.** For the task-arithmetic family (ties, task_arithmetic, dare_ties,
  breadcrumbs(_ties), della(_linear)) a tensor whose inputs all hold the base's bytes merges to
  `base + 0`, i.e. the base tensor itself, so it is set aside at planning time and copied from the
  base's file (RMU changes 3 tensors of 272; mergekit would run TIES on all of them). Views record
  what they changed; for other models the bytes are compared. `x + 0.0` turns a -0.0 into +0.0, so a
  base tensor holding one is computed instead (the base pool knows which; otherwise the copy looks):
  the output is bit for bit what `mergekit-yaml` writes.
- **Overlap and streaming.** The merged tensors are computed on worker threads (mergekit's executor,
  one per tensor; magnitude pruning in linear time: `pruning.py`) while the main thread copies;
  tensors go to disk one at a time (`shards.ShardWriter`; mergekit's writer holds up to 5 GB per
  shard in memory). Loaders are flushed after each tensor: memory stays at a few tensors whatever
  the model size.

Recipes that use slices, modules or tokenizer merging are handed to `mergekit.merge.run_merge`
unchanged (same result, mergekit's memory profile).

Here: running a recipe into a directory, and whether an output already holds it. The parts live in
`planner.py` (which tensors are copied), `copying.py` (the copies), `computation.py` (the worker
threads) and `streaming.py` (the streaming merge that ties them together).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import is_nonempty_dir
from spunge_merge.merge.computation import _Computation, compute_threads
from spunge_merge.merge.copying import back_to_back
from spunge_merge.merge.inputs import SIDE_FILES
from spunge_merge.merge.planner import _Job
from spunge_merge.merge.streaming import _mergekit_error, _stream_merge, merge_cause
from spunge_merge.provenance import is_complete
from spunge_merge.runtime import CONFIG_DTYPE_LOGS, quiet_dependency
from spunge_merge.tensorfiles import model_slots, refuse_non_finite_files

__all__ = ["MERGED_KIND", "RECIPE_FILE", "MergeStats", "back_to_back", "check_output", "compute_threads", "merge_options",
           "needs_run_merge", "run_recipe_into", "_Computation", "_Job"]  # the last two: tests drive them directly

MERGED_KIND = "merged-model"
RECIPE_FILE = "mergekit_config.yml"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeStats:
    tensors: int
    computed: int
    copied: int
    seconds: float
    bytes_written: int
    path: str  # "stream" or "mergekit" (run_merge)
    seconds_planning: float = 0.0  # mergekit's planner and spunge's checks
    seconds_tensors: float = 0.0  # copying, merging and writing the tensors, of which:
    seconds_copying: float = 0.0  # copying unchanged tensors (main thread)
    seconds_computing: float = 0.0  # mergekit computing the changed ones (worker thread, meanwhile)


def merge_options(*, cuda: bool, seed: int | None, shard_size: int):
    """mergekit's `MergeOptions` for a spunge merge (SpungeError when CUDA is asked for but absent)."""
    import torch
    from mergekit.options import MergeOptions

    if cuda and not torch.cuda.is_available():
        raise SpungeError("--cuda: CUDA is not available on this machine (torch sees no GPU)")
    return MergeOptions(cuda=cuda, random_seed=seed, quiet=True, out_shard_size=shard_size, copy_tokenizer=True,
                        write_model_card=False, lazy_unpickle=False)


def needs_run_merge(config) -> bool:
    """Recipes beyond `models` + `base_model` go through mergekit's own `run_merge`."""
    return bool(config.slices or config.modules or config.tokenizer or config.tokenizer_source or config.chat_template)


@contextlib.contextmanager
def _fresh_loaders(options):
    """mergekit's LoaderCache is a process-wide singleton; start and end each merge with it empty."""
    from mergekit.io.tasks import LoaderCache

    cache = LoaderCache()
    cache.loaders.clear()
    cache.setup(options=options)
    try:
        yield cache
    finally:
        cache.flush_all()
        cache.loaders.clear()


def run_recipe_into(tmp: Path, config, recipe_text: str, local_dirs: dict[Any, Path], *, options, source: str,
                    progress: bool = True, slots: dict | None = None) -> MergeStats:
    """Write the merged model for `config` into the (empty) directory `tmp`."""
    started = time.perf_counter()
    if needs_run_merge(config):
        from mergekit.merge import run_merge

        with _fresh_loaders(options):
            try:
                with quiet_dependency(logs_like=CONFIG_DTYPE_LOGS):  # mergekit sets config.torch_dtype
                    run_merge(config, str(tmp), options=options.model_copy(update={"write_model_card": True}),
                              config_source=recipe_text)
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise _mergekit_error(exc, source) from exc
        refuse_non_finite_files(tmp, merge_cause(config))  # mergekit's own writer checks nothing
        count = len(model_slots(tmp))
        written = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
        return MergeStats(count, count, 0, time.perf_counter() - started, written, "mergekit")
    with _fresh_loaders(options) as cache:
        slots = slots or {ref: model_slots(path) for ref, path in local_dirs.items()}
        stats = _stream_merge(tmp, config, local_dirs, slots, options=options, cache=cache, source=source, progress=progress)
    _copy_model_files(_donor_dir(config, local_dirs), tmp)
    return MergeStats(**stats, seconds=time.perf_counter() - started, path="stream")


def _donor_dir(config, local_dirs: dict[Any, Path]) -> Path:
    donor = config.base_model or config.models[0].model
    return local_dirs[donor]


def _copy_model_files(donor: Path, tmp: Path) -> None:
    """Tokenizer, chat template and generation config from the base (as mergekit's `copy_tokenizer`)."""
    for name in SIDE_FILES:
        if (donor / name).is_file():
            shutil.copyfile(donor / name, tmp / name)


def check_output(out: Path, fingerprint: str, *, force: bool) -> bool:
    """True when `out` already holds this very merge (skip it); SpungeError when it holds something else."""
    if is_complete(out, fingerprint) and not force:
        return True
    if out.exists() and not out.is_dir():
        raise SpungeError(f"output path {out} exists and is not a directory")
    if is_nonempty_dir(out) and not force:
        raise SpungeError(f"output directory {out} is not empty; pass --force to replace it, or choose another --out")
    return False
