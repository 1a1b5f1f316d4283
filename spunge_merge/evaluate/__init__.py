"""`spunge eval`: knowledge, toxicity per attribute, fluency, perplexity, harness utility, comparisons.

Every evaluation is declared once in `evaluate.registry` (its record: settings class, run function,
result file, headline, comparison columns); `registry.run_evaluation` runs any of them. Each
evaluation's module also has a function `evaluate_<name>` (the Python API: it writes its JSON into
`out` and returns the same dict), reachable here as `spunge_merge.evaluate.evaluate_<name>`, beside
`compare_results` and `frontier_results`. They are imported on first use, so that importing
`spunge_merge.evaluate.registry` does not load the evaluations (nor torch).
"""

from __future__ import annotations

import importlib
from typing import Any

from spunge_merge.evaluate.registry import BUILTIN_EVALUATIONS

_TABLES = {"compare_results": "spunge_merge.evaluate.compare", "frontier_results": "spunge_merge.evaluate.frontier"}

__all__ = sorted([*_TABLES, *(f"evaluate_{name}" for name in BUILTIN_EVALUATIONS)])


def __getattr__(name: str) -> Any:
    from spunge_merge.evaluate import registry

    if name in _TABLES:
        return getattr(importlib.import_module(_TABLES[name]), name)
    evaluation = name.removeprefix("evaluate_")
    if name.startswith("evaluate_") and evaluation in registry.names():
        module = importlib.import_module(registry.get(evaluation).plan.__module__)
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'spunge_merge.evaluate' has no attribute '{name}'")
