"""RMU, Representation Misdirection for Unlearning (Li et al. 2024, the WMDP paper), made cheap.

The loss only reads the output h(x) of one decoder layer ℓ:

    L = mse(h_θ(x_forget), c·u) + α · mse(h_θ(x_retain), h_θ0(x_retain))

with u a fixed random unit vector, θ the `mlp.down_proj.weight` of layers 5, 6, 7 (by default)
and θ0 their values before training. The WMDP reference (`rmu/unlearn.py`) keeps two full models
and runs three full forward passes (every layer and the LM head) per step. Here:

- only embeddings and layers 0..ℓ are loaded (`partial_model`), never the layers above ℓ nor the LM head;
- there is one model; θ0 is kept as a copy of the updated tensors only, and the frozen activations
  come from `torch.func.functional_call` with θ0 swapped in;
- the frozen prefix (layers below the first updated layer) runs once per batch, without autograd,
  and feeds both the updated and the frozen pass; optionally it is cached across epochs;
- layer ℓ's output is taken from the layer itself, never from `hidden_states[-1]` (transformers 5
  applies the final norm there).

Everything else follows the reference: batches of `batch_size` texts, left padding with
pad = eos, right truncation (512 tokens), one control vector per forget corpus drawn with
`torch.rand` from the run's seed, corpora alternating one batch each, AdamW with the defaults of
the `transformers.AdamW` it used (betas 0.9/0.999, eps 1e-6, no weight decay).

Data order (`data_order`, see docs/data-handling.md): the reference reads both corpora in file
order and pairs forget batch i with retain batch i, so an epoch only ever sees the top of the
retain file. By default (`shuffled`) the forget rows are reshuffled every epoch with the run's
seed and the retain batches are drawn from a seeded permutation of the whole retain set that
continues across steps and epochs (a fresh permutation when it runs out), so every retain row
is used once the run has fed as many retain rows as the set holds. `reference` keeps the
script's order exactly (faithfulness tests).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from spunge_merge.config import FrozenConfig, build_config
from spunge_merge.data.loading import Subset, is_split_dir, load_subsets
from spunge_merge.errors import SpungeError
from spunge_merge.models import ResolvedModel, load_tokenizer, resolve_model
from spunge_merge.provenance import fingerprint, read_provenance, write_provenance
from spunge_merge.runs import RunOutcome, execute_run, run_subsets
from spunge_merge.runtime import pick_device, pick_dtype, seed_everything
from spunge_merge.tensorfiles import weight_files
from spunge_merge.unlearn import registry
from spunge_merge.unlearn.outputs import delta_to_model
from spunge_merge.unlearn.partial_model import load_partial_decoder, model_depth
from spunge_merge.unlearn.registry import BaselineBudget, TrainRequest, UnlearningMethod

DELTA_FILE = "delta.safetensors"
RUN_KIND = "rmu-delta"
# The WMDP reference used `transformers.AdamW(params, lr)`: these are its defaults (removed in transformers 5).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-6
AUTO_STEERING_BATCHES = 4  # forget batches measured for `auto` (the adaptive-RMU code measures the first one)
_LAYER_NAME = re.compile(r"^(?:(?P<prefix>.+)\.)?layers\.(?P<layer>\d+)\.(?P<rest>.+)$")


# ----------------------------------------------------------------------------------------------
# Settings


def parse_steering(value: float | str) -> tuple[str, float]:
    """`6.5` → ("fixed", 6.5); `auto` → ("auto", 5.0); `auto:2` → ("auto", 2.0)."""
    if isinstance(value, bool):
        raise ValueError(f"steering coefficient {value!r} is not a number or auto[:β]")
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"steering coefficient must be > 0, got {value}")
        return "fixed", number
    text = str(value).strip().lower()
    if text == "auto" or text.startswith("auto:"):
        beta_text = text[5:] or "5"
        try:
            beta = float(beta_text)
        except ValueError:
            raise ValueError(f"auto steering scale β must be a number, got '{beta_text}'") from None
        if not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"auto steering scale β must be > 0, got {beta_text}")
        return "auto", beta
    try:
        return parse_steering(float(text))
    except ValueError as exc:
        if "must be" in str(exc):
            raise
        raise ValueError(f"steering coefficient '{value}' is not a number or auto[:β]") from None


class RMUConfig(FrozenConfig):
    """RMU hyperparameters. Defaults are the WMDP paper's Zephyr-7B run (README command of the reference)."""

    layer: int = Field(7, ge=0, description="Decoder layer ℓ whose output is steered (reference: 7).")
    update_layers: list[int] = Field([5, 6, 7], min_length=1, description="Layers whose tensors are trained (reference: 5,6,7).")
    update_params: str = Field(r"mlp\.down_proj\.weight",
                               description="Regex on the parameter name inside each update layer (reference: param index 6 = down_proj).")
    param_regex: str | None = Field(None, description="Regex on full checkpoint tensor names; replaces update_layers/update_params.")
    steering_coeff: float | str | list[float | str] = Field(
        6.5, description="c: a number, or auto[:β] = β × mean layer-ℓ norm on forget data; one per forget corpus allowed.")
    alpha: float | list[float] = Field(1200.0, description="Retain weight α; one per forget corpus allowed (paper 1200, script 100).")
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate (betas 0.9/0.999, eps 1e-6, no weight decay, as the "
                                              "reference's transformers.AdamW); paper and reference: 5e-5.")
    batch_size: int = Field(4, ge=1, description="Texts per forget batch and per retain batch.")
    max_num_batches: int = Field(150, ge=1, description="Steps per epoch at most (WMDP README 150, script default 80).")
    forget_max_length: int | list[int] = Field(512, description="Forget truncation in tokens; one per forget corpus allowed.")
    retain_max_length: int = Field(512, ge=1, description="Retain truncation in tokens.")
    min_chars: int = Field(0, ge=0, description="Drop texts of at most this many characters (reference --min_len, default 0).")
    epochs: int = Field(1, ge=1, description="Passes over the batches (reference 1; the Spunge paper's variant 2).")
    data_order: Literal["shuffled", "reference"] = Field(
        "shuffled", description="shuffled: forget rows reshuffled every epoch with the seed, retain batches drawn from a seeded "
        "permutation of the whole retain set that continues across steps and epochs (every retain row gets used); reference: "
        "the WMDP script's order (file order, retain batch i paired with forget batch i, no shuffle; the only order in which "
        "cache_prefix helps, since shuffled batches never recur).")
    early_stop_cosine: float | None = Field(
        None, gt=-1.0, lt=1.0, description="Stop when the forget-batch cosine to initial activations drops below this (paper C.1: 0.5).")
    early_stop_window: int = Field(1, ge=1, description="Compare the mean cosine of the last N forget batches (1: the paper's rule).")
    mask_padding: bool = Field(False, description="Exclude padding tokens from both losses (open-unlearning's port).")
    seed: int = Field(42, description="Seed of the control vector(s) and everything else (reference: 42).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    cache_prefix: bool = Field(False, description="Keep frozen-prefix activations across epochs (memory for speed).")

    @field_validator("steering_coeff")
    @classmethod
    def _check_steering(cls, value):
        for item in value if isinstance(value, list) else [value]:
            parse_steering(item)
        if isinstance(value, list) and not value:
            raise ValueError("give at least one steering coefficient")
        return value

    @field_validator("alpha")
    @classmethod
    def _check_alpha(cls, value):
        items = value if isinstance(value, list) else [value]
        if not items or any(not math.isfinite(a) or a < 0 for a in items):
            raise ValueError("alpha must be >= 0 (one value, or one per forget corpus)")
        return value

    @field_validator("forget_max_length")
    @classmethod
    def _check_lengths(cls, value):
        items = value if isinstance(value, list) else [value]
        if not items or any(n < 1 for n in items):
            raise ValueError("forget_max_length must be >= 1 (one value, or one per forget corpus)")
        return value

    @field_validator("param_regex", "update_params")
    @classmethod
    def _check_regex(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return value

    @model_validator(mode="after")
    def _check_layers(self):
        if any(i < 0 for i in self.update_layers):
            raise ValueError("update_layers must be >= 0")
        if self.param_regex is None:
            above = sorted(i for i in self.update_layers if i > self.layer)
            if above:
                raise ValueError(f"update layer {above[0]} is above layer {self.layer}: its tensors cannot affect layer "
                                 f"{self.layer}'s output, which is all the RMU loss reads")
        return self

    def per_corpus(self, name: str, count: int) -> list:
        """`name`'s value for each of `count` forget corpora (a single value applies to all)."""
        value = getattr(self, name)
        if not isinstance(value, list):
            return [value] * count
        if len(value) == 1:
            return value * count
        if len(value) != count:
            raise SpungeError(f"{name} has {len(value)} values but there are {count} forget corpora (give one, or one per corpus)")
        return list(value)

    def fingerprint_part(self) -> dict[str, Any]:
        """Settings that determine the result (device and caching do not)."""
        return self.model_dump(exclude={"device", "cache_prefix"})


# ----------------------------------------------------------------------------------------------
# Which tensors are trained


@dataclass(frozen=True)
class Selection:
    tensors: tuple[str, ...]  # checkpoint tensor names, e.g. model.layers.5.mlp.down_proj.weight
    first_layer: int  # lowest layer holding one of them
    depth: int  # decoder layers of the full model


def select_tensors(resolved: ResolvedModel, config: RMUConfig) -> Selection:
    """The checkpoint tensors RMU updates, checked against the model before anything is loaded."""
    from transformers import AutoConfig

    depth = model_depth(AutoConfig.from_pretrained(resolved.path))
    if config.layer >= depth:
        raise SpungeError(f"--layer {config.layer} is beyond the depth of {resolved.ref}: it has {depth} decoder layers (0..{depth - 1})")
    names = sorted(weight_files(resolved.path))
    chosen: list[tuple[int, str]] = []
    if config.param_regex is not None:
        pattern = re.compile(config.param_regex)
        for name in names:
            if pattern.fullmatch(name):
                match = _LAYER_NAME.match(name)
                if match is None:
                    raise SpungeError(f"--param-regex matches {name}, which is not inside a decoder layer; RMU updates "
                                      "decoder-layer tensors only")
                chosen.append((int(match["layer"]), name))
        what = f"--param-regex '{config.param_regex}'"
    else:
        missing = sorted(i for i in config.update_layers if i >= depth)
        if missing:
            raise SpungeError(f"--update-layers {missing[0]} is beyond the depth of {resolved.ref} ({depth} layers)")
        pattern = re.compile(config.update_params)
        for name in names:
            match = _LAYER_NAME.match(name)
            if match and int(match["layer"]) in config.update_layers and pattern.fullmatch(match["rest"]):
                chosen.append((int(match["layer"]), name))
        what = f"--update-params '{config.update_params}' in layers {','.join(map(str, config.update_layers))}"
    if not chosen:
        raise SpungeError(f"{what} matches no tensor of {resolved.ref} (names look like {names[len(names) // 2]})")
    above = [(layer, name) for layer, name in chosen if layer > config.layer]
    if above:
        raise SpungeError(f"{above[0][1]} is in layer {above[0][0]}, above --layer {config.layer}: it cannot affect layer "
                          f"{config.layer}'s output, which is all the RMU loss reads")
    return Selection(tensors=tuple(name for _, name in sorted(chosen)), first_layer=min(layer for layer, _ in chosen), depth=depth)


# ----------------------------------------------------------------------------------------------
# The truncated decoder, split into a frozen prefix and a trainable suffix


_RECORDER_CLASS = None


def _recorder_for(layer):
    """A module standing in for `layer` during the prefix pass: records its call, returns its input."""
    global _RECORDER_CLASS
    if _RECORDER_CLASS is None:
        import torch

        class LayerRecorder(torch.nn.Module):
            call: tuple | None = None

            def forward(self, hidden_states, *args, **kwargs):
                self.call = (hidden_states, args, kwargs)
                return hidden_states

        _RECORDER_CLASS = LayerRecorder
    recorder = _RECORDER_CLASS()
    for attribute in ("attention_type", "layer_idx", "is_sliding", "sliding_window"):  # read by some models' layer loops
        if hasattr(layer, attribute):
            setattr(recorder, attribute, getattr(layer, attribute))
    return recorder


@dataclass
class PrefixOutput:
    """Input of the first updated layer, and the arguments the model passes to each later layer."""

    hidden: Any
    calls: list[tuple[tuple, dict]]


class SplitDecoder:
    """Layers 0..ℓ of a base model: `prefix` runs the frozen bottom once, `suffix` the rest.

    The prefix runs through the model's own forward (embeddings, rotary embeddings, masks), with
    layers first..ℓ replaced by recorders that capture the exact arguments each would receive,
    so per-layer masks (sliding windows) stay right. `suffix` then calls the real layers.
    """

    def __init__(self, model, *, layer: int, first_layer: int):
        if len(model.layers) != layer + 1:
            raise ValueError(f"model has {len(model.layers)} layers, expected {layer + 1} (truncate it first)")
        self.model = model
        self.layer = layer
        self.first_layer = first_layer

    def prefix(self, input_ids, attention_mask) -> PrefixOutput:
        import torch

        layers = self.model.layers
        originals = {i: layers[i] for i in range(self.first_layer, self.layer + 1)}
        recorders = {i: _recorder_for(layer) for i, layer in originals.items()}
        try:
            for i, recorder in recorders.items():
                layers[i] = recorder
            with torch.no_grad():
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for i, original in originals.items():
                layers[i] = original
        calls = [recorders[i].call for i in sorted(recorders)]
        if any(call is None or call[0] is not calls[0][0] for call in calls):
            # The model's layer loop does more than `hidden = layer(hidden, ...)` (e.g. `layer(...)[0]`).
            raise SpungeError(f"{type(self.model).__name__}: its decoder-layer loop is not the plain `hidden = layer(hidden, ...)` "
                              "that RMU's prefix reuse relies on; this architecture is not supported")
        return PrefixOutput(hidden=calls[0][0], calls=[(args, kwargs) for _, args, kwargs in calls])

    def suffix(self, prefix: PrefixOutput, weights: dict[int, dict[str, Any]] | None = None):
        """Layer ℓ's output; `weights` (layer → {param name: tensor}) replaces parameters for this call."""
        from torch.func import functional_call

        hidden = prefix.hidden
        for offset, (args, kwargs) in enumerate(prefix.calls):
            index = self.first_layer + offset
            layer = self.model.layers[index]
            if weights and index in weights:
                out = functional_call(layer, weights[index], (hidden, *args), kwargs, strict=False)
            else:
                out = layer(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


# ----------------------------------------------------------------------------------------------
# Losses and one training step


def activation_mse(activations, target, mask=None):
    """Mean squared error over tokens and features; with `mask`, padding is left out the way
    open-unlearning's RMU does it (token mean per sequence, then mean over sequences)."""
    import torch

    diff = (activations.float() - target.float().expand_as(activations)) ** 2
    if mask is None:
        return diff.mean()
    mask = mask.to(diff.dtype)
    per_sequence = (diff.mean(dim=-1) * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return per_sequence.mean() if per_sequence.numel() else torch.zeros((), device=diff.device)


def activation_cosine(activations, reference, mask=None):
    """Mean per-token cosine similarity (padding left out as in `activation_mse` when masked)."""
    import torch

    cosine = torch.nn.functional.cosine_similarity(activations.float(), reference.float(), dim=-1)
    if mask is None:
        return cosine.mean()
    mask = mask.to(cosine.dtype)
    return ((cosine * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).mean()


def activation_norm(activations, mask=None) -> list[float]:
    """Per-sequence mean token norm (what adaptive RMU scales c by)."""
    norms = activations.float().norm(dim=-1)
    if mask is None:
        return norms.mean(dim=1).tolist()
    mask = mask.to(norms.dtype)
    return ((norms * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).tolist()


@dataclass
class Batch:
    """One tokenized batch (left padded) and where it came from."""

    key: tuple
    input_ids: Any
    attention_mask: Any


@dataclass
class StepRecord:
    forget_loss: float
    retain_loss: float
    forget_cosine: float
    stopped: bool = False


class NonFiniteLoss(ArithmeticError):
    """Raised by `RMUTrainer.step` before any update when the loss is NaN or infinite."""

    def __init__(self, record: StepRecord):
        super().__init__(f"forget loss {record.forget_loss}, retain loss {record.retain_loss}")
        self.record = record


class RMUTrainer:
    """The RMU optimisation on a `SplitDecoder`: one step = forget pass, retain pass, frozen retain pass,
    AdamW update of the selected parameters. `restore` puts θ0 back for the next subset."""

    def __init__(self, stack: SplitDecoder, param_names: Sequence[str], *, lr: float, mask_padding: bool = False,
                 cache_prefix: bool = False):
        import torch

        self.stack = stack
        self.mask_padding = mask_padding
        self.cache: dict[tuple, PrefixOutput] | None = {} if cache_prefix else None
        named = dict(stack.model.named_parameters())
        stack.model.requires_grad_(False)
        self.params = {}
        self.frozen: dict[int, dict[str, Any]] = {}
        self.originals: dict[str, Any] = {}
        for name in param_names:
            param = named[name]
            param.requires_grad_(True)
            self.params[name] = param
            self.originals[name] = param.detach().clone()
            layer_index = int(name.split(".")[1])
            self.frozen.setdefault(layer_index, {})[name.split(".", 2)[2]] = self.originals[name]
        self.lr = lr
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0)

    def restore(self) -> None:
        """θ ← θ0, fresh optimizer state and prefix cache (a new run from the same base)."""
        import torch

        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.originals[name])
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=self.lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=0.0)
        if self.cache is not None:
            self.cache.clear()

    def _prefix(self, batch: Batch) -> PrefixOutput:
        if self.cache is not None and batch.key in self.cache:
            return self.cache[batch.key]
        out = self.stack.prefix(batch.input_ids, batch.attention_mask)
        if self.cache is not None:
            self.cache[batch.key] = out
        return out

    def frozen_activations(self, batch: Batch):
        """Layer-ℓ activations of the initial model θ0."""
        import torch

        with torch.no_grad():
            return self.stack.suffix(self._prefix(batch), self.frozen)

    def step(self, forget: Batch, retain: Batch, control, alpha: float, *,
             should_stop: Callable[[float], bool] | None = None) -> StepRecord:
        """One update; `should_stop(forget cosine)` True ends training before this update is applied."""
        import torch

        forget_mask = forget.attention_mask if self.mask_padding else None
        retain_mask = retain.attention_mask if self.mask_padding else None
        forget_prefix = self._prefix(forget)
        forget_acts = self.stack.suffix(forget_prefix)
        forget_loss = activation_mse(forget_acts, control, forget_mask)
        retain_prefix = self._prefix(retain)
        retain_acts = self.stack.suffix(retain_prefix)
        with torch.no_grad():
            frozen_retain = self.stack.suffix(retain_prefix, self.frozen)
            frozen_forget = self.stack.suffix(forget_prefix, self.frozen)
            cosine = activation_cosine(forget_acts.detach(), frozen_forget, forget_mask).item()
        retain_loss = alpha * activation_mse(retain_acts, frozen_retain, retain_mask)
        loss = forget_loss + retain_loss
        record = StepRecord(forget_loss=forget_loss.item(), retain_loss=retain_loss.item(), forget_cosine=cosine)
        if not math.isfinite(record.forget_loss + record.retain_loss):
            raise NonFiniteLoss(record)
        if should_stop is not None and should_stop(cosine):
            record.stopped = True
            return record
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return record


def control_vectors(hidden_size: int, coefficients: Sequence[float], seed: int):
    """One c·u per corpus, u = rand(hidden) / ‖·‖, drawn in order from `seed` as the reference does
    right after `torch.manual_seed(seed)` (CPU generator, float32)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    vectors = []
    for coefficient in coefficients:
        random_vector = torch.rand(1, 1, hidden_size, generator=generator)
        vectors.append(random_vector / torch.norm(random_vector) * coefficient)
    return vectors


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class Corpus:
    subset: Subset
    texts: list[str]


def _corpus(subset: Subset, min_chars: int, role: str) -> Corpus:
    texts = [t for t in subset.texts if len(t) > min_chars]
    if not texts:
        raise SpungeError(f"{subset.source}: no {role} text longer than {min_chars} characters (--min-chars)")
    return Corpus(subset=subset, texts=texts)


def _load_files(sources: Sequence[str | Path], text_column: str | None, role: str) -> list[Subset]:
    subsets = []
    for source in sources:
        if is_split_dir(source):
            raise SpungeError(f"{source} is a split directory: as --{role} give data files (a split directory "
                              "as the only --forget runs one RMU per subset)")
        subsets.extend(load_subsets(source, text_column))
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


# ----------------------------------------------------------------------------------------------
# Runs


@dataclass
class _Session:
    """Loads the truncated model once (lazily: not at all when every run is already complete)."""

    resolved: ResolvedModel
    config: RMUConfig
    selection: Selection
    progress: bool = True
    _state: dict[str, Any] = field(default_factory=dict)

    def _load(self):
        if self._state:
            return self._state
        device = pick_device(self.config.device)
        dtype = pick_dtype(self.config.dtype, device)
        partial = load_partial_decoder(self.resolved, self.config.layer, dtype=dtype, device=device)
        by_checkpoint = {ckpt: name for name, ckpt in partial.checkpoint_names.items()}
        param_names = [by_checkpoint[t] for t in self.selection.tensors]
        stack = SplitDecoder(partial.model, layer=self.config.layer, first_layer=self.selection.first_layer)
        # Shuffled batches never recur, so a cache would only grow: it pays with the reference's fixed order only.
        trainer = RMUTrainer(stack, param_names, lr=self.config.lr, mask_padding=self.config.mask_padding,
                             cache_prefix=self.config.cache_prefix and self.config.epochs > 1 and self.config.data_order == "reference")
        self._state = {"device": device, "dtype": dtype, "trainer": trainer, "tokenizer": prepare_tokenizer(self.resolved),
                       "param_names": param_names, "hidden": partial.model.config.hidden_size}
        return self._state

    def run(self, forget: list[Corpus], retain: list[Corpus], tmp: Path, *, name: str, fingerprint_value: str,
            attribute: dict | None) -> None:
        from safetensors.torch import save_file

        state = self._load()
        trainer: RMUTrainer = state["trainer"]
        config = self.config
        trainer.restore()
        seed_everything(config.seed)
        k = len(forget)
        alphas = [float(a) for a in config.per_corpus("alpha", k)]
        lengths = [int(n) for n in config.per_corpus("forget_max_length", k)]
        steering = [parse_steering(s) for s in config.per_corpus("steering_coeff", k)]
        plan = make_plan(forget, retain, config)
        device, tokenizer = state["device"], state["tokenizer"]

        def forget_batch(corpus: int, rows: tuple[int, ...]) -> Batch:
            return _tokenize(tokenizer, [plan.forget[corpus][r] for r in rows], lengths[corpus], device, ("forget", corpus, rows))

        def retain_batch(retain_set: int, rows: tuple[int, ...]) -> Batch:
            return _tokenize(tokenizer, [plan.retain[retain_set][r] for r in rows], config.retain_max_length, device,
                             ("retain", retain_set, rows))

        coefficients, measured = [], []
        for corpus, (mode, value) in enumerate(steering):
            if mode == "fixed":
                coefficients.append(value)
                measured.append(None)
                continue
            norms: list[float] = []
            order = plan.forget_order(corpus)
            for start in range(0, min(len(order), AUTO_STEERING_BATCHES * config.batch_size), config.batch_size):
                rows = tuple(order[start:start + config.batch_size])
                batch = forget_batch(corpus, rows)
                acts = trainer.frozen_activations(batch)
                norms.extend(activation_norm(acts, batch.attention_mask if config.mask_padding else None))
            mean_norm = sum(norms) / len(norms)
            measured.append(mean_norm)
            coefficients.append(value * mean_norm)
        controls = [v.to(device=device, dtype=state["dtype"]) for v in control_vectors(state["hidden"], coefficients, config.seed)]

        history: list[dict[str, Any]] = []
        early_stop = None
        recent: list[float] = []
        window = config.early_stop_window

        def should_stop(cosine: float) -> bool:
            recent.append(cosine)
            return (config.early_stop_cosine is not None and len(recent) >= window
                    and sum(recent[-window:]) / window < config.early_stop_cosine)
        total = plan.steps_per_epoch * config.epochs
        used_forget: list[set[int]] = [set() for _ in forget]  # rows fed to an applied update
        used_retain: list[set[int]] = [set() for _ in retain]
        started = time.perf_counter()
        with _progress_bar(self.progress, total, f"RMU {name}") as advance:
            for epoch, step in plan.schedule(config.epochs):
                corpus = step.corpus
                try:
                    record = trainer.step(forget_batch(corpus, step.forget_rows), retain_batch(step.retain_set, step.retain_rows),
                                          controls[corpus], alphas[corpus], should_stop=should_stop)
                except NonFiniteLoss as exc:
                    raise SpungeError(f"RMU loss is not finite at step {len(history) + 1} (epoch {epoch + 1}; {exc}); stopped, "
                                      "nothing was written: lower --lr or --steering-coeff, or use --dtype float32") from None
                history.append({"step": len(history) + 1, "epoch": epoch + 1, "corpus": corpus, "batch": step.batch,
                                "forget_loss": record.forget_loss, "retain_loss": record.retain_loss,
                                "forget_cosine": record.forget_cosine, "updated": not record.stopped})
                advance(record)
                if record.stopped:
                    early_stop = {"step": len(history), "epoch": epoch + 1, "forget_cosine": record.forget_cosine,
                                  "mean_forget_cosine": sum(recent[-window:]) / window, "window": window,
                                  "threshold": config.early_stop_cosine}
                    break
                used_forget[corpus].update(step.forget_rows)
                used_retain[step.retain_set].update(step.retain_rows)
        elapsed = time.perf_counter() - started
        updates = sum(1 for h in history if h["updated"])
        tensors = {ckpt: trainer.params[name].detach().to("cpu").contiguous()
                   for ckpt, name in zip(self.selection.tensors, state["param_names"], strict=True)}
        save_file(tensors, str(tmp / DELTA_FILE), metadata={"format": "pt", "spunge_kind": RUN_KIND,
                                                             "base_fingerprint": self.resolved.fingerprint})
        last = history[-1]
        write_provenance(
            tmp, kind=RUN_KIND, fingerprint=fingerprint_value, method="rmu",
            base_model=self.resolved.describe(),
            config=config.model_dump(),
            data={"forget": [c.subset.describe() | {"rows_available": len(c.texts), "rows_used": len(used)}
                             for c, used in zip(forget, used_forget, strict=True)],
                  "retain": [c.subset.describe() | {"rows_available": len(c.texts), "rows_used": len(used)}
                             for c, used in zip(retain, used_retain, strict=True)],
                  "order": config.data_order,
                  "rows_used_rule": "distinct rows fed to at least one applied update (rows_available: after --min-chars)"},
            attribute=attribute,
            result={
                "steps": updates, "steps_per_epoch": plan.steps_per_epoch, "steps_planned": total,
                "epochs_run": history[-1]["epoch"], "early_stop": early_stop, "early_stop_step": early_stop["step"] if early_stop else None,
                "layer": config.layer, "first_updated_layer": self.selection.first_layer,
                "updated_tensors": list(self.selection.tensors),
                "steering_coeff": coefficients, "steering_mode": [m for m, _ in steering],
                "auto_mean_activation_norm": measured, "alpha": alphas, "forget_max_length": lengths,
                "control_vector_seed": config.seed,
                "control_vector_generator": "torch.Generator(cpu).manual_seed(seed); torch.rand(1,1,hidden) per corpus",
                "optimizer": {"name": "AdamW", "lr": config.lr, "betas": list(ADAM_BETAS), "eps": ADAM_EPS, "weight_decay": 0.0},
                "device": str(device), "dtype": str(state["dtype"]).replace("torch.", ""),
                "final": {"forget_loss": last["forget_loss"], "retain_loss": last["retain_loss"], "forget_cosine": last["forget_cosine"]},
                "history": history, "elapsed_s": round(elapsed, 3),
            },
        )


class _progress_bar:  # noqa: N801 - used as a context manager
    """A rich progress bar showing the latest forget loss, retain loss and forget cosine."""

    def __init__(self, enabled: bool, total: int, description: str):
        self.enabled, self.total, self.description = enabled, total, description

    def __enter__(self):
        if not self.enabled:
            return lambda record: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[losses]}"), transient=False)
        self.progress.__enter__()
        task = self.progress.add_task(self.description, total=self.total, losses="")

        def advance(record: StepRecord):
            self.progress.update(task, advance=1, losses=f"forget {record.forget_loss:.4g}  retain {record.retain_loss:.4g}  "
                                                         f"cos {record.forget_cosine:.3f}")

        return advance

    def __exit__(self, *exc):
        if self.enabled:
            return self.progress.__exit__(*exc)
        return False


def _run_fingerprint(resolved: ResolvedModel, config: RMUConfig, selection: Selection, forget: list[Corpus],
                     retain: list[Corpus]) -> str:
    device = pick_device(config.device)
    return fingerprint(method="rmu", config=config.fingerprint_part(), base=resolved.fingerprint, tensors=list(selection.tensors),
                       forget=[c.subset.sha256 for c in forget], retain=[c.subset.sha256 for c in retain],
                       device=device.type, dtype=str(pick_dtype(config.dtype, device)))


def train_rmu(model: str | Path | ResolvedModel, forget: str | Path | Sequence[str | Path], retain: str | Path | Sequence[str | Path],
              out: str | Path, config: RMUConfig | Mapping[str, Any] | None = None, *, text_column: str | None = None,
              retain_text_column: str | None = None, force: bool = False, progress: bool = True) -> list[RunOutcome]:
    """RMU from `model`: one run per subset when `forget` is one split directory (`out/<name>/` and
    `out/manifest.json`), else one run over all forget corpora, alternating a batch of each with one
    control vector (and c, α, max length) per corpus, into `out/`. Completed runs are skipped
    (same settings, data sha256, base model, device type and dtype)."""
    config = config if isinstance(config, RMUConfig) else build_config(RMUConfig, overrides=dict(config or {}))
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    forget_sources = [forget] if isinstance(forget, str | Path) else list(forget)
    retain_sources = [retain] if isinstance(retain, str | Path) else list(retain)
    if not forget_sources:
        raise SpungeError("give at least one --forget data file or split directory")
    if not retain_sources:
        raise SpungeError("give a --retain data file")
    selection = select_tensors(resolved, config)
    retain_corpora = [_corpus(s, config.min_chars, "retain") for s in _load_files(retain_sources, retain_text_column, "retain")]
    session = _Session(resolved, config, selection, progress=progress)
    out = Path(out)

    if len(forget_sources) == 1 and is_split_dir(forget_sources[0]):
        if len(retain_corpora) != 1:
            raise SpungeError("with a split directory as --forget give one --retain (every subset uses it)")
        for name in ("alpha", "steering_coeff", "forget_max_length"):
            config.per_corpus(name, 1)
        subsets = load_subsets(forget_sources[0], text_column)
        corpora = {s.name: _corpus(s, config.min_chars, "forget") for s in subsets}

        def run_one(subset: Subset, run_dir: Path) -> RunOutcome:
            corpus = corpora[subset.name]
            value = _run_fingerprint(resolved, config, selection, [corpus], retain_corpora)
            attribute = {"column": subset.column, "value": subset.value}
            def work(tmp: Path) -> None:
                session.run([corpus], retain_corpora, tmp, name=subset.name, fingerprint_value=value, attribute=attribute)

            return execute_run(run_dir, value, work, force=force, name=subset.name)

        return run_subsets(subsets, out, method="rmu", run_one=run_one, split_source=Path(forget_sources[0]), force=force)

    forget_corpora = [_corpus(s, config.min_chars, "forget") for s in _load_files(forget_sources, text_column, "forget")]
    if len(retain_corpora) not in (1, len(forget_corpora)):
        raise SpungeError(f"give one --retain, or one per --forget corpus ({len(forget_corpora)}); got {len(retain_corpora)}")
    for name in ("alpha", "steering_coeff", "forget_max_length"):
        config.per_corpus(name, len(forget_corpora))
    value = _run_fingerprint(resolved, config, selection, forget_corpora, retain_corpora)
    outcome = execute_run(out, value, lambda tmp: session.run(forget_corpora, retain_corpora, tmp, name=out.name, fingerprint_value=value,
                                                              attribute=None), force=force)
    return [outcome]


# ----------------------------------------------------------------------------------------------
# Base + delta → full model directory

def materialize(base: str | Path | ResolvedModel | None, run_dir: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """A full HF model directory: `base` with the tensors of `run_dir/delta.safetensors` replaced.

    Shards holding no updated tensor are reflinked where the filesystem can (else copied), the others
    rewritten, config and tokenizer files copied: no output file shares an inode with the base, so
    a `save_pretrained` into the output never edits the base model.
    `base` None means the base model named in the run's spunge.json.
    """
    run_dir = Path(run_dir)
    record = read_provenance(run_dir)
    if record is None or not (run_dir / DELTA_FILE).is_file():
        if (run_dir / "manifest.json").is_file():
            raise SpungeError(f"{run_dir} holds several runs; give one of them, e.g. {run_dir}/<name>")
        raise SpungeError(f"{run_dir} is not an RMU run (no spunge.json and {DELTA_FILE})")
    if record.get("kind") != RUN_KIND:
        raise SpungeError(f"{run_dir}/spunge.json has kind '{record.get('kind')}', not '{RUN_KIND}'")
    if base is None:
        described = record.get("base_model") or {}
        base = described.get("ref") or described.get("path")
        if not base:
            raise SpungeError(f"{run_dir}/spunge.json names no base model; pass --model")
    resolved = base if isinstance(base, ResolvedModel) else resolve_model(base)
    return delta_to_model(resolved, run_dir, None, Path(out), force=force)


# ----------------------------------------------------------------------------------------------
# The method's record: what the CLI, the pipeline, the baseline and the model card know of RMU.


def _train_request(request: TrainRequest) -> list[RunOutcome]:
    forget = request.forget[0] if len(request.forget) == 1 else list(request.forget)
    return train_rmu(request.model, forget, list(request.retain), request.out, request.config, text_column=request.text_column,
                     retain_text_column=request.retain_text_column, force=request.force, progress=request.progress)


def _batches(texts: Sequence[str], config: RMUConfig) -> int:
    return math.ceil(sum(1 for t in texts if len(t) > config.min_chars) / config.batch_size)


def planned_steps(config: RMUConfig, forget_texts: Sequence[str], retain_texts: Sequence[str] | None) -> int:
    """The reference's schedule: min(max_num_batches, forget batches, retain batches) per epoch."""
    return min(config.max_num_batches, _batches(forget_texts, config), _batches(retain_texts or [], config)) * config.epochs


def match_baseline(split_configs: Mapping[str, Mapping[str, Any]], split_texts: Mapping[str, Sequence[str]],
                   baseline: Mapping[str, Any], retain_texts: Sequence[str] | None, corpora: str) -> BaselineBudget:
    """The baseline gets `max_num_batches` (and, when that is not enough, more epochs) to reach the split runs'
    total, within epochs − 1 steps. The alternating multi-corpus run counts the batches of its smallest corpus.
    Early stopping can still end either arm sooner."""
    per_run = {name: planned_steps(RMUConfig.model_validate(split_configs[name]), texts, retain_texts)
               for name, texts in split_texts.items()}
    total = sum(per_run.values())
    cfg = RMUConfig.model_validate(baseline)
    if corpora == "alternating":
        forget_batches = min(_batches(texts, cfg) for texts in split_texts.values())
    else:
        forget_batches = _batches([t for texts in split_texts.values() for t in texts], cfg)
    capacity = min(forget_batches, _batches(retain_texts or [], cfg))
    epochs = max(cfg.epochs, math.ceil(total / capacity))
    adjusted = {**baseline, "max_num_batches": math.ceil(total / epochs), "epochs": epochs}
    planned = min(adjusted["max_num_batches"], capacity) * epochs
    changes = {k: v for k, v in adjusted.items() if baseline.get(k) != v}
    return BaselineBudget(config=adjusted, record={"split_runs": per_run, "split_total": total, "baseline_planned": planned,
                                                   "changed": changes})


registry.register(UnlearningMethod(
    name="rmu",
    summary="Representation misdirection: steer a layer's activations on forget text to a random vector, keep retain text's.",
    description=(
        "**Representation misdirection for unlearning (RMU)**: the MLP weights of a few layers are updated so that "
        "the hidden states on the subset's text are pushed towards a fixed random direction (scaled by a steering "
        "coefficient), while a retain loss keeps the hidden states on benign text close to the base model's "
        "(Li et al., 2024, WMDP)."
    ),
    config_class=RMUConfig,
    retain="required",
    output_kind=lambda config: "tensor-delta",
    train=_train_request,
    planned_steps=planned_steps,
    match_baseline=match_baseline,
    to_model=delta_to_model,
    baseline_corpora=("alternating", "union"),
))
