"""TVN, task vector negation (Ilharco et al. 2023) with LoRA (Zhang et al. 2023).

Fine-tune a LoRA adapter on the forget texts, then subtract it from the base model:
θ_u = θ_init − λ·ΔW with ΔW = (lora_alpha / r)·B·A. The subtraction is stored *in the
adapter*: lora_B is scaled by −λ, so the result is an ordinary peft adapter that
`PeftModel.from_pretrained(base, DIR)`, `merge_and_unload()` and mergekit's `base+adapter`
syntax all apply unchanged, and no full model copy is written per subset. The trained
(un-negated) adapter is kept in `unnegated/` so `negate_run` can pick another λ without
retraining.

The package: `settings` (TVNConfig, the run directory's names), `negation` (negate_run,
negate_output), `training` (fit_lora, train_tvn); the LoRA fields and checks shared with the
loss-based methods are in `unlearn.lora`. Importing it registers the method; every public name
stays importable from `spunge_merge.unlearn.tvn`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from spunge_merge.errors import SpungeError
from spunge_merge.models import ResolvedModel
from spunge_merge.runs import RunOutcome
from spunge_merge.unlearn import budget, registry
from spunge_merge.unlearn.lora import check_target_modules, target_module_names
from spunge_merge.unlearn.outputs import apply_adapter
from spunge_merge.unlearn.registry import TrainRequest, UnlearningMethod
from spunge_merge.unlearn.tvn.negation import negate_output, negate_run, negated_tensors
from spunge_merge.unlearn.tvn.settings import ADAPTER_CONFIG, ADAPTER_WEIGHTS, KIND, METHOD, UNNEGATED, TVNConfig
from spunge_merge.unlearn.tvn.training import fit_lora, log, train_tvn

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "KIND", "METHOD", "UNNEGATED", "TVNConfig", "check_target_modules", "fit_lora", "log",
    "negate_output", "negate_run", "negated_tensors", "run_to_model", "target_module_names", "train_tvn",
]


# --------------------------------------------------------------------------------------------
# The method's record: what the CLI, the pipeline, the baseline and the model card know of TVN.


def _train_request(request: TrainRequest) -> list[RunOutcome]:
    if len(request.forget) != 1:
        raise SpungeError(f"TVN takes one forget data file or split directory, got {len(request.forget)}")
    return train_tvn(request.model, request.forget[0], request.out, request.config, text_column=request.text_column,
                     force=request.force, progress=request.progress)


def run_to_model(base: ResolvedModel, run: Path, lam: float | None, out: Path, scratch: Path) -> Path:
    """The trained adapter negated at λ (a copy in `scratch`; None: as the run holds it), merged into the base."""
    adapter = Path(run) if lam is None else negate_run(run, lam, out=scratch, force=True)
    return apply_adapter(base, adapter, Path(out))


registry.register(UnlearningMethod(
    name=METHOD,
    summary="Task vector negation: fine-tune a LoRA adapter on the forget text, then subtract it (× λ).",
    description=(
        "**Task vector negation (TVN)**: a LoRA adapter is fine-tuned on the subset's text (learning to produce it), "
        "then the adapter is negated (its update scaled by −λ) and added to the base model, which moves the model "
        "away from that behaviour (Ilharco et al., 2023)."
    ),
    config_class=TVNConfig,
    retain="none",
    output_kind=lambda config: "peft-adapter",
    train=_train_request,
    planned_steps=budget.planned_steps,
    match_baseline=functools.partial(budget.match_steps, TVNConfig),
    to_model=run_to_model,
    default_lambda=lambda config: config.lam,
    baseline_corpora=("union",),
))
