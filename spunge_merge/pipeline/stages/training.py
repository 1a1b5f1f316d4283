"""The training jobs of the unlearn and baseline stages: each run's settings, fingerprint and job.

A run's settings are the method's own settings object that the pipeline file was validated into
(`unlearn.config`, a subset's `unlearn.overrides` entry, `baseline.config`), with the `runtime`
section's device and dtype where the file leaves them unset; the job carries that object as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spunge_merge.config import FrozenConfig
from spunge_merge.data.loading import Subset
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import sha256_file
from spunge_merge.pipeline import jobs, runtime
from spunge_merge.pipeline.jobs import Job
from spunge_merge.pipeline.stages.common import Context
from spunge_merge.unlearn import registry


def subset_configs(ctx: Context, subsets: list[Subset]) -> dict[str, FrozenConfig]:
    """Each subset's settings: its `unlearn.overrides` entry (keyed by value or name), else `unlearn.config`."""
    section = ctx.pipeline.unlearn
    known = {s.name for s in subsets} | {str(s.value) for s in subsets if s.value is not None}
    unknown = sorted(set(section.overrides) - known)
    if unknown:
        raise SpungeError(f"unlearn.overrides.{unknown[0]}: no such subset (subsets: {', '.join(s.name for s in subsets)})")
    configs = {}
    for subset in subsets:
        config = section.overrides.get(str(subset.value), section.overrides.get(subset.name, section.config))
        configs[subset.name] = runtime.method_settings(ctx.pipeline, config)
    return configs


def settings_identity(config: FrozenConfig) -> dict[str, Any]:
    """What a run's fingerprint records of its settings: the keys given (in the file or by `runtime`), validated."""
    return config.model_dump(mode="json", exclude_unset=True)


def retain_fp(ctx: Context) -> str | None:
    return sha256_file(ctx.retain_file) if ctx.pipeline.unlearn.retain else None


def train_job(ctx: Context, key: str, label: str, forget: list[str], out: Path, config: FrozenConfig, force: bool) -> Job:
    """A job that trains the pipeline's method once (`jobs.train`), with the settings object `config`."""
    section = ctx.pipeline.unlearn
    return Job(key=key, label=label, function=jobs.train,
               kwargs={"method": section.method, "model_ref": ctx.model.ref, "model_path": str(ctx.model.path),
                       "forget": forget, "out": str(out), "config": config,
                       "retain": [str(ctx.retain_file)] if section.retain else None, "force": force,
                       "method_module": getattr(registry.get_method(section.method).train, "__module__", None)},
               cpus=section.resources.cpus, gpus=section.resources.gpus)
