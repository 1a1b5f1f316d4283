"""RMU's data: forget and retain corpora, tokenized batches, and the plan of which rows feed each step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spunge_merge.data.loading import Subset, is_split_dir, load_retain, load_subsets
from spunge_merge.errors import SpungeError
from spunge_merge.models import ResolvedModel, load_tokenizer
from spunge_merge.unlearn.rmu.settings import RMUConfig
from spunge_merge.unlearn.rmu.trainer import Batch


@dataclass
class Corpus:
    subset: Subset
    texts: list[str]


def _corpus(subset: Subset, min_chars: int, role: str) -> Corpus:
    texts = [t for t in subset.texts if len(t) > min_chars]
    if not texts:
        raise SpungeError(f"{subset.source}: no {role} text longer than {min_chars} characters (--min-chars)")
    return Corpus(subset=subset, texts=texts)


def _load_files(sources: Sequence[str | Path], text_column: str | None, role: str, *, where: tuple[str, ...] = ()) -> list[Subset]:
    subsets = []
    for source in sources:
        if is_split_dir(source):
            raise SpungeError(f"{source} is a split directory: as --{role} give data files (a split directory "
                              "as the only --forget runs one RMU per subset)")
        subsets.extend(load_retain(source, text_column, where) if where else load_subsets(source, text_column))
    return subsets


def _tokenize(tokenizer, texts: list[str], max_length: int, device, key: tuple) -> Batch:
    encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    return Batch(key=key, input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device))


def prepare_tokenizer(resolved: ResolvedModel):
    """The reference's tokenizer settings: pad = eos, pad on the left, truncate on the right."""
    tokenizer = load_tokenizer(resolved)
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "right"
    return tokenizer


@dataclass(frozen=True)
class PlannedStep:
    """One RMU step: which forget rows (of forget corpus `corpus`) and which retain rows (of retain set
    `retain_set`) it feeds. `batch` is the forget batch's position within its epoch."""

    corpus: int
    batch: int
    forget_rows: tuple[int, ...]
    retain_set: int
    retain_rows: tuple[int, ...]


@dataclass
class Plan:
    """The data of one run: forget texts per corpus, retain texts per retain set, and the step budget.

    `steps_per_epoch` is the reference's arithmetic in either order, so that step budgets (the
    baseline's matching) do not depend on it: min(max_num_batches, ⌈rows/batch_size⌉ of the
    smallest forget corpus, ⌈rows/batch_size⌉ of the smallest retain set), rows counted after
    min_chars. Step i of an epoch uses forget corpus i % k and that corpus's forget batch i // k
    (k forget corpora), as the reference. Only which rows fill the batches depends on the order.
    """

    forget: list[list[str]]  # per forget corpus: its texts
    retain: list[list[str]]  # per retain set: its texts (forget corpora may share one retain set)
    retain_ids: list[int]  # which retain set each forget corpus uses
    steps_per_epoch: int
    batch_size: int
    order: str = "shuffled"
    seed: int = 42

    def forget_order(self, corpus: int) -> list[int]:
        """Row order of `corpus` in the first epoch (file order for `reference`)."""
        import torch

        from spunge_merge.unlearn import lm_data

        if self.order == "reference":
            return list(range(len(self.forget[corpus])))
        generator = torch.Generator().manual_seed(lm_data.stream_seed(self.seed, "forget", corpus))
        return torch.randperm(len(self.forget[corpus]), generator=generator).tolist()

    def schedule(self, epochs: int = 1):
        """(epoch, PlannedStep) for every step of `epochs` epochs, in training order (deterministic for the seed)."""
        import torch

        from spunge_merge.unlearn import lm_data

        k, size = len(self.forget), self.batch_size
        if self.order == "reference":
            for epoch in range(epochs):
                for index in range(self.steps_per_epoch):
                    corpus, batch = index % k, index // k
                    rows = range(batch * size, (batch + 1) * size)
                    retain_set = self.retain_ids[corpus]
                    yield epoch, PlannedStep(corpus, batch,
                                             tuple(r for r in rows if r < len(self.forget[corpus])), retain_set,
                                             tuple(r for r in rows if r < len(self.retain[retain_set])))
            return
        forget_generators = [torch.Generator().manual_seed(lm_data.stream_seed(self.seed, "forget", c)) for c in range(k)]
        retain_cycles = [lm_data.RowCycle(len(texts), lm_data.stream_seed(self.seed, "retain", r)) for r, texts in enumerate(self.retain)]
        for epoch in range(epochs):
            orders = [torch.randperm(len(texts), generator=forget_generators[c]).tolist() for c, texts in enumerate(self.forget)]
            for index in range(self.steps_per_epoch):
                corpus, batch = index % k, index // k
                forget_rows = tuple(orders[corpus][batch * size:(batch + 1) * size])
                retain_set = self.retain_ids[corpus]
                yield epoch, PlannedStep(corpus, batch, forget_rows, retain_set, retain_cycles[retain_set].take(size))


def make_plan(forget: list[Corpus], retain: list[Corpus], config: RMUConfig) -> Plan:
    retain_ids = [0] * len(forget) if len(retain) == 1 else list(range(len(forget)))
    steps = min(config.max_num_batches, min(math.ceil(len(c.texts) / config.batch_size) for c in forget),
                min(math.ceil(len(c.texts) / config.batch_size) for c in retain))
    return Plan(forget=[c.texts for c in forget], retain=[c.texts for c in retain], retain_ids=retain_ids,
                steps_per_epoch=steps, batch_size=config.batch_size, order=config.data_order, seed=config.seed)

