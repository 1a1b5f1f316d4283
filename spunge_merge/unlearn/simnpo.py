"""SimNPO (Fan et al. 2024, "Simplicity Prevails"): NPO without a reference model.

Per forget sequence: −(2/β)·log σ(β·(NLL(y|x)/|y| − δ)), the NLL summed over the sequence's
predicted tokens and divided by their number |y| (length normalisation), δ a margin; averaged
over sequences, plus α·retain NLL. The margin sits inside the β product as in open-unlearning's
SimNPO (the paper writes −(β/|y|)·log π − γ); defaults are open-unlearning's TOFU settings
(β = 4.5, δ = 0, γ = 0.125, α = 1).
"""

from __future__ import annotations

from pydantic import Field

from spunge_merge.unlearn.loss_training import Objective, RetainTermConfig, loss_method
from spunge_merge.unlearn.losses import SequenceLogProbs, simnpo_terms
from spunge_merge.unlearn.registry import register


class SimNPOConfig(RetainTermConfig):
    """SimNPO settings; open-unlearning's defaults β = 4.5, δ = 0, γ = 0.125, α = 1."""

    beta: float = Field(4.5, gt=0.0, description="β: inverse temperature of the SimNPO loss (open-unlearning: 4.5).")
    delta: float = Field(0.0, description="δ: margin subtracted from the length-normalised NLL (open-unlearning: 0).")
    gamma: float = Field(0.125, gt=0.0, description="γ: weight of the forget term (open-unlearning: 0.125).")


def forget_sum(lp: SequenceLogProbs, reference, config: SimNPOConfig):
    """The per-sequence SimNPO losses summed over the micro-batch (divided by the group's sequence count)."""
    return simnpo_terms(lp, config.beta, config.delta).sum()


OBJECTIVE = Objective(forget_sum=forget_sum, per="sequence")
METHOD = register(loss_method(
    name="simnpo",
    summary="SimNPO: length-normalised NPO with a margin and no reference model, plus an optional retain NLL.",
    description="Minimises γ·−(2/β)·log σ(β·(NLL(y|x)/|y| − δ)) + α·NLL_retain (Fan et al. 2024; open-unlearning's "
                "SimNPO). Needs no reference model.",
    config_class=SimNPOConfig,
    retain="optional",
    objective=OBJECTIVE,
))
