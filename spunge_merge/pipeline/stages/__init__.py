"""The stages of a pipeline: split → unlearn → baseline → merge → eval → push, one module each.

`spunge run --only NAME` runs `stages/NAME.py`; what every stage shares (the `Context`, the tracking
of stages and of the pieces of work inside them) is in `stages/common.py`, and the jobs that train
a method (the split runs and the un-split baseline run) are built in `stages/training.py`.

Each stage computes a fingerprint from its settings and the fingerprints of what it reads (data
sha256, the base model, the stages before it), and is skipped when its record in the run
directory carries the same one. Inside a stage, every independent piece of work (one subset's
unlearning run, one merged model per λ, one model's evaluations) is tracked the same way, so an
interrupted stage redoes only what had not finished, and redoes it from scratch: every output is
written to a temporary sibling and renamed at the end, and every run is seeded, so the rerun's
files are the ones an uninterrupted run writes.

Layout of a run directory:

    inputs/               filtered or Hub data written once (retain.jsonl, eval-perplexity.jsonl, ...)
    split/                one file per attribute value + manifest.json (spunge split's layout)
    unlearn/<name>/       one run per subset + manifest.json (kind unlearn-runs)
    baseline/run/         the same method on the un-split union (same budget)
    baseline/models/<l>/  full models of the baseline, one per λ (the method's `to_model`)
    merge/<label>/        merged model per merge λ (spunge, or spunge-lam<λ>)
    eval/<label>/         every evaluation of one model; eval/compare/ the comparison
    report.md             the final tables; pipeline.log the log; .spunge-state/ the records
"""

from __future__ import annotations

from spunge_merge.pipeline.stages.baseline import baseline_lambdas, baseline_train_work, build_baseline_model, stage_baseline
from spunge_merge.pipeline.stages.common import FORMAT, Context, Work, run_stage, run_works
from spunge_merge.pipeline.stages.eval import compare_task, model_labels, stage_eval
from spunge_merge.pipeline.stages.merge import merge_task, stage_merge
from spunge_merge.pipeline.stages.push import push_task, stage_push
from spunge_merge.pipeline.stages.split import stage_split
from spunge_merge.pipeline.stages.training import subset_configs
from spunge_merge.pipeline.stages.unlearn import stage_unlearn, unlearn_works

STAGE_FUNCTIONS = {"split": stage_split, "unlearn": stage_unlearn, "baseline": stage_baseline, "merge": stage_merge,
                   "eval": stage_eval, "push": stage_push}

__all__ = ["FORMAT", "STAGE_FUNCTIONS", "Context", "Work", "baseline_lambdas", "baseline_train_work", "build_baseline_model",
           "compare_task", "merge_task", "model_labels", "push_task", "run_stage", "run_works", "stage_baseline", "stage_eval",
           "stage_merge", "stage_push", "stage_split", "stage_unlearn", "subset_configs", "unlearn_works"]
