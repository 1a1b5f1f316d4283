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
