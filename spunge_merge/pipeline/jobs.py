"""Jobs: the independent units of a pipeline that an executor may run anywhere.

A job is a plain, picklable record holding a module-level function and its keyword arguments
(the settings as the validated objects the pipeline holds, e.g. the method's own config). Pickle
and Ray send a module-level function, and the class of a settings object, by reference (their
module is imported where the job runs), so the record travels as it is. The per-subset
unlearning runs, the un-split baseline run and the evaluation of each model are jobs: they do not
depend on each other, so the `local` executor runs them one after another in this process and the
`ray` executor runs them as Ray tasks in parallel. Both call `run_job` on the same record, so the
files they write are the same.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spunge_merge.config import FrozenConfig


@dataclass(frozen=True)
class Job:
    key: str  # stable id, e.g. "unlearn/capitals", "baseline/run", "eval/spunge"
    label: str  # what the progress view shows
    function: Callable[..., dict[str, Any] | None]  # a module-level function (pickles by reference), called with `kwargs`
    kwargs: dict[str, Any] = field(default_factory=dict)
    cpus: float = 1.0  # Ray resources (the local executor ignores them)
    gpus: float = 0.0


def run_job(job: Job, threads: int | None = None) -> dict[str, Any]:
    """Run `job` in this process; `threads` sets torch's intra-op thread count first (Ray workers)."""
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    started = time.perf_counter()
    result = job.function(**job.kwargs) or {}
    return {**result, "key": job.key, "seconds": round(time.perf_counter() - started, 2)}


def resolved_model(model_ref: str, model_path: str):
    """The base model on this machine: the driver's directory when it is here, else resolved again (a Ray node)."""
    from spunge_merge.models import ResolvedModel, resolve_model

    path = Path(model_path)
    if (path / "config.json").is_file():
        return ResolvedModel(ref=model_ref, path=path)
    return resolve_model(model_ref)


def train(*, method: str, model_ref: str, model_path: str, forget: list[str], out: str, config: FrozenConfig,
          retain: list[str] | None = None, text_column: str | None = None, force: bool = False,
          method_module: str | None = None) -> dict[str, Any]:
    """One unlearning run through the method's registry record; progress bars off (the pipeline shows its own).

    `config` is the method's settings object as the pipeline validated it (not validated again). The
    job names the method, not its record, so it pickles; `method_module` (the module that registers
    it) is imported first where the name is not known yet (a Ray worker running a third-party method
    whose settings class lives elsewhere).
    """
    from spunge_merge.provenance import read_provenance
    from spunge_merge.unlearn import registry

    if method_module and method not in registry.method_names():
        importlib.import_module(method_module)
    record = registry.get_method(method)
    if not isinstance(config, record.config_class):
        raise TypeError(f"{method}: expected a {record.config_class.__name__}, got {type(config).__name__}")
    request = registry.TrainRequest(model=resolved_model(model_ref, model_path), forget=[Path(p) for p in forget], out=Path(out),
                                    config=config, retain=[Path(p) for p in retain or []],
                                    text_column=text_column, force=force, progress=False)
    outcomes = record.train(request)
    first = read_provenance(outcomes[0].path) or {}
    return {"skipped": all(o.skipped for o in outcomes), "steps": (first.get("result") or {}).get("steps"),
            "path": str(outcomes[0].path)}
