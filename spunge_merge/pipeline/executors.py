"""Where jobs run: `local` (this process, one after another) or `ray` (Ray tasks, in parallel).

Both executors call `jobs.run_job` on the same `Job` records and report each job's start and end
to the progress view, so a pipeline gives the same files whichever runs it. On CPU the numbers
are bit-identical when the thread count is the same: a Ray task uses as many torch threads as
the CPUs it asked for (`unlearn.resources.cpus`), the local executor uses the process's own
(OMP_NUM_THREADS).

Ray: `ray.init(address=...)` joins an existing cluster (`auto`, or `ray://head:10001`), or
starts a local Ray instance when no address is given. Each job is a task with `num_cpus` and
`num_gpus` from its resources, so on a box with 8 GPUs and `gpus: 1` eight subsets unlearn at
once. The run directory must be on storage that every node sees (the driver writes inputs
there and the tasks write their runs there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from spunge_merge.errors import SpungeError
from spunge_merge.pipeline.jobs import Job, run_job

Started = Callable[[Job], None]
Finished = Callable[[Job, dict[str, Any]], None]


class Executor(Protocol):
    name: str

    def run(self, jobs: list[Job], *, started: Started, finished: Finished) -> dict[str, dict[str, Any]]:
        """Run every job; returns {job.key: result}. Raises on the first failure."""


class LocalExecutor:
    """Sequential, in this process: the default, and what tests and the demo use."""

    name = "local"

    def run(self, jobs: list[Job], *, started: Started, finished: Finished) -> dict[str, dict[str, Any]]:
        results = {}
        for job in jobs:
            started(job)
            results[job.key] = run_job(job)
            finished(job, results[job.key])
        return results

    def close(self) -> None:
        return None


def _ray_task(job: Job) -> dict[str, Any]:
    """Body of the Ray task: as many torch threads as CPUs reserved for it."""
    return run_job(job, threads=max(1, int(job.cpus)))


class RayExecutor:
    """Each job a Ray task with its CPU/GPU needs; results gathered as they finish."""

    name = "ray"

    def __init__(self, address: str | None = None, *, runtime_env: dict[str, Any] | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError as exc:
            raise SpungeError("--executor ray needs Ray: pip install 'spunge-merge[ray]' (or pip install ray)") from exc
        self._ray = ray
        self._started_here = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if runtime_env:
                options["runtime_env"] = runtime_env
            if address is None and num_cpus is not None:
                options["num_cpus"] = num_cpus
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise SpungeError(f"cannot start or reach {where}: {exc}") from exc
            self._started_here = True
        self._remote = ray.remote(_ray_task)

    def run(self, jobs: list[Job], *, started: Started, finished: Finished) -> dict[str, dict[str, Any]]:
        ray = self._ray
        pending = {}
        for job in jobs:
            ref = self._remote.options(num_cpus=job.cpus, num_gpus=job.gpus, name=job.label, max_retries=0).remote(job)
            pending[ref] = job
            started(job)
        results: dict[str, dict[str, Any]] = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        results[job.key] = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                        if isinstance(cause, SpungeError):
                            raise SpungeError(f"{job.label}: {cause}") from None
                        raise RuntimeError(f"Ray task {job.label} failed: {cause!r}") from cause
                    finished(job, results[job.key])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results

    def close(self) -> None:
        if self._started_here and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(name: str, *, address: str | None = None, runtime_env: dict[str, Any] | None = None):
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, runtime_env=runtime_env)
    raise SpungeError(f"unknown executor '{name}' (use local or ray)")
