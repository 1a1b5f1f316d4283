"""The RMU loss on layer ℓ's activations, one optimizer step, and the control vectors c·u."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from spunge_merge.unlearn.rmu.decoder import PrefixOutput, SplitDecoder

# The WMDP reference used `transformers.AdamW(params, lr)`: these are its defaults (removed in transformers 5).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-6


def activation_mse(activations, target, mask=None):
    """Mean squared error over tokens and features; with `mask`, padding is left out the way
    open-unlearning's RMU does it (token mean per sequence, then mean over sequences)."""
    import torch

    diff = (activations.float() - target.float().expand_as(activations)) ** 2
    if mask is None:
        return diff.mean()
    mask = mask.to(diff.dtype)
    per_sequence = (diff.mean(dim=-1) * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return per_sequence.mean() if per_sequence.numel() else torch.zeros((), device=diff.device)


def activation_cosine(activations, reference, mask=None):
    """Mean per-token cosine similarity (padding left out as in `activation_mse` when masked)."""
    import torch

    cosine = torch.nn.functional.cosine_similarity(activations.float(), reference.float(), dim=-1)
    if mask is None:
        return cosine.mean()
    mask = mask.to(cosine.dtype)
    return ((cosine * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).mean()


def activation_norm(activations, mask=None) -> list[float]:
    """Per-sequence mean token norm (what adaptive RMU scales c by)."""
    norms = activations.float().norm(dim=-1)
    if mask is None:
        return norms.mean(dim=1).tolist()
    mask = mask.to(norms.dtype)
    return ((norms * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).tolist()


@dataclass
class Batch:
    """One tokenized batch (left padded) and where it came from."""

    key: tuple
    input_ids: Any
    attention_mask: Any


@dataclass
class StepRecord:
    forget_loss: float
    retain_loss: float
    forget_cosine: float
    stopped: bool = False


class NonFiniteLoss(ArithmeticError):
    """Raised by `RMUTrainer.step` before any update when the loss is NaN or infinite."""

    def __init__(self, record: StepRecord):
        super().__init__(f"forget loss {record.forget_loss}, retain loss {record.retain_loss}")
        self.record = record


class RMUTrainer:
    """The RMU optimisation on a `SplitDecoder`: one step = forget pass, retain pass, frozen retain pass,
    AdamW update of the selected parameters. `restore` puts θ0 back for the next subset."""

    def __init__(self, stack: SplitDecoder, param_names: Sequence[str], *, lr: float, mask_padding: bool = False,
                 cache_prefix: bool = False):
        import torch

        self.stack = stack
        self.mask_padding = mask_padding
        self.cache: dict[tuple, PrefixOutput] | None = {} if cache_prefix else None
        named = dict(stack.model.named_parameters())
        stack.model.requires_grad_(False)
        self.params = {}
        self.frozen: dict[int, dict[str, Any]] = {}
        self.originals: dict[str, Any] = {}
        for name in param_names:
            param = named[name]
            param.requires_grad_(True)
            self.params[name] = param
            self.originals[name] = param.detach().clone()
            layer_index = int(name.split(".")[1])
            self.frozen.setdefault(layer_index, {})[name.split(".", 2)[2]] = self.originals[name]
        self.lr = lr
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0)

    def restore(self) -> None:
        """θ ← θ0, fresh optimizer state and prefix cache (a new run from the same base)."""
        import torch

        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.originals[name])
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=self.lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0)
        if self.cache is not None:
            self.cache.clear()

    def _prefix(self, batch: Batch) -> PrefixOutput:
        if self.cache is not None and batch.key in self.cache:
            return self.cache[batch.key]
        out = self.stack.prefix(batch.input_ids, batch.attention_mask)
        if self.cache is not None:
            self.cache[batch.key] = out
        return out

    def frozen_activations(self, batch: Batch):
        """Layer-ℓ activations of the initial model θ0."""
        import torch

        with torch.no_grad():
            return self.stack.suffix(self._prefix(batch), self.frozen)

    def step(self, forget: Batch, retain: Batch, control, alpha: float, *,
             should_stop: Callable[[float], bool] | None = None) -> StepRecord:
        """One update; `should_stop(forget cosine)` True ends training before this update is applied."""
        import torch

        forget_mask = forget.attention_mask if self.mask_padding else None
        retain_mask = retain.attention_mask if self.mask_padding else None
        forget_prefix = self._prefix(forget)
        forget_acts = self.stack.suffix(forget_prefix)
        forget_loss = activation_mse(forget_acts, control, forget_mask)
        retain_prefix = self._prefix(retain)
        retain_acts = self.stack.suffix(retain_prefix)
        with torch.no_grad():
            frozen_retain = self.stack.suffix(retain_prefix, self.frozen)
            frozen_forget = self.stack.suffix(forget_prefix, self.frozen)
            cosine = activation_cosine(forget_acts.detach(), frozen_forget, forget_mask).item()
        retain_loss = alpha * activation_mse(retain_acts, frozen_retain, retain_mask)
        loss = forget_loss + retain_loss
        record = StepRecord(forget_loss=forget_loss.item(), retain_loss=retain_loss.item(), forget_cosine=cosine)
        if not math.isfinite(record.forget_loss + record.retain_loss):
            raise NonFiniteLoss(record)
        if should_stop is not None and should_stop(cosine):
            record.stopped = True
            return record
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return record


def control_vectors(hidden_size: int, coefficients: Sequence[float], seed: int):
    """One c·u per corpus, u = rand(hidden) / ‖·‖, drawn in order from `seed` as the reference does
    right after `torch.manual_seed(seed)` (CPU generator, float32)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    vectors = []
    for coefficient in coefficients:
        random_vector = torch.rand(1, 1, hidden_size, generator=generator)
        vectors.append(random_vector / torch.norm(random_vector) * coefficient)
    return vectors

