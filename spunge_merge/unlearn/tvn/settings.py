"""TVN's settings (`TVNConfig`, whose fields are `spunge unlearn tvn`'s options) and what its run directory holds."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from spunge_merge.config import FrozenConfig, Lambda
from spunge_merge.unlearn.lora import (
    Quantize,
    TargetModules,
    alpha_field,
    dropout_field,
    gradient_checkpointing_field,
    quantize_field,
    rank_field,
    target_modules_field,
)

KIND = "tvn-adapter"
METHOD = "tvn"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
UNNEGATED = "unnegated"
_LORA_B = re.compile(r"\.lora_(embedding_)?B(\.|$)")
# Settings that do not change the trained adapter: a rerun that differs only in these reuses it
# (checkpointing trades memory for time and gives the same adapter: tests/test_memory_options.py).
_NOT_IN_FINGERPRINT = frozenset({"lam", "eval_samples", "device", "dtype", "gradient_checkpointing"})


class TVNConfig(FrozenConfig):
    """TVN hyperparameters; defaults follow the paper (Kadhe et al. 2024) where it gives a value."""

    rank: int = rank_field(16, note=" Paper: 16.", json_schema_extra={"cli_flags": ["--rank", "-r"]})
    lora_alpha: int = alpha_field(16, note=" Paper: 16.")
    lora_dropout: float = dropout_field(0.01, note=" Paper: 0.01.")
    target_modules: TargetModules = target_modules_field(
        None, description="Module names to adapt (q_proj,v_proj), or all-linear; unset = peft's default for the architecture "
                          "(q_proj, v_proj for Llama).")
    lr: float = Field(2e-5, gt=0.0, description="AdamW learning rate. Paper: 2e-5 on the whole set, 1e-4 on split subsets.")
    epochs: int = Field(1, ge=1, description="Passes over the forget texts. Paper: 1.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (None = all epochs).")
    batch_size: int = Field(8, ge=1, description="Texts per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(128, ge=2, description="Tokens per text, EOS included; longer texts are truncated.")
    warmup: float = Field(0.0, ge=0.0, description="Warmup: steps when >= 1, fraction of all steps when < 1.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule (transformers.get_scheduler).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the LoRA weights.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping norm (None = no clipping).")
    lam: Lambda = Field(1.0, description="λ in θ_u = θ_init − λ·(alpha/r)·B·A: how much of the task vector is subtracted; "
                        "change it later with `spunge negate`. Paper: 1.0.", json_schema_extra={"cli_flags": ["--lambda"]})
    seed: int = Field(42, description="Seed for LoRA init, dropout and shuffling.")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto.")
    dtype: str = Field("auto", description="Base model dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    eval_samples: int = Field(64, ge=0, description="Forget texts scored before/after training and after negation (0 = skip).")
    gradient_checkpointing: bool = gradient_checkpointing_field()
    quantize: Quantize = quantize_field()
    added_settings: ClassVar[dict[str, Any]] = {"quantize": "none"}

    def training_fingerprint_part(self) -> dict[str, Any]:
        return self.settings_fingerprint(_NOT_IN_FINGERPRINT)
