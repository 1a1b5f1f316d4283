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
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import is_nonempty_dir
from spunge_merge.merge.inputs import SIDE_FILES
from spunge_merge.merge.pruning import linear_time_pruning
from spunge_merge.merge.shards import ShardWriter, dtype_code, header_bound
from spunge_merge.merge.views import views_over
from spunge_merge.provenance import is_complete
from spunge_merge.tensorfiles import TensorSlot, has_negative_zero, model_slots, read_chunks, same_bytes

MERGED_KIND = "merged-model"
RECIPE_FILE = "mergekit_config.yml"
_COPY_BUFFER = 16 << 20
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


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _mergekit_error(exc: Exception, source: str) -> SpungeError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SpungeError(f"{source}: mergekit could not run the recipe: {message}")


def run_recipe_into(tmp: Path, config, recipe_text: str, local_dirs: dict[Any, Path], *, options, source: str,
                    progress: bool = True, slots: dict | None = None) -> MergeStats:
    """Write the merged model for `config` into the (empty) directory `tmp`."""
    started = time.perf_counter()
    if needs_run_merge(config):
        from mergekit.merge import run_merge

        with _fresh_loaders(options):
            try:
                run_merge(config, str(tmp), options=options.model_copy(update={"write_model_card": True}), config_source=recipe_text)
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise _mergekit_error(exc, source) from exc
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


@dataclass
class _Job:
    """One output tensor mergekit computes: its name, task, output dtype, and whether it may be absent."""

    name: str
    task: Any
    dtype: str | None
    optional: bool


def _planner_class():
    from mergekit.plan import MergePlanner

    class CopyingPlanner(MergePlanner):
        """mergekit's planner, except that a tensor all of whose inputs hold the base's bytes is set aside
        to be copied instead of planned (planning costs a parameter resolution per tensor and model)."""

        def __init__(self, *args, slots, changed_by, negative_zeros: set[str] | None, copyable: bool, **kwargs):
            super().__init__(*args, **kwargs)
            self.copies: list[tuple[str, TensorSlot, str | None, str | None, tuple, bool]] = []
            # keyed by the references' text: the planner holds copies of the recipe's references, and comparing
            # those pydantic models field by field was most of the planning time
            self._slots = {str(ref): found for ref, found in slots.items()}
            self._changed_by = {str(ref): names for ref, names in changed_by.items()}
            self._copyable, self._same = copyable, {}
            self._negative_zeros = negative_zeros

        def plan_tensor(self, weight, weights_in, models, cfg_reader):
            keys = [str(ref) for ref in models]
            source = self._copy_source(weights_in, keys, cfg_reader.base_model) if self._copyable else None
            if weight.optional and not any(name in self._slots[key] for key, w in zip(keys, weights_in, strict=True)
                                           for name in (w.name, *(w.aliases or ()))):
                source = None  # mergekit skips an optional weight no input holds under its own name (a tied lm_head)
            if source is None:
                return super().plan_tensor(weight, weights_in, models, cfg_reader)
            base_slot, in_dtype = source
            if self._negative_zeros is not None and base_slot.name in self._negative_zeros:
                return super().plan_tensor(weight, weights_in, models, cfg_reader)  # base + 0 flips its -0.0: compute it
            self.copies.append((weight.name, base_slot, in_dtype, weight.force_dtype or self.config.out_dtype,
                                (weight, weights_in, models, cfg_reader), self._negative_zeros is None))

        def plan_later(self, args) -> _Job:
            """Plan a tensor set aside for copying after all (it holds a -0.0)."""
            before = len(self._tensors)
            super().plan_tensor(*args)
            weight, task = self._tensors[before]
            return _Job(weight.name, task, weight.force_dtype or self.config.out_dtype, weight.optional)

        def _copy_source(self, weights_in, keys: list[str], base_ref):
            base_key = str(base_ref) if base_ref is not None else None
            if base_key is None or base_key not in keys or self._tokenizer_task is not None:
                return None
            base_weight = weights_in[keys.index(base_key)]
            base_name = _resolve(self._slots[base_key], base_weight)
            if base_name is None:
                return None
            base_slot = self._slots[base_key][base_name]
            for key, weight in zip(keys, weights_in, strict=True):
                if key == base_key:
                    continue
                name = _resolve(self._slots[key], weight)
                if name is None:
                    return None
                if key in self._changed_by:  # a view over this base: what it did not change is the base's by construction
                    if name != base_name or name in self._changed_by[key]:
                        return None
                    continue
                slot = self._slots[key][name]
                pair = (slot.file, slot.start, base_slot.file, base_slot.start)
                if pair not in self._same:
                    self._same[pair] = same_bytes(slot, base_slot)
                if not self._same[pair]:
                    return None
            return base_slot, base_weight.force_dtype or self.config.dtype

    return CopyingPlanner


