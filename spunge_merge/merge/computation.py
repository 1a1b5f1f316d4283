"""Computing the merged tensors on worker threads (mergekit's executor) while the main thread copies."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.merge.planner import _Job
from spunge_merge.merge.shards import ShardWriter


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
