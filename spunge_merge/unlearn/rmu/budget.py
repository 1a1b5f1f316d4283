"""RMU's step budget: the reference's schedule, and the un-split baseline matched to the split runs' total."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from spunge_merge.unlearn.registry import BaselineBudget
from spunge_merge.unlearn.rmu.settings import RMUConfig


def _batches(texts: Sequence[str], config: RMUConfig) -> int:
    return math.ceil(sum(1 for t in texts if len(t) > config.min_chars) / config.batch_size)


def planned_steps(config: RMUConfig, forget_texts: Sequence[str], retain_texts: Sequence[str] | None) -> int:
    """The reference's schedule: min(max_num_batches, forget batches, retain batches) per epoch."""
    return min(config.max_num_batches, _batches(forget_texts, config), _batches(retain_texts or [], config)) * config.epochs


def match_baseline(split_configs: Mapping[str, Mapping[str, Any]], split_texts: Mapping[str, Sequence[str]],
                   baseline: Mapping[str, Any], retain_texts: Sequence[str] | None, corpora: str) -> BaselineBudget:
    """The baseline gets `max_num_batches` (and, when that is not enough, more epochs) to reach the split runs'
    total, within epochs − 1 steps. The alternating multi-corpus run counts the batches of its smallest corpus.
    Early stopping can still end either arm sooner."""
    per_run = {name: planned_steps(RMUConfig.model_validate(split_configs[name]), texts, retain_texts)
               for name, texts in split_texts.items()}
    total = sum(per_run.values())
    cfg = RMUConfig.model_validate(baseline)
    if corpora == "alternating":
        forget_batches = min(_batches(texts, cfg) for texts in split_texts.values())
    else:
        forget_batches = _batches([t for texts in split_texts.values() for t in texts], cfg)
    capacity = min(forget_batches, _batches(retain_texts or [], cfg))
    epochs = max(cfg.epochs, math.ceil(total / capacity))
    adjusted = {**baseline, "max_num_batches": math.ceil(total / epochs), "epochs": epochs}
    planned = min(adjusted["max_num_batches"], capacity) * epochs
    changes = {k: v for k, v in adjusted.items() if baseline.get(k) != v}
    return BaselineBudget(config=adjusted, record={"split_runs": per_run, "split_total": total, "baseline_planned": planned,
                                                   "changed": changes})
