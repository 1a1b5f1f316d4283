"""The losses of the likelihood-based unlearning methods, as pure functions of logits and labels.

Definitions follow open-unlearning (`trainer/utils.py`, `trainer/unlearn/*.py`) so that numbers
are comparable with the field's reference implementation:

- GA:       −NLL of the forget tokens (token mean over the batch).
- GradDiff: γ·(−NLL_forget) + α·NLL_retain.
- NPO:      −(2/β)·mean_i log σ(−β·(log π_θ(y_i|x_i) − log π_ref(y_i|x_i))), log π summed over the
            sequence's tokens (Zhang et al. 2024, "Negative Preference Optimization").
- SimNPO:   −(2/β)·mean_i log σ(β·(−log π_θ(y_i|x_i)/|y_i| − δ)), no reference model
            (Fan et al. 2024, "Simplicity Prevails"; δ inside the β product as open-unlearning has it).
- KL retain (`retain_loss: kl` of GradDiff/NPO/SimNPO): KL(π_base ‖ π_θ) of the next-token distributions,
            summed over the retain tokens' predicted positions, a token mean like the NLL retain term
            (open-unlearning's `compute_kl_divergence` divides by every position, padding included).

Every function here is written on *sums* (per sequence, or over a batch) so the training loop can
divide by the token or sequence count of a whole accumulation group: `grad_accum=k` on batches of
`b` then equals one batch of `k·b`. The batch-mean forms (`*_loss`) are what the tests check.
Padding is excluded by `labels == IGNORE_INDEX` (right padding, masked from the attention mask).
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SequenceLogProbs:
    """Per sequence: the summed log-probability of its predicted tokens, and how many there are."""

    total: object  # torch.Tensor [batch], differentiable
    tokens: object  # torch.Tensor [batch], float

    def detach(self) -> SequenceLogProbs:
        return SequenceLogProbs(self.total.detach(), self.tokens)


def sequence_logprobs(logits, labels) -> SequenceLogProbs:
    """log π(y|x) summed per sequence over the next-token predictions whose label is not IGNORE_INDEX.

    Through `cross_entropy(reduction="none")`, the kernel transformers' own loss uses, rather than a
    log_softmax tensor gathered by hand.
    """
    import torch.nn.functional as F

    shifted = logits[:, :-1, :]
    if shifted.element_size() < 4:  # bf16/fp16 logits: the softmax in fp32
        shifted = shifted.float()
    targets = labels[:, 1:]
    # Rows of a 2-D [tokens, vocab] view: cross_entropy on the [batch, vocab, length] transpose is ~3× slower on CPU.
    nll = F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                          reduction="none").view(targets.shape)
    mask = targets != IGNORE_INDEX
    return SequenceLogProbs(total=-(nll * mask).sum(dim=-1), tokens=mask.sum(dim=-1).float())


def nll_sum(lp: SequenceLogProbs):
    """Summed NLL over all tokens of the batch (divide by the token count for the mean)."""
    return -lp.total.sum()


def npo_terms(lp: SequenceLogProbs, reference, beta: float):
    """Per-sequence NPO loss −(2/β)·log σ(−β·(log π_θ − log π_ref)); `reference` holds log π_ref sums."""
    import torch.nn.functional as F

    return -(2.0 / beta) * F.logsigmoid(-beta * (lp.total - reference))


def simnpo_terms(lp: SequenceLogProbs, beta: float, delta: float):
    """Per-sequence SimNPO loss −(2/β)·log σ(β·(NLL/|y| − δ)), |y| the predicted tokens."""
    import torch.nn.functional as F

    mean_nll = -lp.total / lp.tokens.clamp(min=1.0)
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta))


def kl_to_base_sum(logits, base_logits, labels):
    """Σ over predicted positions (label not IGNORE_INDEX) of KL(π_base ‖ π_θ) = Σ_v p_base(v)·(log p_base(v) − log p_θ(v))."""
    import torch.nn.functional as F

    current, base = logits[:, :-1, :], base_logits[:, :-1, :]
    if current.element_size() < 4:  # bf16/fp16 logits: the softmax in fp32
        current, base = current.float(), base.float()
    current, base = F.log_softmax(current, dim=-1), F.log_softmax(base, dim=-1)
    per_position = (base.exp() * (base - current)).sum(dim=-1)
    return (per_position * (labels[:, 1:] != IGNORE_INDEX)).sum()


# Batch-mean forms (one micro-batch, no accumulation): the definitions as papers and open-unlearning state them.


def ga_loss(logits, labels):
    """Gradient ascent: minus the token-mean NLL of the forget batch."""
    lp = sequence_logprobs(logits, labels)
    return -nll_sum(lp) / lp.tokens.sum()


def nll_loss(logits, labels):
    """Token-mean NLL (the retain term)."""
    lp = sequence_logprobs(logits, labels)
    return nll_sum(lp) / lp.tokens.sum()


def graddiff_loss(forget_logits, forget_labels, retain_logits, retain_labels, *, gamma: float = 1.0, alpha: float = 1.0):
    """γ·(−NLL_forget) + α·NLL_retain."""
    return gamma * ga_loss(forget_logits, forget_labels) + alpha * nll_loss(retain_logits, retain_labels)


def npo_loss(logits, labels, reference, *, beta: float):
    """Mean over sequences of the NPO loss; `reference` is log π_ref(y|x) summed per sequence."""
    return npo_terms(sequence_logprobs(logits, labels), reference, beta).mean()


def simnpo_loss(logits, labels, *, beta: float, delta: float = 0.0):
    """Mean over sequences of the SimNPO loss."""
    return simnpo_terms(sequence_logprobs(logits, labels), beta, delta).mean()


def kl_retain_loss(logits, base_logits, labels):
    """Token-mean KL(π_base ‖ π_θ) over the retain batch's predicted positions."""
    return kl_to_base_sum(logits, base_logits, labels) / (labels[:, 1:] != IGNORE_INDEX).sum()
