"""Batched greedy continuation of list prompts, cut at the end of the first new statement.

A ToxiGen prompt ends with an open list item `-`; the model's answer is what it writes up to
the next newline (the start of the following item). Profiling one model's ToxiGen evaluation
(BENCHMARKS.md, bench/toxigen_eval_speed.py) showed the token-by-token decode taking more than half
of a batch's time with `generate` (12 of 20 s for 16 prompts): a batch ran until its longest answer
ended (often all `max_new_tokens` steps) and every step re-read the weights for a handful of rows.
So the loop here is its own (the prompt pass, fp32 arithmetic, is what remains; one model: 1.1x):
- a row leaves the batch (and the KV cache) as soon as it has produced a token holding a
  newline or EOS, so a batch costs the sum of its answers' lengths, not its longest one times its size;
- batches are larger (`batch_size` 64 by default): a decode step's cost is mostly reading the
  weights, shared by every row in the batch;
- prompts are sorted by length and a batch holds only prompts within 30 % of its longest (the
  prompt pass is most of what is left, and padding would be paid in it; 30 % measured a little faster
  than 10 % on 100 prompts, larger batches decoding cheaper per row); results are put back in
  the caller's order.
Decoding is greedy with the positions `generate` gives left-padded rows (the attention mask's
running count), so each answer is the one the prompt gets alone, token for token
(tests/test_eval_toxicity.py checks it against a per-prompt loop).
"""

from __future__ import annotations

import inspect
from functools import lru_cache

from spunge_merge.errors import SpungeError


def first_statement(text: str) -> str:
    """The text up to the first newline, without surrounding spaces."""
    return text.split("\n", 1)[0].strip()


@lru_cache(maxsize=4)
def _newline_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids of every vocabulary entry whose text holds a newline (byte-level and sentencepiece alike)."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return tuple(i for i, piece in enumerate(pieces) if "\n" in piece)


def greedy_until_stop(lm, input_ids, attention_mask, stop_ids, *, max_new_tokens: int) -> list[list[int]]:
    """New token ids of each left-padded row, greedy, each ending with its first token in `stop_ids` (or at the limit)."""
    import torch

    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # original row of each row still in the batch
    new: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    cache_argument = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"  # renamed in transformers 5
    with torch.no_grad():
        out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        cache = getattr(out, "cache", None) or out.past_key_values
        for step in range(max_new_tokens):
            tokens = out.logits[:, -1].argmax(dim=-1)
            for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
                new[row].append(token)
            going = ~torch.isin(tokens, stop_ids)
            if step == max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):  # finished rows leave the batch and the cache
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, tokens, attention_mask = rows[keep], tokens[keep], attention_mask[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
            positions = attention_mask.long().sum(dim=1, keepdim=True) - 1
            out = lm(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=positions, use_cache=True,
                     **{cache_argument: cache})
    return new


def length_batches(lengths: list[int], batch_size: int, *, max_padding: float = 0.3) -> list[list[int]]:
    """Indices sorted longest first, cut into batches of at most `batch_size` whose prompts are all within `max_padding` of the
    batch's longest: the prompt pass is most of the cost, so a wide batch would pay for its padding."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if batches and len(batches[-1]) < batch_size and lengths[index] >= (1 - max_padding) * lengths[batches[-1][0]]:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def generate_first_statements(lm, tokenizer, prompts: list[str], *, max_new_tokens: int = 30, batch_size: int = 64,
                              progress: bool = True, description: str = "generating") -> list[str]:
    """Greedy continuation of each prompt, cut at its first newline (see module docstring)."""
    import torch
    from tqdm.auto import tqdm

    if max_new_tokens < 1:
        raise SpungeError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    if batch_size < 1:
        raise SpungeError(f"--batch-size must be at least 1 (got {batch_size})")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    device = next(lm.parameters()).device
    stops = _newline_token_ids(tokenizer) + ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    outputs: list[str | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=description, unit="prompt", disable=not progress) as bar:
        for indices in length_batches(lengths, batch_size):
            encoded = tokenizer([prompts[i] for i in indices], return_tensors="pt", padding=True).to(device)
            new = greedy_until_stop(lm, encoded["input_ids"], encoded["attention_mask"], stop_ids, max_new_tokens=max_new_tokens)
            for index, ids in zip(indices, new, strict=True):
                outputs[index] = first_statement(tokenizer.decode(ids, skip_special_tokens=True))
            bar.update(len(indices))
    return [o if o is not None else "" for o in outputs]
