"""Forget texts as causal-LM batches: tokenize once, then shuffle and pad per epoch.

Each epoch's order is a permutation drawn from its own seed, `epoch_seed(run seed, epoch)`: a hash,
not `seed + epoch`, so that two runs whose seeds differ by one do not share an epoch's order.
Retain data (methods with a retain loss) is not paired with the forget data by index: `RowCycle`
draws its batches from a seeded permutation of the whole retain set that continues across steps
and epochs, with a fresh permutation each time it runs out, so every retain row is used once as
many rows as the set holds have been drawn (docs/data-handling.md).

Unlearning methods that train on raw text (TVN's LoRA fine-tune, RMU's forget pass) share
this module so that they see the same tokens: each text is tokenized with the model's own
tokenizer (its special tokens included), truncated to `max_length`, and ended with EOS so
the model also learns where a statement stops. Padding is on the right and is masked out of
the labels by the attention mask, not by the pad id, because most chat models use EOS as
their pad token and masking by id would also drop the real EOS targets.

The question/answer form (TOFU's, `prompt_column`/`answer_column` of the loss methods): each row is
its prompt's tokens followed by its answer's (` answer`, tokenized apart and joined, as the
knowledge probe scores options) and EOS; the prompt tokens are context only, never a target, so a
loss sees the answer tokens alone (`AnswerIds`; `collate` masks the labels).
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

IGNORE_INDEX = -100  # label value that cross-entropy (and transformers) skip


def encode_texts(tokenizer, texts: Sequence[str], *, max_length: int, add_eos: bool = True) -> list[list[int]]:
    """Token ids of each text, truncated to `max_length` tokens (EOS kept as the last one when added)."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2 (one token to read, one to predict)")
    eos = tokenizer.eos_token_id
    budget = max_length - 1 if add_eos and eos is not None else max_length
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=budget)["input_ids"]
    if add_eos and eos is not None:
        encoded = [ids + [eos] for ids in encoded]
    return [list(ids) for ids in encoded]


class AnswerIds(list):
    """Token ids of a prompt followed by its answer; the first `prompt_tokens` are context, never a target."""

    def __init__(self, ids: Sequence[int], prompt_tokens: int):
        super().__init__(ids)
        self.prompt_tokens = prompt_tokens


def predicted_tokens(ids: Sequence[int]) -> int:
    """How many of a row's tokens are loss targets: all but the first, or (`AnswerIds`) the answer's."""
    return len(ids) - max(getattr(ids, "prompt_tokens", 0), 1)


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], *, max_length: int) -> list[AnswerIds]:
    """Prompt tokens (with the tokenizer's special tokens) + " answer" tokens + EOS, truncated to `max_length`
    from the end (EOS kept); the prompt keeps at most `max_length - 2` tokens so one answer token and EOS stay."""
    if max_length < 3:
        raise ValueError("max_length must be at least 3 with prompts (one prompt token, one answer token, EOS)")
    eos = tokenizer.eos_token_id
    rows = []
    for prompt, answer in pairs:
        context = tokenizer(prompt.rstrip(), add_special_tokens=True)["input_ids"][-(max_length - 2):]
        reply = tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        ids = (list(context) + list(reply))[: max_length - (1 if eos is not None else 0)]
        rows.append(AnswerIds(ids + ([eos] if eos is not None else []), len(context)))
    return rows


def read_pairs(source, prompt_column: str, answer_column: str) -> list[tuple[str, str]]:
    """(prompt, answer) of every row of a table whose both cells are non-empty text; errors name the file and column."""
    from pathlib import Path

    from spunge_merge.data.loading import load_table
    from spunge_merge.errors import SpungeError

    table = load_table(Path(source))
    for column in (prompt_column, answer_column):
        if column not in table.column_names:
            raise SpungeError(f"{source}: no column '{column}' (columns: {', '.join(table.column_names)})")
    pairs = [(p, a) for p, a in zip(table[prompt_column], table[answer_column], strict=True)
             if isinstance(p, str) and isinstance(a, str) and p.strip() and a.strip()]
    if not pairs:
        raise SpungeError(f"{source}: no row with both '{prompt_column}' and '{answer_column}' non-empty")
    return pairs


