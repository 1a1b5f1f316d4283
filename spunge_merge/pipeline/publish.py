"""Publishing any spunge output: a per-subset run (materialized on request) or a pipeline's runs and merged model.

`hub.push_model` checks and uploads a directory that is a model or a LoRA adapter. A tensor-delta run
(RMU, `--full`) holds only the tensors that changed: it becomes a model only on its base, which is the
unlearning method's own `to_model` (the registry), so that step sits here, above both `unlearn` and `hub`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.provenance import read_provenance
from spunge_merge.runs import list_runs
from spunge_merge.unlearn import registry


def card_inputs() -> dict[str, Any]:
    """What the card reads from the registries above it: the methods' paragraphs, the evaluations' figures."""
    from spunge_merge.evaluate.registry import card_metrics

    return {"method_descriptions": registry.descriptions(), "metrics": card_metrics}


def materialize_run(run: Path, out: Path, *, base: str | None = None) -> Path:
    """A run as a full model directory (base + the run's update at its own scale), through its method's `to_model`.
    `base`: the base model (default: the one recorded in the run's spunge.json)."""
    from spunge_merge.models import resolve_model

    record = read_provenance(run) or {}
    method = record.get("method")
    if not isinstance(method, str):
        raise SpungeError(f"{run}/spunge.json: names no unlearning method, so the run cannot be materialized")
    recorded = record.get("base_model") if isinstance(record.get("base_model"), dict) else {}
    ref = base or (recorded.get("path") if recorded.get("path") and Path(recorded["path"]).is_dir() else recorded.get("ref"))
    if not ref:
        raise SpungeError(f"{run}/spunge.json: records no base model; pass --base")
    with tempfile.TemporaryDirectory(prefix=".spunge-publish-scratch-", dir=out.parent) as scratch:
        return registry.get_method(method).to_model(resolve_model(ref), run, None, out, Path(scratch))


def push_output(directory: str | Path, repo_id: str, *, materialize: bool = False, base: str | None = None,
                **push_options: Any) -> dict[str, Any]:
    """`hub.push_model` on any spunge output. With `materialize`, a run is first written as a full model (in a
    temporary folder beside it, removed afterwards) and that is pushed, with the run's evaluations."""
    from spunge_merge.hub import push_model

    directory = Path(directory)
    options = {**card_inputs(), **push_options}
    if not materialize:
        return push_model(directory, repo_id, **options)
    if not directory.is_dir() or read_provenance(directory) is None:
        raise SpungeError(f"{directory}: not a spunge run (no spunge.json); --materialize takes one run of `spunge unlearn`")
    _check_before_work(repo_id, push_options)
    with tempfile.TemporaryDirectory(prefix=".spunge-publish-", dir=directory.parent) as tmp:
        model = materialize_run(directory, Path(tmp) / directory.name, base=base)
        evals = [p for p in (directory / "eval",) if p.is_dir()]
        options["eval_dirs"] = [*(options.get("eval_dirs") or []), *evals]
        result = push_model(model, repo_id, **options)
    result["materialized_from"] = str(directory)
    return result


def _check_before_work(repo_id: str, options: dict[str, Any]) -> None:
    """What a push would refuse, checked before a model is written: the repo id, the task, the token."""
    from spunge_merge.card.task import TASKS
    from spunge_merge.hub import resolve_token
    from spunge_merge.hub.checks import _check_repo_id

    _check_repo_id(repo_id)
    if options.get("task") is not None and options["task"] not in TASKS:
        raise SpungeError(f"--task {options['task']}: expected one of {', '.join(TASKS)}")
    if not options.get("dry_run"):
        resolve_token(options.get("token"))


def pipeline_outputs(unlearn_dir: Path, merged: Path, repo_id: str) -> list[tuple[Path, str, bool]]:
    """(directory, repo id, materialize?) for every per-subset run of a pipeline and its merged model:
    the runs go to `REPO-<subset>`, the merged model to `REPO`. Delta runs are materialized."""
    found = [(merged, repo_id, False)]
    for run in list_runs(unlearn_dir):
        adapter = (run / "adapter_config.json").is_file()
        found.append((run, f"{repo_id}-{run.name}", not adapter and not (run / "config.json").is_file()))
    return found
