"""Where and how models run: the device, the dtype, the seeds.

Every stage that loads a model (unlearning, evaluation, the merge's CUDA option) reads these helpers,
so one setting means the same thing everywhere: `auto` is CUDA when available, bf16 on CUDA and fp32
elsewhere, and a seed reaches Python's, numpy's and torch's generators alike.
"""

from __future__ import annotations

import random
from typing import Any

from spunge_merge.errors import SpungeError


def pick_device(spec: str = "auto"):
    """`cpu`, `cuda`, `cuda:N`, `mps` or `auto` (cuda when available)."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise SpungeError(f"device '{spec}' requested but CUDA is not available")
    try:
        return torch.device(spec)
    except RuntimeError as exc:
        raise SpungeError(f"unknown device '{spec}' (use cpu, cuda, cuda:N or auto)") from exc


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def pick_dtype(spec: str, device) -> Any:
    """`auto` is bf16 on CUDA and fp32 elsewhere; else float32/bfloat16/float16."""
    import torch

    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec not in _DTYPES:
        raise SpungeError(f"unknown dtype '{spec}' (use auto, float32, bfloat16, float16)")
    return getattr(torch, _DTYPES[spec])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Dependency deprecations a spunge user can do nothing about, by the call that triggers them: filtered
# around that call only (any other warning, and these ones from the user's own code, still show).
PEFT_WRAP_WARNINGS = (r".*`is_gradient_checkpointing` is deprecated.*",)  # transformers 5, read by peft's PeftModel
CONFIG_DTYPE_LOGS = ("`torch_dtype` is deprecated",)  # transformers 5's logger, when mergekit sets config.torch_dtype


class _DropMessages:
    """A logging filter that drops records containing any of `parts`."""

    def __init__(self, parts: tuple[str, ...]):
        self.parts = parts

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not any(part in message for part in self.parts)


def quiet_dependency(warnings_like: tuple[str, ...] = (), logs_like: tuple[str, ...] = (), logger: str = "transformers"):
    """A context manager silencing, during one call, the Python warnings whose message matches a regex of
    `warnings_like` and the records of `logger` (and its children) containing a text of `logs_like`."""
    import contextlib
    import logging
    import warnings

    @contextlib.contextmanager
    def scope():
        drop = _DropMessages(logs_like)
        handlers = [h for name in {logger, *(n for n in logging.root.manager.loggerDict if n.startswith(logger + "."))}
                    for h in [logging.getLogger(name)]] if logs_like else []
        for target in handlers:
            target.addFilter(drop)
        try:
            with warnings.catch_warnings():
                for pattern in warnings_like:
                    warnings.filterwarnings("ignore", message=pattern)
                yield
        finally:
            for target in handlers:
                target.removeFilter(drop)
    return scope()


# Training steps, for whoever shows progress: a training loop calls `report_step` after each optimizer step;
# a pipeline's view listens (`listen_to_steps`) and shows "step N/TOTAL" on the running job, in its log too.
_STEP_LISTENERS: list = []


def report_step(label: str, step: int, total: int) -> None:
    """One optimizer step of the run `label` done (`step` of `total`)."""
    for listener in list(_STEP_LISTENERS):
        listener(label, step, total)


def listen_to_steps(callback):
    """A context manager: `callback(label, step, total)` on every reported step while it is open."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        _STEP_LISTENERS.append(callback)
        try:
            yield
        finally:
            _STEP_LISTENERS.remove(callback)
    return scope()
