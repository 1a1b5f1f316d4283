"""The LoRA settings and checks every adapter-training method shares (TVN; the loss-based methods by default).

The four LoRA fields (rank, alpha, dropout, target modules) are declared through the factories below,
so their types, valid ranges and parsing are written once; each settings class still picks its own
defaults and help text, and keeps its own field order (its options' order in `--help`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from spunge_merge.errors import SpungeError
from spunge_merge.models import ALIASES, ResolvedModel


def target_module_names(value: Any) -> Any:
    """LoRA target modules as people write them: `q_proj,v_proj` (CLI, YAML) or a list, or `all-linear`.
    Shared by every LoRA-based method's settings."""
    if isinstance(value, str) and value.strip().lower() != "all-linear":
        names = [name.strip() for name in value.split(",") if name.strip()]
        if not names:
            raise ValueError("give module names separated by commas, or all-linear")
        return names
    if isinstance(value, str):
        return "all-linear"
    if isinstance(value, list) and not value:
        raise ValueError("empty list; leave it unset for peft's default")
    return value


# The type of a `target_modules` field: names (a list, or one string with commas between them), all-linear,
# or None for peft's default for the architecture.
TargetModules = Annotated[list[str] | Literal["all-linear"] | None, BeforeValidator(target_module_names)]


def rank_field(default: int, *, note: str = "", **extra: Any) -> Any:
    """A `rank: int` field: LoRA rank r, at least 1."""
    return Field(default, ge=1, description=f"LoRA rank r.{note}", **extra)


def alpha_field(default: int, *, note: str = "") -> Any:
    """A `lora_alpha: int` field, at least 1."""
    return Field(default, ge=1, description=f"LoRA alpha; the update is scaled by alpha/r.{note}")


def dropout_field(default: float, *, note: str = "") -> Any:
    """A `lora_dropout: float` field, in [0, 1)."""
    return Field(default, ge=0.0, lt=1.0, description=f"Dropout on the LoRA input.{note}")


def target_modules_field(default: list[str] | str | None, *, description: str) -> Any:
    """A `target_modules: TargetModules` field."""
    return Field(default, description=description)


# --------------------------------------------------------------------------------------------
# Target modules: checked on a weightless (meta-device) copy of the model before any training.


def _lora_capable_modules(resolved: ResolvedModel) -> tuple[str, list[str]]:
    """(model_type, names of the modules LoRA can adapt: linear, embedding, conv)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        config = AutoConfig.from_pretrained(resolved.path)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise SpungeError(f"{resolved.ref}: not a causal language model transformers can build ({exc})") from exc
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    return config.model_type, [name for name, module in skeleton.named_modules() if isinstance(module, kinds)]


def check_target_modules(config: Any, resolved: ResolvedModel) -> None:
    """Every requested target module (`config.target_modules`) must match a LoRA-capable module (peft's own matching rule)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type, keys = _lora_capable_modules(resolved)
    available = ", ".join(sorted({key.rsplit(".", 1)[-1] for key in keys}))
    if config.target_modules is None:
        if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise SpungeError(f"peft has no default LoRA target modules for model type '{model_type}'; "
                              f"pass --target-modules (modules: {available})")
        return
    if config.target_modules == "all-linear":
        return
    for name in config.target_modules:
        probe = LoraConfig(target_modules=[name])
        if not any(check_target_module_exists(probe, key) for key in keys):
            raise SpungeError(f"target module '{name}' matches no linear or embedding layer of {resolved.ref} "
                              f"(modules: {available})")


def lora_config(config: Any):
    """peft's `LoraConfig` for settings holding the four LoRA fields (no bias, causal LM)."""
    from peft import LoraConfig

    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, bias="none", task_type="CAUSAL_LM")


def adapter_base_name(resolved: ResolvedModel) -> str:
    """What adapter_config.json names as the base: the Hub id when the user gave one, else the local path."""
    is_local = resolved.ref in ALIASES or Path(resolved.ref).expanduser().exists()
    return str(resolved.path) if is_local else resolved.ref