def _stream_merge(tmp: Path, config, local_dirs, slots, *, options, cache, source: str, progress: bool) -> dict[str, Any]:
    from mergekit.architecture import get_architecture_info
    from mergekit.io.tasks import SaveTensor
    from mergekit.merge import _model_out_config
    from mergekit.merge_methods import GeneralizedTaskArithmeticMerge, get
    from tqdm.auto import tqdm

    started = time.perf_counter()
    changed_by, negative_zeros = {}, None
    if config.base_model is not None:
        by_dir, negative_zeros = views_over(local_dirs[config.base_model], list(local_dirs.values()))
        changed_by = {ref: by_dir[path] for ref, path in local_dirs.items() if path in by_dir}
    try:
        arch_info = get_architecture_info(config, options)
        with _quiet_transformers():  # mergekit sets config.torch_dtype, which transformers 5 warns about
            out_config = _model_out_config(config, arch_info, trust_remote_code=False)
        for ref in config.referenced_models():
            cache.get(ref)
        planner = _planner_class()(
            config.model_copy(deep=True), arch_info, options=options, out_model_config=out_config, slots=slots,
            changed_by=changed_by, negative_zeros=negative_zeros,
            copyable=isinstance(get(config.merge_method), GeneralizedTaskArithmeticMerge))
        # plan_to_disk, not plan_in_memory (which fails pydantic validation in mergekit 0.1.5); planning writes
        # nothing: the SaveTensor tasks only say which tensors the output holds and how each is computed.
        jobs = [_Job(t.tensor_name, t.tensor_task, t.dtype, t.optional)
                for t in planner.plan_to_disk(out_path=str(tmp)) if isinstance(t, SaveTensor)]
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise _mergekit_error(exc, source) from exc
    names = [(name, len(slot.shape)) for name, slot, *_ in planner.copies] + [(job.name, 8) for job in jobs]
    writer = ShardWriter(tmp, header_reserve=header_bound(names), max_shard_bytes=options.out_shard_size)
    buffer = bytearray(_COPY_BUFFER)
    copied = computed = 0
    copying = 0.0
    planned = time.perf_counter()
    try:
        with tqdm(total=len(names), desc="merge", unit="tensor", disable=not progress, leave=False) as bar, \
                linear_time_pruning(), _Computation(jobs, options, copying=True) as results:
            late = []
            plain, other = [], []  # byte-for-byte copies / copies that convert or must be checked for -0.0
            for copy in planner.copies:
                (other if copy[5] or _converts(copy[1], copy[2], copy[3]) else plain).append(copy)
            for run in back_to_back(plain):  # a run of adjacent tensors at a time
                computed += results.write_ready(writer, bar)  # computed tensors as they come, between copies
                began = time.perf_counter()
                writer.copy_tensors([(name, slot) for name, slot, *_ in run])
                copied += len(run)
                bar.update(len(run))
                copying += time.perf_counter() - began
            for name, slot, in_dtype, out_dtype, args, check in other:
                computed += results.write_ready(writer, bar)
                began = time.perf_counter()
                if _copy_tensor(writer, name, slot, in_dtype, out_dtype, buffer, check):
                    copied += 1
                    bar.update()
                else:
                    late.append(planner.plan_later(args))
                copying += time.perf_counter() - began
            results.copies_done()
            computed += results.write_rest(writer, bar)
            computing = results.seconds
            if late:
                with _Computation(late, options) as more:
                    computed += more.write_rest(writer, bar)
                computing += more.seconds
        writer.finish(index=True)
    except BaseException:  # the recipe was checked and planned: anything failing now is a bug, with its traceback
        writer.abort()
        raise
    done = time.perf_counter()
    out_config.save_pretrained(tmp)
    return {"tensors": copied + computed, "computed": computed, "copied": copied, "bytes_written": writer.total_bytes,
            "seconds_planning": planned - started, "seconds_tensors": done - planned, "seconds_copying": copying,
            "seconds_computing": computing}


