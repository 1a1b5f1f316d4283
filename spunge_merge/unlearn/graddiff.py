"""Gradient difference (GradDiff): ascent on the forget NLL, descent on the retain NLL.

open-unlearning's `GradDiff` with its retain NLL: loss = γ·(−NLL_forget) + α·NLL_retain, both
token means (γ = α = 1 by default). The retain term holds the model's general ability while the
forget term pushes the forget texts' likelihood down (Liu et al. 2022; Maini et al. 2024, TOFU).
"""

from __future__ import annotations

from pydantic import Field

from spunge_merge.unlearn.loss_training import Objective, RetainTermConfig, loss_method
from spunge_merge.unlearn.losses import SequenceLogProbs, nll_sum
from spunge_merge.unlearn.registry import register


class GradDiffConfig(RetainTermConfig):
    """GradDiff settings; open-unlearning's defaults γ = α = 1."""

    alpha: float = Field(1.0, gt=0.0, description="α: weight of the retain NLL term (needs retain data).")


def forget_sum(lp: SequenceLogProbs, reference, config: GradDiffConfig):
    """−NLL summed over the micro-batch's tokens; the loop adds α·retain NLL."""
    return -nll_sum(lp)


OBJECTIVE = Objective(forget_sum=forget_sum, per="token")
METHOD = register(loss_method(
    name="graddiff",
    summary="Gradient ascent on the forget NLL plus descent on the retain NLL.",
    description="Minimises γ·(−NLL_forget) + α·NLL_retain (open-unlearning's GradDiff); retain rows cycle through "
                "the whole retain set beside the forget batches.",
    config_class=GradDiffConfig,
    retain="required",
    objective=OBJECTIVE,
))
