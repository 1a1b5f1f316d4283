"""The streaming merge: plan with mergekit, copy what no run changed, compute the rest meanwhile, write tensor by tensor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.merge.computation import _Computation
from spunge_merge.merge.copying import _converts, _copy_tensor, back_to_back
from spunge_merge.merge.planner import _Job, _planner_class
from spunge_merge.merge.pruning import linear_time_pruning
from spunge_merge.merge.shards import ShardWriter, header_bound
from spunge_merge.merge.views import views_over
from spunge_merge.runtime import CONFIG_DTYPE_LOGS, quiet_dependency

_COPY_BUFFER = 16 << 20


def _mergekit_error(exc: Exception, source: str) -> SpungeError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SpungeError(f"{source}: mergekit could not run the recipe: {message}")


def _append_in_order(writer: ShardWriter, spill: ShardWriter, order: list[str]) -> None:
    """Copy the spilled tensors into the output in `order` (in the kernel where it can), then delete the spill."""
    from spunge_merge.tensorfiles import read_header

    files = {name: tmp_file for name, tmp_file in spill.finish(index=False).items()}
    headers = {file: read_header(spill.out_dir / file) for file in set(files.values())}
    writer.copy_tensors([(name, headers[files[name]][name]) for name in dict.fromkeys(order) if name in files])
    for file in headers:
        (spill.out_dir / file).unlink()


def merge_cause(config) -> str:
    """The settings a merged tensor came from, as a refused non-finite tensor names them (dtype, λ)."""
    parameters = config.parameters or {}
    parts = [f"merge_method {config.merge_method}", f"dtype {config.out_dtype or config.dtype or 'of the inputs'}"]
    if "lambda" in parameters:
        lam = parameters["lambda"]
        parts.append(f"lambda {getattr(lam, 'value', lam)}")
    return ", ".join(parts)


def _plan(tmp: Path, config, local_dirs, slots, *, options, cache, source: str):
    """Plan the merge with mergekit: the planner (with its copies) and the tensors to compute, as jobs.

    Tensors a run left unchanged are found first (`views_over`), so the planner can copy them instead of computing them.
    """
    from mergekit.architecture import get_architecture_info
    from mergekit.io.tasks import SaveTensor
    from mergekit.merge import _model_out_config
    from mergekit.merge_methods import GeneralizedTaskArithmeticMerge, get

    changed_by, negative_zeros = {}, None
    if config.base_model is not None:
        by_dir, negative_zeros = views_over(local_dirs[config.base_model], list(local_dirs.values()))
        changed_by = {ref: by_dir[path] for ref, path in local_dirs.items() if path in by_dir}
    try:
        arch_info = get_architecture_info(config, options)
        with quiet_dependency(logs_like=CONFIG_DTYPE_LOGS):  # mergekit sets config.torch_dtype, which transformers 5 warns about
            out_config = _model_out_config(config, arch_info, trust_remote_code=False)
        for ref in config.referenced_models():
            cache.get(ref)
        planner = _planner_class()(
            config.model_copy(deep=True), arch_info, options=options, out_model_config=out_config, slots=slots,
            changed_by=changed_by, negative_zeros=negative_zeros,
            copyable=isinstance(get(config.merge_method), GeneralizedTaskArithmeticMerge)
            or getattr(get(config.merge_method), "keeps_unchanged_base", False))
        # plan_to_disk, not plan_in_memory (which fails pydantic validation in mergekit 0.1.5); planning writes
        # nothing: the SaveTensor tasks only say which tensors the output holds and how each is computed.
        jobs = [_Job(t.tensor_name, t.tensor_task, t.dtype, t.optional)
                for t in planner.plan_to_disk(out_path=str(tmp)) if isinstance(t, SaveTensor)]
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise _mergekit_error(exc, source) from exc
    return planner, jobs, out_config


def _stream_merge(tmp: Path, config, local_dirs, slots, *, options, cache, source: str, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    started = time.perf_counter()
    planner, jobs, out_config = _plan(tmp, config, local_dirs, slots, options=options, cache=cache, source=source)
    names = [(name, len(slot.shape)) for name, slot, *_ in planner.copies] + [(job.name, 8) for job in jobs]
    writer = ShardWriter(tmp, header_reserve=header_bound(names), max_shard_bytes=options.out_shard_size,
                         cause=merge_cause(config))
    # Computed tensors come from the worker threads in whatever order they finish: they go to a spill file first and
    # are appended to the output after the copies, in plan order, so two identical merges write identical bytes.
    spill = ShardWriter(tmp, header_reserve=header_bound(names), max_shard_bytes=1 << 62, basename=".spill",
                        cause=merge_cause(config))
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
                computed += results.write_ready(spill, bar)  # computed tensors as they come, between copies
                began = time.perf_counter()
                writer.copy_tensors([(name, slot) for name, slot, *_ in run])
                copied += len(run)
                bar.update(len(run))
                copying += time.perf_counter() - began
            for name, slot, in_dtype, out_dtype, args, check in other:
                computed += results.write_ready(spill, bar)
                began = time.perf_counter()
                if _copy_tensor(writer, name, slot, in_dtype, out_dtype, buffer, check):
                    copied += 1
                    bar.update()
                else:
                    late.append(planner.plan_later(args))
                copying += time.perf_counter() - began
            results.copies_done()
            computed += results.write_rest(spill, bar)
            computing = results.seconds
            if late:
                with _Computation(late, options) as more:
                    computed += more.write_rest(spill, bar)
                computing += more.seconds
        _append_in_order(writer, spill, [job.name for job in [*jobs, *late]])
        writer.finish(index=True)
    except BaseException:  # the recipe was checked and planned: anything failing now is a bug, with its traceback
        writer.abort()
        spill.abort()
        raise
    done = time.perf_counter()
    out_config.save_pretrained(tmp)
    return {"tensors": copied + computed, "computed": computed, "copied": copied, "bytes_written": writer.total_bytes,
            "seconds_planning": planned - started, "seconds_tensors": done - planned, "seconds_copying": copying,
            "seconds_computing": computing}
