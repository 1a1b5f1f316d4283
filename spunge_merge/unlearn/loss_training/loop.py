"""The optimisation loop: γ·forget term + α·retain term (NLL, or KL to the base model), exact gradient accumulation,
NPO's reference log-probabilities."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from spunge_merge.errors import SpungeError
from spunge_merge.runtime import report_step
from spunge_merge.unlearn import lm_data
from spunge_merge.unlearn.loss_training.config import LossMethodConfig, Objective
from spunge_merge.unlearn.loss_training.order import forget_groups, planned_steps, retain_stream
from spunge_merge.unlearn.losses import kl_to_base_sum, nll_sum, sequence_logprobs


@dataclass
class Fit:
    losses: list[float]
    forget_terms: list[float]
    retain_terms: list[float]
    forget_used: set[int]
    retain_used: set[int]


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def reference_logprobs(model, encoded: Sequence[Sequence[int]], *, pad_id: int, batch_size: int, device):
    """log π(y|x) summed per row, without gradients, in eval mode, in row order (a float32 tensor on `device`)."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch = lm_data.collate(encoded[start:start + batch_size], pad_id).to(device)
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
                out.append(sequence_logprobs(logits, batch.labels).total)
    finally:
        model.train(was_training)
    return torch.cat(out)


def _accumulate(group, retain_group, forget, retain, *, forward, retain_sum, objective: Objective, config: LossMethodConfig,
                reference, result: Fit) -> tuple[float, float]:
    """Back-propagate one accumulation group (one optimizer step) and return its forget and retain terms.

    Each term is divided by its unit count over the whole group (tokens or sequences for the forget term,
    as `objective.per` says; predicted tokens for the retain term), so the step's gradient is the group's mean.
    """
    import torch

    gamma, alpha = config.forget_weight(), config.retain_weight()
    if objective.per == "token":
        forget_norm = sum(lm_data.predicted_tokens(forget[i]) for micro in group for i in micro)
    else:
        forget_norm = sum(len(micro) for micro in group)
    retain_norm = sum(lm_data.predicted_tokens(retain[i]) for micro in retain_group for i in micro)
    step_forget = step_retain = 0.0
    for position, micro in enumerate(group):
        lp = forward([forget[i] for i in micro])
        ref = reference[torch.tensor(micro, device=reference.device)] if objective.reference else None
        term = gamma * objective.forget_sum(lp, ref, config) / forget_norm
        term.backward()
        step_forget += float(term.detach())
        result.forget_used.update(micro)
        if retain_group:
            rows = retain_group[position]
            term = alpha * retain_sum([retain[i] for i in rows]) / retain_norm
            term.backward()
            step_retain += float(term.detach())
            result.retain_used.update(rows)
    return step_forget, step_retain


def fit(model, params, forget: Sequence[Sequence[int]], retain: Sequence[Sequence[int]] | None, *, objective: Objective,
        config: LossMethodConfig, pad_id: int, device, reference=None, progress: bool = True, label: str = "unlearn",
        base_weights=None) -> Fit:
    """Minimise γ·forget term + α·retain term over the trainable `params`; one entry per optimizer step.

    Each micro-batch's forget and retain terms are back-propagated one after the other (one graph
    alive at a time), each divided by its unit count over the whole accumulation group. With
    `retain_loss: kl`, `base_weights()` is a context manager under which `model` computes the base
    model's logits (the adapter off, or the trained tensors' first values): one model, no copy.
    """
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = planned_steps(config, len(forget))
    warmup = int(config.warmup) if config.warmup >= 1 else math.ceil(config.warmup * total)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    stream = retain_stream(len(retain), config.seed) if retain else None
    result = Fit([], [], [], set(), set())

    kl_retain = getattr(config, "retain_loss", "nll") == "kl"
    if kl_retain and base_weights is None:
        raise ValueError("retain_loss kl needs base_weights")

    def forward(rows: Sequence[Sequence[int]]):
        batch = lm_data.collate(rows, pad_id).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return sequence_logprobs(logits, batch.labels)

    def retain_sum(rows: Sequence[Sequence[int]]):
        """Summed retain term of a micro-batch: NLL, or KL(π_base ‖ π_θ) per predicted position."""
        if not kl_retain:
            return nll_sum(forward(rows))
        batch = lm_data.collate(rows, pad_id).to(device)
        model.eval()
        with torch.no_grad(), base_weights():
            base_logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        model.train()
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return kl_to_base_sum(logits, base_logits, batch.labels)

    model.train()
    with _progress(progress) as bar:
        task = bar.add_task(label, total=total, loss="-")
        for epoch in range(config.epochs):
            for group in forget_groups(len(forget), config, epoch):
                if len(result.losses) >= total:
                    break
                retain_group = [[next(stream) for _ in micro] for micro in group] if stream else []
                step_forget, step_retain = _accumulate(group, retain_group, forget, retain, forward=forward, retain_sum=retain_sum,
                                                       objective=objective, config=config, reference=reference, result=result)
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss = step_forget + step_retain
                if not math.isfinite(loss):
                    raise SpungeError(f"training loss became {loss} at step {len(result.losses) + 1}; lower lr")
                result.losses.append(loss)
                result.forget_terms.append(step_forget)
                result.retain_terms.append(step_retain)
                bar.update(task, advance=1, loss=f"{loss:.4f}")
                report_step(label, len(result.losses), total)
    model.eval()
    return result
