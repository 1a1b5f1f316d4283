"""Negative preference optimization (NPO, Zhang et al. 2024).

DPO with only a losing answer: per forget sequence, −(2/β)·log σ(−β·(log π_θ(y|x) − log π_ref(y|x))),
log-probabilities summed over the sequence's tokens, averaged over sequences; plus α·retain NLL
(open-unlearning's NPO = GradDiff with this forget term; α = 0 gives plain NPO). The loss is
bounded where GA's is not, so the model collapses far more slowly.

π_ref is the base model: its log-probabilities are computed once per forget text before training,
with the LoRA adapter disabled (or before the chosen tensors move, with `full`). There is never a
second copy of the model.
"""

from __future__ import annotations

from pydantic import Field

from spunge_merge.unlearn.loss_training import Objective, RetainTermConfig, loss_method
from spunge_merge.unlearn.losses import SequenceLogProbs, npo_terms
from spunge_merge.unlearn.registry import register


class NPOConfig(RetainTermConfig):
    """NPO settings; open-unlearning's defaults β = 0.1, γ = α = 1."""

    beta: float = Field(0.1, gt=0.0, description="β: inverse temperature of the NPO loss (open-unlearning: 0.1).")


def forget_sum(lp: SequenceLogProbs, reference, config: NPOConfig):
    """The per-sequence NPO losses summed over the micro-batch (divided by the group's sequence count)."""
    return npo_terms(lp, reference, config.beta).sum()


OBJECTIVE = Objective(forget_sum=forget_sum, per="sequence", reference=True)
METHOD = register(loss_method(
    name="npo",
    summary="Negative preference optimization against the base model, plus an optional retain NLL.",
    description="Minimises γ·−(2/β)·log σ(−β·(log π_θ(y|x) − log π_ref(y|x))) + α·NLL_retain (Zhang et al. 2024; "
                "open-unlearning's NPO). π_ref is the base model, scored once per forget text with the adapter off.",
    config_class=NPOConfig,
    retain="optional",
    objective=OBJECTIVE,
))
