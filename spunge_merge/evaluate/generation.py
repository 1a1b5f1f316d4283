"""Batched greedy continuation of list prompts, cut at the end of the first new statement.

A ToxiGen prompt ends with an open list item `-`; the model's answer is what it writes up to
the next newline (the start of the following item). Generation stops for a sequence as soon as
it has produced a token holding a newline, so a batch costs the longest first statement, not
`max_new_tokens` every time. Prompts are sorted by length before batching (less padding) and
the results put back in the caller's order; decoding is greedy, hence deterministic.
"""

from __future__ import annotations

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


class _StopAtNewline:
    """Stopping criterion: a sequence is done once a newline token appears after the prompt."""

    def __init__(self, prompt_length: int, newline_ids):
        self.prompt_length = prompt_length
        self.newline_ids = newline_ids

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids[:, self.prompt_length:]
        return torch.isin(new, self.newline_ids).any(dim=1)


def generate_first_statements(lm, tokenizer, prompts: list[str], *, max_new_tokens: int = 30, batch_size: int = 16,
                              progress: bool = True, description: str = "generating") -> list[str]:
    """Greedy continuation of each prompt, cut at its first newline (see module docstring)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, StoppingCriteriaList

    if max_new_tokens < 1:
        raise SpungeError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    if batch_size < 1:
        raise SpungeError(f"--batch-size must be at least 1 (got {batch_size})")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    device = next(lm.parameters()).device
    newline_ids = torch.tensor(_newline_token_ids(tokenizer), dtype=torch.long, device=device)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    outputs: list[str | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=description, unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            indices = order[start:start + batch_size]
            encoded = tokenizer([prompts[i] for i in indices], return_tensors="pt", padding=True).to(device)
            prompt_length = encoded["input_ids"].shape[1]
            stop = StoppingCriteriaList([_StopAtNewline(prompt_length, newline_ids)])
            with torch.no_grad():
                generated = lm.generate(**encoded, generation_config=config, stopping_criteria=stop)
            texts = tokenizer.batch_decode(generated[:, prompt_length:], skip_special_tokens=True)
            for index, text in zip(indices, texts, strict=True):
                outputs[index] = first_statement(text)
            bar.update(len(indices))
    return [o if o is not None else "" for o in outputs]