@dataclass(frozen=True)
class Batch:
    """One padded micro-batch; `tokens` is the number of predicted positions (for loss averaging)."""

    input_ids: object  # torch.LongTensor [batch, length]
    attention_mask: object
    labels: object  # input_ids with padding set to IGNORE_INDEX
    tokens: int
    rows: tuple[int, ...] = ()  # which encoded texts it holds (for the record of rows used)

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.tokens, self.rows)


def collate(sequences: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Right-pad token id lists into a `Batch`."""
    import torch

    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    for row, ids in enumerate(sequences):
        labels[row, : getattr(ids, "prompt_tokens", 0)] = IGNORE_INDEX  # a prompt's tokens are never targets
    tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return Batch(input_ids, attention_mask, labels, tokens)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's order: a hash of (run seed, epoch), independent across both."""
    digest = hashlib.sha256(f"spunge-epoch/{seed}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stream_seed(seed: int, role: str, index: int = 0) -> int:
    """An independent 63-bit seed per data stream of a run (e.g. "forget"/0, "retain"/1)."""
    digest = hashlib.sha256(f"spunge-data/{seed}/{role}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class RowCycle:
    """Row indices of a set of `size` rows, batch after batch, from seeded permutations of the whole set.

    A batch that straddles two permutations never holds a row twice (the repeat is deferred).
    """

    def __init__(self, size: int, seed: int):
        import torch

        if size < 1:
            raise ValueError("RowCycle needs at least one row")
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)
        self.queue: deque[int] = deque()

    def take(self, count: int) -> tuple[int, ...]:
        import torch

        rows: list[int] = []
        while len(rows) < min(count, self.size):
            if not self.queue:
                self.queue.extend(torch.randperm(self.size, generator=self.generator).tolist())
            row = self.queue.popleft()
            if row in rows:
                self.queue.append(row)
            else:
                rows.append(row)
        return tuple(rows)


def cycled_batches(encoded: Sequence[Sequence[int]], *, batch_size: int, pad_id: int, seed: int) -> Iterator[Batch]:
    """Endless micro-batches of retain texts drawn through a `RowCycle` (one per step, never paired by index)."""
    cycle = RowCycle(len(encoded), seed)
    while True:
        rows = cycle.take(batch_size)
        batch = collate([encoded[i] for i in rows], pad_id)
        yield Batch(batch.input_ids, batch.attention_mask, batch.labels, batch.tokens, rows)


def batches(encoded: Sequence[Sequence[int]], *, batch_size: int, pad_id: int, seed: int | None = None) -> list[Batch]:
    """All micro-batches of one epoch: shuffled by `seed` (a fresh permutation per seed), or in order when None."""
    import torch

    order = list(range(len(encoded)))
    if seed is not None:
        order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed)).tolist()
    out = []
    for start in range(0, len(order), batch_size):
        rows = tuple(order[start:start + batch_size])
        batch = collate([encoded[i] for i in rows], pad_id)
        out.append(Batch(batch.input_ids, batch.attention_mask, batch.labels, batch.tokens, rows))
    return out


def optimizer_steps(n_texts: int, *, batch_size: int, grad_accum: int, epochs: int, max_steps: int | None = None) -> int:
    """How many optimizer steps a run takes (the last accumulation group of an epoch may be short)."""
    per_epoch = math.ceil(math.ceil(n_texts / batch_size) / grad_accum)
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps else total


def accumulation_groups(micro_batches: Sequence[Batch], grad_accum: int) -> Iterator[list[Batch]]:
    """Consecutive groups of `grad_accum` micro-batches: one optimizer step each."""
    for start in range(0, len(micro_batches), grad_accum):
        yield list(micro_batches[start:start + grad_accum])


def sum_token_nll(model, batch: Batch):
    """Summed next-token negative log-likelihood over the batch's predicted positions (a 0-d tensor).

    Computed here from the logits rather than by the model's `labels=` path so the sum can be
    divided by the token count of a whole accumulation group (exact gradient accumulation).
    """
    import torch.nn.functional as F

    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    shifted = logits[:, :-1, :].float()
    targets = batch.labels[:, 1:]
    return F.cross_entropy(shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def mean_token_nll(model, micro_batches: Sequence[Batch], device=None) -> float:
    """Token-weighted mean NLL (nats) of `model` over the batches, without gradients (exp() is perplexity)."""
    import torch

    total, tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in micro_batches:
                if device is not None:
                    batch = batch.to(device)
                total += float(sum_token_nll(model, batch))
                tokens += batch.tokens
    finally:
        model.train(was_training)
    return total / max(tokens, 1)
