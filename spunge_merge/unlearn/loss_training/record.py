"""A loss-based method's registry record: baseline budget, output kind, λ-scaled model, settings."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spunge_merge.config import build_config
from spunge_merge.errors import SpungeError
from spunge_merge.models import ResolvedModel
from spunge_merge.provenance import read_provenance
from spunge_merge.runs import RunOutcome
from spunge_merge.unlearn.loss_training.config import PEFT_ADAPTER, TENSOR_DELTA, LossMethodConfig, Objective
from spunge_merge.unlearn.loss_training.order import planned_steps
from spunge_merge.unlearn.loss_training.runs import train_runs
from spunge_merge.unlearn.outputs import delta_to_model, peft_adapter_to_model
from spunge_merge.unlearn.registry import BaselineBudget, OutputKind, RetainNeed, TrainRequest, UnlearningMethod


def match_baseline_for(config_class: type[LossMethodConfig]):
    """`match_baseline` for a config class: the un-split run's max_steps/epochs at the split runs' total."""

    def as_config(value: Any) -> LossMethodConfig:
        return value if isinstance(value, config_class) else config_class.model_validate(dict(value))

    def match_baseline(split_configs: Mapping[str, Any] | Sequence[Any], split_rows: Mapping[str, Any] | Sequence[Any],
                       baseline: Any, retain_rows: int | None = None, corpora: str = "union") -> BaselineBudget:
        """`split_configs` and `split_rows` (each run's forget texts, or their count) by run name or as
        parallel lists; settings or mappings."""
        if not isinstance(split_rows, Mapping):  # parallel lists: name the runs by position
            split_configs = dict(enumerate(split_configs))
            split_rows = dict(enumerate(split_rows))
        per_run = {name: planned_steps(as_config(split_configs[name]), rows, retain_rows) for name, rows in split_rows.items()}
        total = sum(per_run.values())
        cfg = as_config(baseline)
        rows = sum(n if isinstance(n, int) else len(n) for n in split_rows.values())
        per_epoch = planned_steps(cfg.model_copy(update={"epochs": 1, "max_steps": None}), rows)
        changes: dict[str, Any] = {}
        if planned_steps(cfg, rows) != total:
            changes = {"epochs": max(cfg.epochs, math.ceil(total / per_epoch)), "max_steps": total}
        adjusted = config_class.model_validate({**cfg.model_dump(), **changes})
        changed = {k: v for k, v in changes.items() if getattr(cfg, k) != v}
        return BaselineBudget(config=adjusted, record={"split_runs": per_run, "split_total": total,
                                                       "baseline_planned": planned_steps(adjusted, rows), "changed": changed})

    return match_baseline


def output_kind(config: LossMethodConfig) -> OutputKind:
    return TENSOR_DELTA if config.full else PEFT_ADAPTER


def to_model(base: ResolvedModel, run: Path, lam: float | None, out: Path, scratch: Path | None = None) -> Path:
    """A full model directory: base + λ·(the run's update), λ None meaning 1 (the run as trained), through
    the shared converters of `unlearn.outputs` (an adapter's lora_B scaled by λ, or base + λ·(new − base))."""
    run, out = Path(run), Path(out)
    record = read_provenance(run) or {}
    if record.get("kind") not in (PEFT_ADAPTER, TENSOR_DELTA):
        raise SpungeError(f"{run}: not a run of a loss-based unlearning method (spunge.json kind '{record.get('kind')}')")
    expected = (record.get("base_model") or {}).get("fingerprint")
    if expected and expected != base.fingerprint:
        raise SpungeError(f"{run} was trained on a different base model than {base.ref} (fingerprint mismatch)")
    if record["kind"] == TENSOR_DELTA:
        return delta_to_model(base, run, lam, out)
    if lam is None or lam == 1.0:
        return peft_adapter_to_model(base, run, lam, out, out.parent)  # the adapter as trained: nothing to scale
    where = Path(scratch) if scratch is not None else out.parent
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".spunge-scale-", dir=where) as private:
        return peft_adapter_to_model(base, run, lam, out, Path(private))


def loss_method(*, name: str, summary: str, description: str, config_class: type[LossMethodConfig], retain: RetainNeed,
                objective: Objective) -> UnlearningMethod:
    """The registry record of a loss-based method: its own loss and settings, everything else shared."""

    def train(request: TrainRequest) -> list[RunOutcome]:
        return train_runs(request, method=name, objective=objective, retain_need=retain)

    return UnlearningMethod(
        name=name, summary=summary, description=description, config_class=config_class, retain=retain,
        output_kind=output_kind, train=train, planned_steps=planned_steps,
        match_baseline=match_baseline_for(config_class), to_model=to_model,
        default_lambda=lambda config: 1.0, uses_retain=lambda config: config.retain_weight() > 0,
    )


def settings(config_class: type[LossMethodConfig], values: Mapping[str, Any] | None = None) -> LossMethodConfig:
    """A method's settings from a mapping (Python API), errors naming the key."""
    return build_config(config_class, overrides=dict(values or {}))
