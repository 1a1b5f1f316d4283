"""The relearning attack: fine-tune a model in memory on a few texts and hand it to a scorer at chosen steps.

Why its own module: the attack is the part a reader must be able to reproduce by hand (the test does,
with peft and a torch optimizer), so its every choice is here and nowhere else:

- the texts: the rows of the attack data after the `where` filters; with `k`, k of them drawn with
  `random.Random(f"{seed}/rows")` (kept in file order);
- the order: each epoch a permutation of the texts from `random.Random(f"{seed}/epoch/{e}")`, the
  epochs concatenated into one stream cut into batches of `batch_size` (a batch may span two epochs);
- a batch: each text tokenized alone (truncated to `max_length`), right-padded, the loss the causal-LM
  loss over its real tokens (pad labels -100), as transformers computes it;
- LoRA (peft, dropout 0, no bias) on `target_modules`, created after `torch.manual_seed(seed)`; or every
  weight (`full`);
- AdamW (`lr`, `weight_decay`), transformers' linear schedule: warm-up over ceil(`warmup_ratio` × steps)
  steps, then linear decay to 0 at `steps`; gradients clipped to `max_grad_norm` (0: not clipped).

Step 0 is the model as loaded, before any update. The model is never written anywhere.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from spunge_merge.config import FrozenConfig
from spunge_merge.runtime import PEFT_WRAP_WARNINGS, quiet_dependency

ATTENTION_AND_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Published protocols, by name. `epochs` turns into steps once the number of texts is known.
PRESETS: dict[str, dict[str, Any]] = {
    # Łucki et al. 2024 (arXiv 2409.18025; ethz-spylab/unlearning-vs-safety, src/finetuning/finetune.py): the default.
    "lucki2024": {"mode": "lora", "rank": 128, "alpha": 16.0, "target_modules": ATTENTION_AND_MLP, "lr": 2e-4, "epochs": 3,
                  "batch_size": 1, "weight_decay": 0.01, "warmup_ratio": 0.05, "max_grad_norm": 1.0, "max_length": 1024},
    # Che et al. 2025 model tampering (zorache/model-tampering-evals): LoRA r 16, α 32, lr 5e-5, batch 8, 1 epoch.
    "che2025": {"mode": "lora", "rank": 16, "alpha": 32.0, "target_modules": ATTENTION_AND_MLP, "lr": 5e-5, "epochs": 1,
                "batch_size": 8, "weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0, "max_length": 1024},
    # The stronger preset: Deeb & Roger 2024 (arXiv 2410.08827) retrain every weight, 6 epochs, batch 4, Lion at up to
    # 5e-6. AdamW stands in for Lion at 10 × that lr (the Lion paper's rule: its lr 3-10 × below AdamW's).
    "deeb2024": {"mode": "full", "rank": 0, "alpha": 0.0, "target_modules": [], "lr": 5e-5, "epochs": 6,
                 "batch_size": 4, "weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0, "max_length": 1024},
}
DEFAULT_PRESET = "lucki2024"
STRONGER_PRESET = "deeb2024"


class AttackSettings(FrozenConfig):
    """One attack, every value resolved (what relearn.json records and the fingerprint covers)."""

    mode: Literal["lora", "full"]
    rank: int = Field(ge=0)
    alpha: float = Field(ge=0)
    target_modules: list[str]
    lr: float = Field(gt=0)
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    weight_decay: float = Field(ge=0)
    warmup_ratio: float = Field(ge=0, lt=1)
    max_grad_norm: float = Field(ge=0)
    max_length: int = Field(ge=2)
    seed: int
    eval_at_steps: list[int]

    @model_validator(mode="after")
    def _consistent(self):
        if self.mode == "lora" and (self.rank < 1 or self.alpha <= 0 or not self.target_modules):
            raise ValueError("mode lora needs rank >= 1, alpha > 0 and target_modules")
        beyond = [s for s in self.eval_at_steps if s < 0 or s > self.steps]
        if beyond:
            raise ValueError(f"eval_at_steps: step {beyond[0]} is outside 0..{self.steps} (steps)")
        if self.eval_at_steps != sorted(set(self.eval_at_steps)) or 0 not in self.eval_at_steps:
            raise ValueError("eval_at_steps must be increasing, without repeats, and start at 0")
        return self


def default_eval_steps(steps: int) -> list[int]:
    """Step 0 and four evenly spaced steps ending at `steps` (fewer when there are fewer steps)."""
    return sorted({0, *(max(1, round(steps * q / 4)) for q in (1, 2, 3, 4))})


def pick_rows(n: int, k: int | None, seed: int) -> list[int]:
    """Which of the `n` filtered rows the attack trains on: all, or `k` drawn by the seed (file order kept)."""
    if k is None:
        return list(range(n))
    return sorted(random.Random(f"{seed}/rows").sample(range(n), k))


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The text indices of each step's batch (see the module docstring)."""
    stream: list[int] = []
    epoch = 0
    while len(stream) < batch_size * steps:
        indices = list(range(n))
        random.Random(f"{seed}/epoch/{epoch}").shuffle(indices)
        stream.extend(indices)
        epoch += 1
    return [stream[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def linear_schedule(steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """transformers' `get_linear_schedule_with_warmup` factor at an update's index."""
    warmup = math.ceil(steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return factor


def run_attack(lm, tokenizer, texts: list[str], settings: AttackSettings, device,
               at_step: Callable[[int, Any], None]) -> list[float]:
    """Fine-tune `lm` (changed in place: pass a copy you own) on `texts`; call `at_step(step, model)` at every
    step of `settings.eval_at_steps` (the model in eval mode); return each update's training loss."""
    import torch

    torch.manual_seed(settings.seed)
    if settings.mode == "lora":
        from peft import LoraConfig, get_peft_model

        with quiet_dependency(PEFT_WRAP_WARNINGS):
            model = get_peft_model(lm, LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.target_modules),
                                                  lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    else:
        model = lm
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(settings.steps, settings.warmup_ratio))
    encoded = [tokenizer(text, truncation=True, max_length=settings.max_length)["input_ids"] for text in texts]
    wanted = set(settings.eval_at_steps)
    losses: list[float] = []
    model.eval()
    at_step(0, model)
    for step, batch in enumerate(batch_order(len(texts), settings.batch_size, settings.steps, settings.seed), start=1):
        model.train()
        ids, mask, labels = _padded([encoded[i] for i in batch], tokenizer.pad_token_id)
        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        if settings.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step in wanted:
            model.eval()
            with torch.no_grad():
                at_step(step, model)
    return losses


def _padded(sequences: list[list[int]], pad_id: int):
    """(input ids, attention mask, labels) of right-padded sequences; padding is masked out of the loss."""
    from spunge_merge.evaluate.token_scores import padded_batch

    ids, mask = padded_batch(sequences, pad_id)
    return ids, mask, ids.masked_fill(mask == 0, -100)
