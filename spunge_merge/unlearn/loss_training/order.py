"""The order in which a run sees forget and retain rows, and how many optimizer steps it takes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from spunge_merge.unlearn import lm_data
from spunge_merge.unlearn.loss_training.config import LossMethodConfig

_RETAIN_SEED_STRIDE = 1_000_003  # retain passes are shuffled with seeds far from the forget epochs' seed + epoch


def _permutation(n: int, seed: int) -> list[int]:
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def forget_groups(n: int, config: LossMethodConfig, epoch: int) -> list[list[list[int]]]:
    """One epoch's optimizer steps, each a list of micro-batches of forget row indices (shuffled by seed + epoch)."""
    order = _permutation(n, config.seed + epoch)
    micro = [order[i:i + config.batch_size] for i in range(0, n, config.batch_size)]
    return [micro[i:i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]


def retain_stream(n: int, seed: int) -> Iterator[int]:
    """Retain row indices forever: every row once per pass, a fresh shuffle each pass."""
    passes = 0
    while True:
        passes += 1
        yield from _permutation(n, seed + _RETAIN_SEED_STRIDE * passes)


def planned_steps(config: LossMethodConfig, forget: int | Sequence[str], retain: int | Sequence[str] | None = None) -> int:
    """Optimizer steps of a run: the forget batches set the pace; retain rows cycle beside them.
    `forget` is the forget texts (the registry's form) or their count."""
    forget_rows = forget if isinstance(forget, int) else len(forget)
    return lm_data.optimizer_steps(forget_rows, batch_size=config.batch_size, grad_accum=config.grad_accum,
                                   epochs=config.epochs, max_steps=config.max_steps)
