"""RMU's settings: the steering coefficient's syntax and `RMUConfig`, whose fields are the CLI's options."""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from spunge_merge.config import FrozenConfig
from spunge_merge.errors import SpungeError


def parse_steering(value: float | str) -> tuple[str, float]:
    """`6.5` → ("fixed", 6.5); `auto` → ("auto", 5.0); `auto:2` → ("auto", 2.0)."""
    if isinstance(value, bool):
        raise ValueError(f"steering coefficient {value!r} is not a number or auto[:β]")
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"steering coefficient must be > 0, got {value}")
        return "fixed", number
    text = str(value).strip().lower()
    if text == "auto" or text.startswith("auto:"):
        beta_text = text[5:] or "5"
        try:
            beta = float(beta_text)
        except ValueError:
            raise ValueError(f"auto steering scale β must be a number, got '{beta_text}'") from None
        if not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"auto steering scale β must be > 0, got {beta_text}")
        return "auto", beta
    try:
        return parse_steering(float(text))
    except ValueError as exc:
        if "must be" in str(exc):
            raise
        raise ValueError(f"steering coefficient '{value}' is not a number or auto[:β]") from None


class RMUConfig(FrozenConfig):
    """RMU hyperparameters. Defaults are the WMDP paper's Zephyr-7B run (README command of the reference)."""

    layer: int = Field(7, ge=0, description="Decoder layer ℓ whose output is steered (reference: 7).")
    update_layers: list[int] = Field([5, 6, 7], min_length=1, description="Layers whose tensors are trained (reference: 5,6,7).")
    update_params: str = Field(r"mlp\.down_proj\.weight",
                               description="Regex on the parameter name inside each update layer (reference: param index 6 = down_proj).")
    param_regex: str | None = Field(None, description="Regex on full checkpoint tensor names; replaces update_layers/update_params.")
    steering_coeff: float | str | list[float | str] = Field(
        6.5, description="c: a number, or auto[:β] = β × mean layer-ℓ norm on forget data; one per forget corpus allowed.")
    alpha: float | list[float] = Field(1200.0, description="Retain weight α; one per forget corpus allowed (paper 1200, script 100).")
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate (betas 0.9/0.999, eps 1e-6, no weight decay, as the "
                                              "reference's transformers.AdamW); paper and reference: 5e-5.")
    batch_size: int = Field(4, ge=1, description="Texts per forget batch and per retain batch.")
    max_num_batches: int = Field(150, ge=1, description="Steps per epoch at most (WMDP README 150, script default 80).")
    forget_max_length: int | list[int] = Field(512, description="Forget truncation in tokens; one per forget corpus allowed.")
    retain_max_length: int = Field(512, ge=1, description="Retain truncation in tokens.")
    min_chars: int = Field(0, ge=0, description="Drop texts of at most this many characters (reference --min_len, default 0).")
    epochs: int = Field(1, ge=1, description="Passes over the batches (reference 1; the Spunge paper's variant 2).")
    data_order: Literal["shuffled", "reference"] = Field(
        "shuffled", description="shuffled: forget rows reshuffled every epoch with the seed, retain batches drawn from a seeded "
        "permutation of the whole retain set that continues across steps and epochs (every retain row gets used); reference: "
        "the WMDP script's order (file order, retain batch i paired with forget batch i, no shuffle; the only order in which "
        "cache_prefix helps, since shuffled batches never recur).")
    early_stop_cosine: float | None = Field(
        None, gt=-1.0, lt=1.0, description="Stop when the forget-batch cosine to initial activations drops below this (paper C.1: 0.5).")
    early_stop_window: int = Field(1, ge=1, description="Compare the mean cosine of the last N forget batches (1: the paper's rule).")
    mask_padding: bool = Field(False, description="Exclude padding tokens from both losses (open-unlearning's port).")
    seed: int = Field(42, description="Seed of the control vector(s) and everything else (reference: 42).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    cache_prefix: bool = Field(False, description="Keep frozen-prefix activations across epochs (memory for speed).")

    @field_validator("steering_coeff")
    @classmethod
    def _check_steering(cls, value):
        for item in value if isinstance(value, list) else [value]:
            parse_steering(item)
        if isinstance(value, list) and not value:
            raise ValueError("give at least one steering coefficient")
        return value

    @field_validator("alpha")
    @classmethod
    def _check_alpha(cls, value):
        items = value if isinstance(value, list) else [value]
        if not items or any(not math.isfinite(a) or a < 0 for a in items):
            raise ValueError("alpha must be >= 0 (one value, or one per forget corpus)")
        return value

    @field_validator("forget_max_length")
    @classmethod
    def _check_lengths(cls, value):
        items = value if isinstance(value, list) else [value]
        if not items or any(n < 1 for n in items):
            raise ValueError("forget_max_length must be >= 1 (one value, or one per forget corpus)")
        return value

    @field_validator("param_regex", "update_params")
    @classmethod
    def _check_regex(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return value

    @model_validator(mode="after")
    def _check_layers(self):
        if any(i < 0 for i in self.update_layers):
            raise ValueError("update_layers must be >= 0")
        if self.param_regex is None:
            above = sorted(i for i in self.update_layers if i > self.layer)
            if above:
                raise ValueError(f"update layer {above[0]} is above layer {self.layer}: its tensors cannot affect layer "
                                 f"{self.layer}'s output, which is all the RMU loss reads")
        return self

    def per_corpus(self, name: str, count: int) -> list:
        """`name`'s value for each of `count` forget corpora (a single value applies to all)."""
        value = getattr(self, name)
        if not isinstance(value, list):
            return [value] * count
        if len(value) == 1:
            return value * count
        if len(value) != count:
            raise SpungeError(f"{name} has {len(value)} values but there are {count} forget corpora (give one, or one per corpus)")
        return list(value)

    def fingerprint_part(self) -> dict[str, Any]:
        """Settings that determine the result (device and caching do not)."""
        return self.model_dump(exclude={"device", "cache_prefix"})

