"""The training loop shared by the loss-based unlearning methods (GA, GradDiff, NPO, SimNPO).

A method contributes only its forget term (`Objective`) and its settings class; this module owns
everything else: LoRA through peft (default) or direct training of chosen tensors (`full`), the
optimizer and schedule, exact gradient accumulation, the order in which forget and retain rows are
seen, NPO's reference log-probabilities, the run directory, and the `UnlearningMethod` record.

What a run writes *is* the unlearned update, with no negation:
- LoRA: a plain peft adapter directory (kind "peft-adapter"); λ scales its lora_B.
- `full`: `delta.safetensors` holding the new values of the trained tensors only, under their
  checkpoint names (kind "tensor-delta", RMU's layout); λ scales (new − base).

Data order: forget rows are reshuffled every epoch with `seed + epoch`; retain rows come from one
stream that runs through the *whole* retain set (reshuffled on each pass) across steps and
epochs, one retain micro-batch beside each forget micro-batch. Reference log-probabilities
(NPO) are computed once per forget row before training, from the same weights with the adapter
disabled (LoRA) or not yet trained (`full`), so no second model copy is ever held.

The package: `config` (LossMethodConfig, RetainTermConfig, Objective), `order` (row order, step
count), `weights` (what trains), `loop` (`fit`), `session` (one run on a loaded model), `runs`
(`train_runs`), `record` (the registry record's parts, `loss_method`). The LoRA fields and checks
are shared with TVN in `unlearn.lora`. Every public name stays importable from here.
"""

from __future__ import annotations

import logging

from spunge_merge.unlearn.lora import lora_config as _lora_config  # its old private name, still used by bench/methods.py
from spunge_merge.unlearn.loss_training.config import PEFT_ADAPTER, TENSOR_DELTA, LossMethodConfig, Objective, RetainTermConfig
from spunge_merge.unlearn.loss_training.loop import Fit, fit, reference_logprobs
from spunge_merge.unlearn.loss_training.order import forget_groups, planned_steps, retain_stream
from spunge_merge.unlearn.loss_training.record import loss_method, match_baseline_for, output_kind, settings, to_model
from spunge_merge.unlearn.loss_training.runs import check_retain, train_runs
from spunge_merge.unlearn.loss_training.session import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DELTA_FILE
from spunge_merge.unlearn.loss_training.weights import check_trainable, select_full_params

log = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "DELTA_FILE", "PEFT_ADAPTER", "TENSOR_DELTA", "Fit", "LossMethodConfig", "Objective",
    "RetainTermConfig", "check_retain", "check_trainable", "fit", "forget_groups", "log", "loss_method", "match_baseline_for",
    "output_kind", "planned_steps", "reference_logprobs", "retain_stream", "select_full_params", "settings", "to_model",
    "train_runs", "_lora_config",
]
