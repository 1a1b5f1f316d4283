"""`spunge eval`: knowledge, toxicity per attribute, fluency, perplexity, harness utility, comparisons.

Every evaluation is declared once in `evaluate.registry` (its record: settings class, run function,
result file, headline, comparison columns); `registry.run_evaluation` runs any of them. The
functions below are the public API (each writes its JSON into `out` and returns the same dict);
they are imported on first use, so that `import spunge_merge.evaluate.registry` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "compare_results": "compare",
    "evaluate_fluency": "fluency",
    "evaluate_harness": "harness",
    "evaluate_knowledge": "knowledge",
    "evaluate_perplexity": "perplexity",
    "evaluate_toxicity": "toxicity",
    "frontier_results": "frontier",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"spunge_merge.evaluate.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'spunge_merge.evaluate' has no attribute '{name}'")
