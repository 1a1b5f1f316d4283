"""Budget matching for methods that step an optimizer over batches of forget texts.

The baseline (the method on the un-split union of the subsets) is compared at the same number of
optimizer steps as all split runs together, so that a difference comes from splitting and merging,
not from more training. A method whose settings have `batch_size`, `grad_accum`, `epochs` and
`max_steps` (TVN, and gradient-based methods written like it) can point its record's
`planned_steps` and `match_baseline` at these two functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from spunge_merge.unlearn.lm_data import optimizer_steps
from spunge_merge.unlearn.registry import BaselineBudget


def planned_steps(config: Any, forget_texts: Sequence[str], retain_texts: Sequence[str] | None = None) -> int:
    """epochs × ⌈⌈rows / batch_size⌉ / grad_accum⌉, capped by max_steps."""
    return optimizer_steps(len(forget_texts), batch_size=config.batch_size, grad_accum=config.grad_accum,
                           epochs=config.epochs, max_steps=config.max_steps)


def match_steps(config_class: type, split_configs: Mapping[str, Mapping[str, Any]], split_texts: Mapping[str, Sequence[str]],
                baseline: Mapping[str, Any], retain_texts: Sequence[str] | None = None, corpora: str = "union") -> BaselineBudget:
    """The baseline gets `max_steps` = the split runs' total and enough epochs to reach it."""
    per_run = {name: planned_steps(config_class.model_validate(split_configs[name]), texts)
               for name, texts in split_texts.items()}
    total = sum(per_run.values())
    cfg = config_class.model_validate(baseline)
    rows = sum(len(texts) for texts in split_texts.values())
    adjusted = dict(baseline)
    if optimizer_steps(rows, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, epochs=cfg.epochs, max_steps=cfg.max_steps) != total:
        per_epoch = optimizer_steps(rows, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, epochs=1)
        adjusted["epochs"] = max(cfg.epochs, math.ceil(total / per_epoch))
        adjusted["max_steps"] = total
    planned = planned_steps(config_class.model_validate(adjusted), [""] * rows)
    changes = {k: v for k, v in adjusted.items() if baseline.get(k) != v}
    return BaselineBudget(config=adjusted, record={"split_runs": per_run, "split_total": total, "baseline_planned": planned,
                                                   "changed": changes})
