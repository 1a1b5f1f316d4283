"""Per-token log-probabilities of texts under a causal LM, and what the membership and memorization
measurements read from them (`mia`, `privleak`, `extraction`, `truth_ratio`).

One forward pass per right-padded batch; each position's full next-token distribution is reduced at
once to the target's log-probability, the distribution's mean μ_t = Σ_v p_v·log p_v and standard
deviation σ_t of log p under p (Min-K %++'s normalisation), and its most likely token, so no
[tokens × vocabulary] tensor outlives its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenScores:
    """One text: its token ids and, for every token after the first, the statistics of the position predicting it."""

    ids: list[int]
    logprob: np.ndarray  # log p(x_t | x_<t), t = 1 .. n-1
    mean: np.ndarray  # μ_t = E_{z~p(·|x_<t)} log p(z | x_<t)
    std: np.ndarray  # σ_t = sqrt(E_z (log p(z | x_<t) − μ_t)²)
    greedy: np.ndarray  # argmax_z p(z | x_<t)


def padded_batch(sequences: Sequence[Sequence[int]], pad_id: int, *, left: bool = False):
    """(input ids, attention mask) of token sequences padded with `pad_id` to the longest, on the right (scoring,
    training) or on the left (`left=True`, generation): the one padding the evaluations' batches share."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, span] = 1
    return input_ids, mask


def score_ids(lm, sequences: Sequence[Sequence[int]], *, pad_id: int, batch_size: int) -> list[TokenScores]:
    """`TokenScores` of each token-id sequence (at least 2 ids each), in order, without gradients."""
    import torch

    device = next(lm.parameters()).device
    out: list[TokenScores] = []
    for start in range(0, len(sequences), batch_size):
        chunk = [list(ids) for ids in sequences[start:start + batch_size]]
        input_ids, mask = padded_batch(chunk, pad_id)
        with torch.no_grad():
            logits = lm(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
            logp = torch.log_softmax(logits, dim=-1)
            probs = logp.exp()
            mean = (probs * logp).sum(-1)
            var = (probs * (logp - mean.unsqueeze(-1)).square()).sum(-1)  # centred: no cancellation in float32
            target = logp.gather(-1, input_ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            greedy = logits.argmax(-1)
        for row, ids in enumerate(chunk):
            n = len(ids) - 1
            out.append(TokenScores(ids, target[row, :n].double().cpu().numpy(), mean[row, :n].double().cpu().numpy(),
                                   var[row, :n].double().sqrt().cpu().numpy(), greedy[row, :n].cpu().numpy()))
    return out


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text (the tokenizer's special tokens included), cut to `max_length`."""
    return [list(ids)[:max_length] for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


def continuation_logprobs(lm, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int) -> list[tuple[float, int]]:
    """(Σ log p, token count) of " answer" after each prompt (tokenized apart and joined, as the knowledge probe does)."""
    sequences, starts = [], []
    for prompt, answer in pairs:
        context = tokenizer(prompt.rstrip(), add_special_tokens=True)["input_ids"]
        reply = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        sequences.append(list(context) + list(reply))
        starts.append(len(context))
    scored = score_ids(lm, sequences, pad_id=pad_id(tokenizer), batch_size=batch_size)
    # position t-1 of `logprob` predicts token t: the reply's tokens are logprob[start-1:]
    return [(float(s.logprob[start - 1:].sum()), len(s.ids) - start) for s, start in zip(scored, starts, strict=True)]


def load_scorer(resolved, device: str, dtype: str):
    """(model in eval mode, tokenizer) on the chosen device and dtype."""
    from spunge_merge.models import load_causal_lm, load_tokenizer
    from spunge_merge.runtime import pick_device, pick_dtype

    torch_device = pick_device(device)
    lm = load_causal_lm(resolved, dtype=pick_dtype(dtype, torch_device), device=torch_device)
    lm.eval()
    return lm, load_tokenizer(resolved)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