class _Computation:
    """mergekit's executor on worker threads, so the merged tensors are computed while others are copied.

    The workers take the tensors one at a time from a shared queue (one mergekit executor per tensor), so
    they finish together whatever each tensor costs. While the main thread copies it needs a core of its
    own: with `copying`, one of two or more workers starts only at `copies_done()`. torch releases the GIL
    in its kernels, and mergekit's loaders lock around their files. Results pass through a short queue
    (memory: a few tensors); the files read for each tensor are unmapped once it is done.
    """

    _DONE = object()  # a worker's last result
    _CLOSED = object()  # no more tensors to take

    def __init__(self, jobs: list[_Job], options, threads: int | None = None, *, copying: bool = False):
        self.options = options
        self.by_task: dict[Any, list[_Job]] = {}  # jobs of equal tasks (tied weights) are computed once
        for job in jobs:
            self.by_task.setdefault(job.task, []).append(job)
        on_cpu = str(options.device).startswith("cpu")
        count = max(1, min(threads or (compute_threads() if on_cpu else 1), len(self.by_task)))
        self.pending: queue.SimpleQueue = queue.SimpleQueue()
        for task in [*self.by_task, *[self._CLOSED] * count]:
            self.pending.put(task)
        self.queue: queue.Queue = queue.Queue(maxsize=2 * count)
        self.copied = threading.Event()
        if not copying:
            self.copied.set()
        self.threads = [threading.Thread(target=self._work, args=(count > 1 and i == count - 1,),
                                         name=f"spunge-merge-compute-{i}", daemon=True) for i in range(count)]
        self.running = len(self.threads) if self.by_task else 0
        self.finished = not self.by_task
        self.stop = threading.Event()
        self.started = time.perf_counter()
        self.seconds = 0.0  # from the start to the last tensor computed

    def __enter__(self):
        if self.by_task:
            self.started = time.perf_counter()
            for thread in self.threads:
                thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.copied.set()
        while any(thread.is_alive() for thread in self.threads):  # let a blocked worker finish
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.1)
        return False

    def copies_done(self) -> None:
        """The main thread has finished copying: its core goes to the computation."""
        self.copied.set()

    def _work(self, after_copies: bool) -> None:
        import torch
        from mergekit.graph import Executor
        from mergekit.io.tasks import LoaderCache

        try:
            if after_copies:
                self.copied.wait()
            cache = LoaderCache()  # one instance per thread; the loaders themselves are shared
            cache.setup(options=self.options)
            while not self.stop.is_set():
                target = self.pending.get()
                if target is self._CLOSED:
                    break
                executor = Executor(targets=[target], math_device=torch.device(self.options.device),
                                    storage_device=torch.device("cpu"))
                for task, value in executor.run(quiet=True):
                    cache.flush_all()  # unmap what this tensor read
                    self._put((task, value))
                    del value
                self.seconds = max(self.seconds, time.perf_counter() - self.started)
            self._put(self._DONE)
        except BaseException as exc:  # handed to the main thread
            self._put(exc)

    def _put(self, item) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                self.queue.put(item, timeout=0.1)
                return

    def _write(self, item, writer: ShardWriter, bar) -> int:
        if item is self._DONE:
            self.running -= 1
            self.finished = self.running == 0
            return 0
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        task, value = item
        count = 0
        for job in self.by_task[task]:
            if value is None:
                if not job.optional:
                    raise SpungeError(f"tensor {job.name} is missing from the merge's input models")
                continue
            writer.write_tensor(job.name, value.to(_torch_dtype(job.dtype)) if job.dtype else value)
            count += 1
            bar.update()
        return count

    def write_ready(self, writer: ShardWriter, bar) -> int:
        count = 0
        while not self.finished:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            count += self._write(item, writer, bar)
        return count

    def write_rest(self, writer: ShardWriter, bar) -> int:
        count = 0
        while not self.finished:
            count += self._write(self.queue.get(), writer, bar)
        return count


