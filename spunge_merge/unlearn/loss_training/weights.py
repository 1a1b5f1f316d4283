"""Which weights a run trains: LoRA's target modules, or (`full`) the parameters `full_params` names."""

from __future__ import annotations

import re
from collections.abc import Sequence

from spunge_merge.errors import SpungeError
from spunge_merge.models import ResolvedModel
from spunge_merge.unlearn.lora import check_quantize, check_target_modules
from spunge_merge.unlearn.loss_training.config import LossMethodConfig


def _skeleton(resolved: ResolvedModel):
    """The model built on the meta device: names and shapes without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(resolved.path)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise SpungeError(f"{resolved.ref}: not a causal language model transformers can build ({exc})") from exc


def select_full_params(names: Sequence[str], config: LossMethodConfig, ref: str) -> list[str]:
    """The parameter names `full_params` selects; an error naming the pattern that matches nothing."""
    chosen = []
    for pattern in config.full_params:
        compiled = re.compile(pattern)
        matched = [name for name in names if compiled.fullmatch(name)]
        if not matched:
            example = names[len(names) // 2] if names else "?"
            raise SpungeError(f"full_params: '{pattern}' matches no parameter of {ref} (names look like {example})")
        chosen.extend(matched)
    return sorted(set(chosen), key=list(names).index)


def check_trainable(config: LossMethodConfig, resolved: ResolvedModel) -> None:
    """Fail before any output exists when the chosen weights are not in the model."""
    if config.full:
        select_full_params([name for name, _ in _skeleton(resolved).named_parameters()], config, resolved.ref)
    else:
        check_quantize(config)
        check_target_modules(config, resolved)
