"""The settings every loss-based method shares (`LossMethodConfig`), the retain-weighted variant, and a method's `Objective`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from spunge_merge.config import FrozenConfig
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
from spunge_merge.unlearn.losses import SequenceLogProbs
from spunge_merge.unlearn.registry import OutputKind

PEFT_ADAPTER: OutputKind = "peft-adapter"
TENSOR_DELTA: OutputKind = "tensor-delta"
# Settings that do not change the trained weights: a rerun differing only in these is skipped
# (checkpointing trades memory for time and gives the same weights: tests/test_memory_options.py).
_NOT_IN_FINGERPRINT = frozenset({"device", "dtype", "eval_samples", "gradient_checkpointing"})


class LossMethodConfig(FrozenConfig):
    """Settings every loss-based method shares: LoRA or full training, optimisation, data, runtime."""

    full: bool = Field(False, description="Train the tensors named by full_params directly and write only the changed "
                                          "ones (delta.safetensors) instead of a LoRA adapter.")
    full_params: list[str] = Field([r".*layers\.(5|6|7)\.mlp\.down_proj\.weight"], min_length=1,
                                   description="With full: regexes (commas between them in one string); a parameter "
                                               "trains when one matches its whole name (default: the MLP down_proj of "
                                               "layers 5-7, RMU's choice).")
    rank: int = rank_field(16)
    lora_alpha: int = alpha_field(16)
    lora_dropout: float = dropout_field(0.0)
    target_modules: TargetModules = target_modules_field(
        "all-linear", description="Modules LoRA adapts: names separated by commas, all-linear, or None for peft's "
                                  "default for the architecture.")
    lr: float = Field(1e-4, gt=0.0, description="AdamW learning rate (open-unlearning: 1e-5 for full fine-tuning; "
                                                "LoRA usually needs about 10× more).")
    epochs: int = Field(1, ge=1, description="Passes over the forget texts.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (None = all epochs).")
    batch_size: int = Field(8, ge=1, description="Forget texts per micro-batch (and retain texts beside each).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(128, ge=2, description="Tokens per text, EOS included; longer texts are truncated.")
    warmup: float = Field(0.0, ge=0.0, description="Warmup: steps when >= 1, fraction of all steps when < 1.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "constant", description="Learning-rate schedule (transformers.get_scheduler).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the trained weights.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping norm (None = no clipping).")
    seed: int = Field(42, description="Seed for LoRA init, dropout and the order of forget and retain rows.")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto.")
    dtype: str = Field("auto", description="Model dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    eval_samples: int = Field(32, ge=0, description="Forget texts whose NLL is reported before and after training (0 = skip).")
    gradient_checkpointing: bool = gradient_checkpointing_field()
    quantize: Quantize = quantize_field()
    added_settings: ClassVar[dict[str, Any]] = {"quantize": "none", "prompt_column": None, "answer_column": None,
                                                "retain_loss": "nll"}
    prompt_column: str | None = Field(None, description="Question/answer form (TOFU's): the column holding each row's prompt; "
                                                        "with answer_column, the loss covers the answer tokens only, the prompt "
                                                        "is context. Retain files holding both columns are read the same way.")
    answer_column: str | None = Field(None, description="Question/answer form: the column holding each row's answer (given "
                                                        "with prompt_column).")

    @model_validator(mode="after")
    def _question_answer_pair(self):
        if (self.prompt_column is None) != (self.answer_column is None):
            raise ValueError("prompt_column and answer_column are given together (the question/answer form) or not at all")
        return self

    @field_validator("full_params", mode="before")
    @classmethod
    def _check_patterns(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for pattern in value or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a valid regular expression ({exc})") from None
        return value

    @field_validator("quantize")
    @classmethod
    def _quantize_needs_lora(cls, value: str, info: ValidationInfo) -> str:
        if value != "none" and info.data.get("full"):
            raise ValueError(f"{value} trains a LoRA adapter on a 4-bit base, which full does not use; "
                             "set quantize to none, or full to false")
        return value

    # What the shared loop asks of a method's settings.
    def forget_weight(self) -> float:
        return 1.0

    def retain_weight(self) -> float:
        """Weight of the retain NLL term; > 0 means the run needs retain data."""
        return 0.0

    def fingerprint_part(self) -> dict[str, Any]:
        return self.settings_fingerprint(_NOT_IN_FINGERPRINT)


class RetainTermConfig(LossMethodConfig):
    """A loss with open-unlearning's weights: γ·forget term + α·retain NLL."""

    gamma: float = Field(1.0, gt=0.0, description="γ: weight of the forget term.")
    alpha: float = Field(1.0, ge=0.0, description="α: weight of the retain NLL term (> 0 needs retain data).")
    retain_loss: Literal["nll", "kl"] = Field(
        "nll", description="The retain term: nll (token-mean NLL of the retain texts) or kl (token-mean KL(π_base ‖ π_θ) of the "
                           "next-token distributions on the retain texts; π_base is the same model with the adapter off, or "
                           "the chosen tensors' values before training with full).")

    def forget_weight(self) -> float:
        return self.gamma

    def retain_weight(self) -> float:
        return self.alpha


@dataclass(frozen=True)
class Objective:
    """A method's forget term: `forget_sum(lp, reference, config)` summed over a micro-batch, divided
    by the group's forget tokens (`per="token"`) or sequences (`per="sequence"`)."""

    forget_sum: Callable[[SequenceLogProbs, Any, Any], Any]
    per: Literal["token", "sequence"]
    reference: bool = False  # needs log π_ref(y|x) of each forget row (NPO)