def compute_threads() -> int:
    """Threads computing merged tensors: $SPUNGE_MERGE_THREADS, else as many as the cores hold at torch's
    intra-op thread count, at most 8: one when torch uses every core, one per core with OMP_NUM_THREADS=1
    (one of two or more waits while the main thread copies: see `_Computation`)."""
    import torch

    value = os.environ.get("SPUNGE_MERGE_THREADS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise SpungeError(f"SPUNGE_MERGE_THREADS={value!r}: expected a whole number of threads") from None
    return max(1, min(8, (os.cpu_count() or 1) // max(1, torch.get_num_threads())))


def _torch_dtype(name: str):
    from mergekit.common import dtype_from_name

    return dtype_from_name(name)


def _resolve(slots: dict[str, TensorSlot], weight) -> str | None:
    """The name mergekit's LoadTensor reads for `weight` in a model (name, aliases, then tied names)."""
    for name in (weight.name, *(weight.aliases or ()), *(weight.tied_names or ())):
        if name in slots:
            return name
    return None


def _copy_tensor(writer: ShardWriter, name: str, slot: TensorSlot, in_dtype: str | None, out_dtype: str | None,
                 buffer: bytearray, check: bool = True) -> bool:
    """Write the base tensor as mergekit would return it; False (nothing written) if it holds a -0.0."""
    from mergekit.common import dtype_from_name

    if _converts(slot, in_dtype, out_dtype):
        return _copy_converted(writer, name, slot, dtype_from_name(in_dtype) if in_dtype else None,
                               dtype_from_name(out_dtype) if out_dtype else None)
    if not check:  # known free of -0.0: the bytes need not be looked at
        writer.copy_tensor(name, slot)
        return True
    handle = writer.begin(name, slot.dtype, slot.shape, slot.nbytes)
    for chunk in read_chunks(slot, buffer):
        if has_negative_zero(chunk, slot.dtype):
            writer.cancel_last()
            return False
        handle.write(chunk)
    return True


def _converts(slot: TensorSlot, in_dtype: str | None, out_dtype: str | None) -> bool:
    """Does mergekit load (in_dtype) or save (out_dtype) this base tensor in a dtype other than its file's?"""
    from mergekit.common import dtype_from_name

    loaded = dtype_code(dtype_from_name(in_dtype)) if in_dtype else slot.dtype
    return loaded != slot.dtype or (out_dtype is not None and dtype_code(dtype_from_name(out_dtype)) != loaded)


def back_to_back(copies: list[tuple]) -> list[list[tuple]]:
    """Copies (entries whose second item is a TensorSlot) in file order, grouped into runs of adjacent byte ranges."""
    runs: list[list[tuple]] = []
    for entry in sorted(copies, key=lambda c: (c[1].file, c[1].start)):
        last = runs[-1][-1][1] if runs else None
        if last is not None and last.file == entry[1].file and last.end == entry[1].start:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs


def _copy_converted(writer: ShardWriter, name: str, slot: TensorSlot, load_dtype, save_dtype) -> bool:
    import torch
    from safetensors import safe_open

    with safe_open(slot.file, framework="pt") as handle:
        tensor = handle.get_tensor(slot.name)
    if load_dtype is not None:
        tensor = tensor.to(load_dtype)
    if save_dtype is not None:
        tensor = tensor.to(save_dtype)
    if tensor.is_floating_point() and bool(((tensor == 0) & torch.signbit(tensor)).any()):
        return False
    writer.write_tensor(name, tensor)
    return True


def check_output(out: Path, fingerprint: str, *, force: bool) -> bool:
    """True when `out` already holds this very merge (skip it); SpungeError when it holds something else."""
    if is_complete(out, fingerprint) and not force:
        return True
    if out.exists() and not out.is_dir():
        raise SpungeError(f"output path {out} exists and is not a directory")
    if is_nonempty_dir(out) and not force:
        raise SpungeError(f"output directory {out} is not empty; pass --force to replace it, or choose another --out")
    return False
