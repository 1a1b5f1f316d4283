"""`spunge eval`: toxicity per attribute, fluency, perplexity, harness utility, comparisons.

The functions below are the public API the pipeline calls; each writes its JSON into `out`
and returns the same dict.
"""

from spunge_merge.evaluate.compare import compare_results
from spunge_merge.evaluate.fluency import evaluate_fluency
from spunge_merge.evaluate.frontier import frontier_results
from spunge_merge.evaluate.harness import evaluate_harness
from spunge_merge.evaluate.perplexity import evaluate_perplexity
from spunge_merge.evaluate.toxicity import evaluate_toxicity

__all__ = ["compare_results", "evaluate_fluency", "evaluate_harness", "evaluate_perplexity", "evaluate_toxicity",
           "frontier_results"]
