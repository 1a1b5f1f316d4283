"""The LoRA settings and checks every adapter-training method shares (TVN; the loss-based methods by default).

The four LoRA fields (rank, alpha, dropout, target modules) are declared through the factories below,
so their types, valid ranges and parsing are written once; each settings class still picks its own
defaults and help text, and keeps its own field order (its options' order in `--help`).

The two memory options (`gradient_checkpointing`, `quantize`) are declared whole here, help text and
default included, and applied by `load_training_base`, the one way a LoRA-based run loads its base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from spunge_merge.errors import SpungeError
from spunge_merge.models import ALIASES, ResolvedModel, load_causal_lm


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


# The type of a `quantize` field: how the frozen base weights are held while the adapter trains.
Quantize = Literal["none", "nf4"]


def gradient_checkpointing_field() -> Any:
    """A `gradient_checkpointing: bool` field, off by default (the same for every method that has it)."""
    return Field(False, description="Recompute each layer's activations during the backward pass instead of keeping them "
                                    "(activation checkpointing, non-reentrant): much less activation memory for one more "
                                    "forward pass per step; the same loss, gradients and adapter, so a finished run is reused.")


def quantize_field() -> Any:
    """A `quantize: Quantize` field, none by default (the same for every LoRA-based method)."""
    return Field("none", description="Base weights while the adapter trains: none (as dtype), or nf4 (QLoRA: the frozen base "
                                     "in 4-bit NormalFloat with double quantization through bitsandbytes, computed in dtype; "
                                     "the LoRA weights train in float32). Needs the bitsandbytes package. The adapter is an "
                                     "ordinary one, applied to the full-precision base (see docs/gpu.md for the caveat).")


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


# --------------------------------------------------------------------------------------------
# The memory options: checked before any model is loaded, applied when the base is.


def check_quantize(config: Any) -> None:
    """`quantize: nf4` needs bitsandbytes: one line naming the option and the package, before any model loads."""
    import importlib.util

    if getattr(config, "quantize", "none") == "none":
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SpungeError(f"quantize {config.quantize}: needs the bitsandbytes package, which is not installed "
                          "(pip install bitsandbytes, or pip install 'spunge-merge[qlora]'); or leave quantize at none")


def _nf4_config(dtype):
    """QLoRA's 4-bit base (Dettmers et al. 2023): NF4, double quantization, matmuls in the run's dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def load_training_base(resolved: ResolvedModel, config: Any, *, dtype, device):
    """The base model a run trains on, with the settings' memory options applied.

    `quantize: nf4` loads the base in 4-bit and prepares it as peft's QLoRA recipe does (norms and
    embeddings in float32, every base weight frozen). `gradient_checkpointing` turns on transformers'
    activation checkpointing, non-reentrant: it needs no input that requires grad, so it also works
    with peft's adapters switched off (NPO's reference pass) and on the CPU. It acts in train mode only.
    """
    quantized = getattr(config, "quantize", "none") == "nf4"
    if quantized:
        check_quantize(config)
    lm = load_causal_lm(resolved, dtype=dtype, device=device, quantization=_nf4_config(dtype) if quantized else None)
    if quantized:
        from peft import prepare_model_for_kbit_training

        # Checkpointing is turned on below, not by peft: its call is the deprecated gradient_checkpointing_enable.
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
        _keep_trainable_layout(lm)
    if getattr(config, "gradient_checkpointing", False):
        enable_checkpointing(lm)
    return lm


def enable_checkpointing(lm) -> None:
    """Non-reentrant activation checkpointing through transformers' current name for it (the older
    `gradient_checkpointing_enable` warns that it is deprecated from transformers 5.x on)."""
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers releases before the rename
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _keep_trainable_layout(lm) -> None:
    """bitsandbytes on a CPU with AVX512-BF16 repacks a 4-bit weight for inference at its first forward
    without gradients (an eval probe, NPO's reference pass), and its later forwards in training then
    pass no gradient through that layer: the adapters below it would silently stop training. Keeping
    the layout bitsandbytes trains with costs the probes a little speed; on CUDA nothing changes."""
    for module in lm.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
