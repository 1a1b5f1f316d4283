"""What a pipeline run checks before it touches its run directory.

A refused run must write nothing: not the run directory, not its recorded `pipeline.yaml`, not a
stage's state. Otherwise the refusal itself changes what the next run compares against (a missing
data file, fixed, would then read as "run with other settings"). So everything the pipeline file
and the file system can tell is checked here, first: the run directory's place, every local data
path the file names, the model, and that the run directory is no input and no folder of the user's
(`fsutil.guard_output`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from spunge_merge.data.loading import names_local_path
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate import registry as eval_registry
from spunge_merge.fsutil import guard_output
from spunge_merge.models import ResolvedModel, resolve_model
from spunge_merge.pipeline.schema import DataRef, Pipeline, resolve_path


def named_paths(pipeline: Pipeline) -> Iterator[tuple[str, str, bool]]:
    """(key path, path as written, whether it may be a Hub id) for every data source and local path the file names."""
    split = pipeline.split
    if split.data is not None:
        yield "split.data.path", split.data.path, split.data.config is None
    for name, ref in (split.subsets or {}).items():
        yield f"split.subsets.{name}.path", ref.path, ref.config is None
    for i, ref in enumerate(pipeline.unlearn.retain or []):
        yield f"unlearn.retain.{i}.path", ref.path, ref.config is None
    for name, given in pipeline.eval.chosen.items():
        for key in eval_registry.get(name).path_settings:
            value = given.get(key)
            if isinstance(value, dict):
                ref = DataRef.model_validate(value)
                yield f"eval.{name}.{key}.path", ref.path, ref.config is None
            elif isinstance(value, str):
                yield f"eval.{name}.{key}", value, True


def check_before_run(pipeline_file: Path, pipeline: Pipeline, run_dir: Path) -> ResolvedModel:
    """The resolved model, once nothing the file system can tell stands in the run's way; SpungeError otherwise."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SpungeError(f"--run-dir {run_dir} is a file; give a directory (it is created if missing)")
    above = next((parent for parent in run_dir.absolute().parents if parent.exists()), None)
    if above is not None and not above.is_dir():
        raise SpungeError(f"--run-dir {run_dir}: cannot create it ({above} is a file)")
    base_dir = pipeline_file.resolve().parent
    read: list[str | Path] = [pipeline_file]
    for key, written, local_checked in named_paths(pipeline):
        location = resolve_path(written, base_dir)
        if Path(location).exists():
            read.append(location)
        elif local_checked and names_local_path(written):
            raise SpungeError(f"{pipeline_file}: {key}: {written}: no such file or directory (read from {base_dir})")
    model = resolve_model(resolve_path(pipeline.model, base_dir))
    guard_output(run_dir, inputs=[*read, model.path], force=True, option="--run-dir")
    return model
