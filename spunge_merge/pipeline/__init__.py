"""`spunge run`: one YAML file for a whole Spunge experiment, with its un-split baseline.

- `schema`: the pipeline file (pydantic; errors name the offending key);
- `stages`: split → unlearn → baseline → merge → eval → push, each skipped when up to date;
- `jobs`, `executors`: the independent per-attribute jobs, run locally or on Ray;
- `progress`: the live view and the log file; `state`: what a run directory already holds;
- `runner`: `run_pipeline`, the public entry point, and the final report; `preflight`: what a run checks
  before it touches its run directory (a refused run writes nothing).
"""

from spunge_merge.pipeline.runner import RunSummary, run_pipeline
from spunge_merge.pipeline.schema import STAGES, Pipeline, load_pipeline

__all__ = ["STAGES", "Pipeline", "RunSummary", "load_pipeline", "run_pipeline"]
