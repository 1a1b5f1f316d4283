"""Gradient ascent (GA): raise the forget texts' NLL, nothing else.

The simplest unlearning baseline (open-unlearning's `GradAscent`): the loss is minus the
token-mean NLL of the forget batch. Without a retain term it degrades the model quickly, which
is why it is the floor every other method is compared against.
"""

from __future__ import annotations

from spunge_merge.unlearn.loss_training import LossMethodConfig, Objective, loss_method
from spunge_merge.unlearn.losses import SequenceLogProbs, nll_sum
from spunge_merge.unlearn.registry import register


class GAConfig(LossMethodConfig):
    """Gradient ascent settings: only the shared ones (LoRA or full, optimisation, data)."""


def forget_sum(lp: SequenceLogProbs, reference, config: GAConfig):
    """−NLL summed over the micro-batch's tokens (divided by the group's token count by the loop)."""
    return -nll_sum(lp)


OBJECTIVE = Objective(forget_sum=forget_sum, per="token")
METHOD = register(loss_method(
    name="ga",
    summary="Gradient ascent on the forget NLL.",
    description="Minimises −NLL of the forget texts (open-unlearning's GradAscent), as a LoRA adapter or, with "
                "--full, a delta of the chosen tensors.",
    config_class=GAConfig,
    retain="none",
    objective=OBJECTIVE,
))
