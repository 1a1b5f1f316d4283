"""The training loop shared by the loss-based unlearning methods (GA, GradDiff, NPO, SimNPO).

A method contributes only its forget term (`Objective`) and its settings class; this module owns
everything else: LoRA through peft (default) or direct training of chosen tensors (`full`), the
optimizer and schedule, exact gradient accumulation, the order in which forget and retain rows are
seen, NPO's reference log-probabilities, the run directory, and the `UnlearningMethod` record.

What a run writes *is* the unlearned update, with no negation:
- LoRA: a plain peft adapter directory (kind "peft-adapter"); λ scales its lora_B.
- `full`: `delta.safetensors` holding the new values of the trained tensors only, under their
  checkpoint names (kind "tensor-delta", RMU's layout); λ scales (new − base).

Data order: forget rows are reshuffled every epoch with `seed + epoch`; retain rows come from one
stream that runs through the *whole* retain set (reshuffled on each pass) across steps and
epochs, one retain micro-batch beside each forget micro-batch. Reference log-probabilities
(NPO) are computed once per forget row before training, from the same weights with the adapter
disabled (LoRA) or not yet trained (`full`), so no second model copy is ever held.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from spunge_merge.config import FrozenConfig, build_config
from spunge_merge.data.loading import Subset, is_split_dir, load_subsets
from spunge_merge.errors import SpungeError
from spunge_merge.models import ALIASES, ResolvedModel, load_causal_lm, load_tokenizer
from spunge_merge.provenance import fingerprint, is_complete, read_provenance, write_provenance
from spunge_merge.runs import RunOutcome, execute_run, run_subsets
from spunge_merge.runtime import pick_device, pick_dtype, seed_everything
from spunge_merge.unlearn import lm_data
from spunge_merge.unlearn.losses import SequenceLogProbs, nll_sum, sequence_logprobs
from spunge_merge.unlearn.outputs import delta_to_model, peft_adapter_to_model
from spunge_merge.unlearn.registry import BaselineBudget, OutputKind, RetainNeed, TrainRequest, UnlearningMethod
from spunge_merge.unlearn.tvn import check_target_modules, target_module_names

log = logging.getLogger(__name__)

PEFT_ADAPTER: OutputKind = "peft-adapter"
TENSOR_DELTA: OutputKind = "tensor-delta"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DELTA_FILE = "delta.safetensors"
# Settings that do not change the trained weights: a rerun differing only in these is skipped.
_NOT_IN_FINGERPRINT = frozenset({"device", "dtype", "eval_samples"})
_RETAIN_SEED_STRIDE = 1_000_003  # retain passes are shuffled with seeds far from the forget epochs' seed + epoch


class LossMethodConfig(FrozenConfig):
    """Settings every loss-based method shares: LoRA or full training, optimisation, data, runtime."""

    full: bool = Field(False, description="Train the tensors named by full_params directly and write only the changed "
                                          "ones (delta.safetensors) instead of a LoRA adapter.")
    full_params: list[str] = Field([r".*layers\.(5|6|7)\.mlp\.down_proj\.weight"], min_length=1,
                                   description="With full: regexes (commas between them in one string); a parameter "
                                               "trains when one matches its whole name (default: the MLP down_proj of "
                                               "layers 5-7, RMU's choice).")
    rank: int = Field(16, ge=1, description="LoRA rank r.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha; the update is scaled by alpha/r.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        "all-linear", description="Modules LoRA adapts: names separated by commas, all-linear, or None for peft's "
                                  "default for the architecture.")
    lr: float = Field(1e-4, gt=0.0, description="AdamW learning rate (open-unlearning: 1e-5 for full fine-tuning; "
                                                "LoRA usually needs about 10× more).")
    epochs: int = Field(1, ge=1, description="Passes over the forget texts.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (None = all epochs).")
    batch_size: int = Field(8, ge=1, description="Forget texts per micro-batch (and retain texts beside each).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(128, ge=2, description="Tokens per text, EOS included; longer texts are truncated.")
    warmup: float = Field(0.0, ge=0.0, description="Warmup: steps when >= 1, fraction of all steps when < 1.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "constant", description="Learning-rate schedule (transformers.get_scheduler).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the trained weights.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping norm (None = no clipping).")
    seed: int = Field(42, description="Seed for LoRA init, dropout and the order of forget and retain rows.")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto.")
    dtype: str = Field("auto", description="Model dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    eval_samples: int = Field(32, ge=0, description="Forget texts whose NLL is reported before and after training (0 = skip).")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        """Accept `q_proj,v_proj` (CLI, YAML) as well as a list (TVN's rule)."""
        return target_module_names(value)

    @field_validator("full_params", mode="before")
    @classmethod
    def _check_patterns(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for pattern in value or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"'{pattern}' is not a valid regular expression ({exc})") from None
        return value

    # What the shared loop asks of a method's settings.
    def forget_weight(self) -> float:
        return 1.0

    def retain_weight(self) -> float:
        """Weight of the retain NLL term; > 0 means the run needs retain data."""
        return 0.0

    def fingerprint_part(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}


class RetainTermConfig(LossMethodConfig):
    """A loss with open-unlearning's weights: γ·forget term + α·retain NLL."""

    gamma: float = Field(1.0, gt=0.0, description="γ: weight of the forget term.")
    alpha: float = Field(1.0, ge=0.0, description="α: weight of the retain NLL term (> 0 needs retain data).")

    def forget_weight(self) -> float:
        return self.gamma

    def retain_weight(self) -> float:
        return self.alpha


@dataclass(frozen=True)
class Objective:
    """A method's forget term: `forget_sum(lp, reference, config)` summed over a micro-batch, divided
    by the group's forget tokens (`per="token"`) or sequences (`per="sequence"`)."""

    forget_sum: Callable[[SequenceLogProbs, Any, Any], Any]
    per: Literal["token", "sequence"]
    reference: bool = False  # needs log π_ref(y|x) of each forget row (NPO)


# --------------------------------------------------------------------------------------------
# Data order


def _permutation(n: int, seed: int) -> list[int]:
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def forget_groups(n: int, config: LossMethodConfig, epoch: int) -> list[list[list[int]]]:
    """One epoch's optimizer steps, each a list of micro-batches of forget row indices (shuffled by seed + epoch)."""
    order = _permutation(n, config.seed + epoch)
    micro = [order[i:i + config.batch_size] for i in range(0, n, config.batch_size)]
    return [micro[i:i + config.grad_accum] for i in range(0, len(micro), config.grad_accum)]


def retain_stream(n: int, seed: int) -> Iterator[int]:
    """Retain row indices forever: every row once per pass, a fresh shuffle each pass."""
    passes = 0
    while True:
        passes += 1
        yield from _permutation(n, seed + _RETAIN_SEED_STRIDE * passes)


def planned_steps(config: LossMethodConfig, forget: int | Sequence[str], retain: int | Sequence[str] | None = None) -> int:
    """Optimizer steps of a run: the forget batches set the pace; retain rows cycle beside them.
    `forget` is the forget texts (the registry's form) or their count."""
    forget_rows = forget if isinstance(forget, int) else len(forget)
    return lm_data.optimizer_steps(forget_rows, batch_size=config.batch_size, grad_accum=config.grad_accum,
                                   epochs=config.epochs, max_steps=config.max_steps)


# --------------------------------------------------------------------------------------------
# Which weights train


def _skeleton(resolved: ResolvedModel):
    """The model built on the meta device: names and shapes without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(resolved.path)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise SpungeError(f"{resolved.ref}: not a causal language model transformers can build ({exc})") from exc


def select_full_params(names: Sequence[str], config: LossMethodConfig, ref: str) -> list[str]:
    """The parameter names `full_params` selects; an error naming the pattern that matches nothing."""
    chosen = []
    for pattern in config.full_params:
        compiled = re.compile(pattern)
        matched = [name for name in names if compiled.fullmatch(name)]
        if not matched:
            example = names[len(names) // 2] if names else "?"
            raise SpungeError(f"full_params: '{pattern}' matches no parameter of {ref} (names look like {example})")
        chosen.extend(matched)
    return sorted(set(chosen), key=list(names).index)


def check_trainable(config: LossMethodConfig, resolved: ResolvedModel) -> None:
    """Fail before any output exists when the chosen weights are not in the model."""
    if config.full:
        select_full_params([name for name, _ in _skeleton(resolved).named_parameters()], config, resolved.ref)
    else:
        check_target_modules(config, resolved)


def _lora_config(config: LossMethodConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, bias="none", task_type="CAUSAL_LM")


def _adapter_base_name(resolved: ResolvedModel) -> str:
    """What adapter_config.json names as the base: the Hub id when the user gave one, else the local path."""
    is_local = resolved.ref in ALIASES or Path(resolved.ref).expanduser().exists()
    return str(resolved.path) if is_local else resolved.ref


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class Fit:
    losses: list[float]
    forget_terms: list[float]
    retain_terms: list[float]
    forget_used: set[int]
    retain_used: set[int]


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def reference_logprobs(model, encoded: Sequence[Sequence[int]], *, pad_id: int, batch_size: int, device):
    """log π(y|x) summed per row, without gradients, in eval mode, in row order (a float32 tensor on `device`)."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch = lm_data.collate(encoded[start:start + batch_size], pad_id).to(device)
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
                out.append(sequence_logprobs(logits, batch.labels).total)
    finally:
        model.train(was_training)
    return torch.cat(out)


def fit(model, params, forget: Sequence[Sequence[int]], retain: Sequence[Sequence[int]] | None, *, objective: Objective,
        config: LossMethodConfig, pad_id: int, device, reference=None, progress: bool = True, label: str = "unlearn") -> Fit:
    """Minimise γ·forget term + α·retain NLL over the trainable `params`; one entry per optimizer step.

    Each micro-batch's forget and retain terms are back-propagated one after the other (one graph
    alive at a time), each divided by its unit count over the whole accumulation group.
    """
    import torch
    from transformers import get_scheduler

    gamma, alpha = config.forget_weight(), config.retain_weight()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = planned_steps(config, len(forget))
    warmup = int(config.warmup) if config.warmup >= 1 else math.ceil(config.warmup * total)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    stream = retain_stream(len(retain), config.seed) if retain else None
    result = Fit([], [], [], set(), set())

    def forward(rows: Sequence[Sequence[int]]):
        batch = lm_data.collate(rows, pad_id).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return sequence_logprobs(logits, batch.labels)

    model.train()
    with _progress(progress) as bar:
        task = bar.add_task(label, total=total, loss="-")
        for epoch in range(config.epochs):
            for group in forget_groups(len(forget), config, epoch):
                if len(result.losses) >= total:
                    break
                retain_group = [[next(stream) for _ in micro] for micro in group] if stream else []
                if objective.per == "token":
                    forget_norm = sum(len(forget[i]) - 1 for micro in group for i in micro)
                else:
                    forget_norm = sum(len(micro) for micro in group)
                retain_norm = sum(len(retain[i]) - 1 for micro in retain_group for i in micro)
                step_forget = step_retain = 0.0
                for position, micro in enumerate(group):
                    lp = forward([forget[i] for i in micro])
                    ref = reference[torch.tensor(micro, device=reference.device)] if objective.reference else None
                    term = gamma * objective.forget_sum(lp, ref, config) / forget_norm
                    term.backward()
                    step_forget += float(term.detach())
                    result.forget_used.update(micro)
                    if retain_group:
                        rows = retain_group[position]
                        term = alpha * nll_sum(forward([retain[i] for i in rows])) / retain_norm
                        term.backward()
                        step_retain += float(term.detach())
                        result.retain_used.update(rows)
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss = step_forget + step_retain
                if not math.isfinite(loss):
                    raise SpungeError(f"training loss became {loss} at step {len(result.losses) + 1}; lower lr")
                result.losses.append(loss)
                result.forget_terms.append(step_forget)
                result.retain_terms.append(step_retain)
                bar.update(task, advance=1, loss=f"{loss:.4f}")
    model.eval()
    return result


# --------------------------------------------------------------------------------------------
# Runs


class _Session:
    """Loads the base model once, on first need, and runs one subset after another on it."""

    def __init__(self, method: str, objective: Objective, resolved: ResolvedModel, config: LossMethodConfig,
                 retain: list[Subset], *, progress: bool):
        self.method, self.objective, self.resolved, self.config = method, objective, resolved, config
        self.retain, self.progress = retain, progress
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self._lm = self._tokenizer = self._retain_encoded = None

    def _load(self):
        if self._lm is None:
            self._tokenizer = load_tokenizer(self.resolved)
            self._lm = load_causal_lm(self.resolved, dtype=self.dtype, device=self.device)
            texts = [text for subset in self.retain for text in subset.texts]
            self._retain_encoded = lm_data.encode_texts(self._tokenizer, texts, max_length=self.config.max_length) if texts else None
        return self._lm, self._tokenizer

    def train(self, subset: Subset, tmp: Path, fp: str) -> None:
        import torch

        config, objective = self.config, self.objective
        lm, tokenizer = self._load()
        pad_id = tokenizer.pad_token_id
        encoded = lm_data.encode_texts(tokenizer, subset.texts, max_length=config.max_length)
        probe = encoded[: config.eval_samples]
        seed_everything(config.seed)
        if config.full:
            names = select_full_params([name for name, _ in lm.named_parameters()], config, self.resolved.ref)
            named = dict(lm.named_parameters())
            originals = {name: named[name].detach().clone() for name in names}
            for param in lm.parameters():
                param.requires_grad_(False)
            params = [named[name].requires_grad_(True) for name in names]
            model = lm
        else:
            from peft import get_peft_model

            model = get_peft_model(lm, _lora_config(config))
            params = [p for p in model.parameters() if p.requires_grad]
        try:
            reference = None
            if objective.reference:
                # LoRA: the base weights are the same tensors, reached with the adapter switched off.
                # full: nothing has trained yet. Either way no second copy of the model.
                if config.full:
                    reference = reference_logprobs(model, encoded, pad_id=pad_id, batch_size=config.batch_size, device=self.device)
                else:
                    with model.disable_adapter():
                        reference = reference_logprobs(model, encoded, pad_id=pad_id, batch_size=config.batch_size,
                                                       device=self.device)
            before = self._probe_nll(model, probe, pad_id)
            started = time.perf_counter()
            result = fit(model, params, encoded, self._retain_encoded if config.retain_weight() > 0 else None,
                         objective=objective, config=config, pad_id=pad_id, device=self.device, reference=reference,
                         progress=self.progress, label=subset.name)
            train_seconds = time.perf_counter() - started
            after = self._probe_nll(model, probe, pad_id)
            if config.full:
                from safetensors.torch import save_file

                tensors = {name: named[name].detach().to("cpu").contiguous() for name in names}
                # One metadata key: safetensors writes a map's keys in random order, and a rerun must be bit-identical.
                save_file(tensors, str(tmp / DELTA_FILE), metadata={"format": "pt"})
                trained = {"updated_tensors": names}
            else:
                adapter_config = model.peft_config["default"]
                adapter_config.base_model_name_or_path = _adapter_base_name(self.resolved)
                model.save_pretrained(tmp, safe_serialization=True)
                trained = {"target_modules": sorted(adapter_config.target_modules), "scaling": config.lora_alpha / config.rank}
            trainable = sum(p.numel() for p in params)
        finally:
            if config.full:
                with torch.no_grad():
                    for name, value in originals.items():
                        named[name].copy_(value)
                        named[name].requires_grad_(False)
            else:
                self._lm = model.unload()  # the base model with its original layers, for the next subset
        retain_rows = len(self._retain_encoded or []) if config.retain_weight() > 0 else 0
        write_provenance(
            tmp, kind=TENSOR_DELTA if config.full else PEFT_ADAPTER, fingerprint=fp, method=self.method,
            base_model=self.resolved.describe(),
            config=config.model_dump(mode="json"),
            data={"forget": [subset.describe() | {"rows_used": len(result.forget_used)}],
                  "retain": [s.describe() for s in self.retain] if retain_rows else [],
                  "retain_rows_used": len(result.retain_used) if retain_rows else 0},
            attribute={"column": subset.column, "value": subset.value} if subset.column else None,
            seed=config.seed,
            result={
                "steps": len(result.losses),
                "steps_planned": planned_steps(config, len(encoded)),
                "losses": result.losses,
                "forget_terms": result.forget_terms,
                "retain_terms": result.retain_terms,
                "first_loss": result.losses[0] if result.losses else None,
                "final_loss": result.losses[-1] if result.losses else None,
                "forget_nll": {"samples": len(probe), "base": before, "trained": after},
                "reference": ("log π_ref per forget row, computed once before training "
                              + ("(base weights)" if config.full else "(adapter disabled)")) if objective.reference else None,
                "tokens": sum(len(ids) for ids in encoded),
                "trainable_params": trainable,
                **trained,
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "train_seconds": round(train_seconds, 3),
            },
        )

    def _probe_nll(self, model, probe, pad_id) -> float | None:
        if not probe:
            return None
        batches = [lm_data.collate(probe[i:i + self.config.batch_size], pad_id) for i in range(0, len(probe), self.config.batch_size)]
        return lm_data.mean_token_nll(model, batches, self.device)


def _check_writable(out: Path) -> None:
    """Fail before training when nothing can be written where `out` would go."""
    probe = out if out.is_dir() else out.parent
    while not probe.exists():
        probe = probe.parent
    try:
        tempfile.TemporaryDirectory(dir=probe, prefix=".spunge-write-check-").cleanup()
    except OSError as exc:
        raise SpungeError(f"cannot write to {out}: {probe} is not writable ({exc.strerror or exc})") from exc


def check_retain(method: str, need: RetainNeed, config: LossMethodConfig, retain: Sequence[Path]) -> None:
    """Retain data exactly when the loss has a retain term (α > 0); the message names the key."""
    weight = config.retain_weight()
    if weight > 0 and not retain:
        hint = ", or set alpha to 0 for the loss without it" if need == "optional" else ""
        raise SpungeError(f"{method}: alpha = {weight} weighs a retain NLL term but no retain data was given; pass --retain{hint}")
    if retain and weight == 0:
        reason = "alpha is 0" if need == "optional" else "its loss has no retain term"
        raise SpungeError(f"{method}: retain data was given but {reason}; drop --retain")


def train_runs(request: TrainRequest, *, method: str, objective: Objective, retain_need: RetainNeed) -> list[RunOutcome]:
    """One run for a data file, or one per subset of a `spunge split` directory (plus `manifest.json`).

    A run whose `spunge.json` carries the same fingerprint (settings, forget and retain data,
    base model, device type, dtype) is skipped; every check happens before anything is written.
    """
    config = request.config
    if not isinstance(config, LossMethodConfig):
        raise TypeError(f"{method}: expected the method's settings object, got {type(config).__name__}")
    if len(request.forget) != 1:
        raise SpungeError(f"{method} takes one forget data file or split directory (got {len(request.forget)})")
    check_retain(method, retain_need, config, request.retain)
    resolved, forget, out = request.model, Path(request.forget[0]), Path(request.out)
    subsets = load_subsets(forget, request.text_column)
    retain = [subset for path in request.retain for subset in load_subsets(path)]
    if any(s.column for s in retain):
        raise SpungeError(f"{method}: --retain takes data files, not a split directory")
    _check_writable(out)
    session = _Session(method, objective, resolved, config, retain, progress=request.progress)
    fingerprints = {
        subset.name: fingerprint(method=method, config=config.fingerprint_part(), data=subset.sha256,
                                 retain=[s.sha256 for s in retain], base_model=resolved.fingerprint,
                                 device=session.device.type, dtype=str(session.dtype))
        for subset in subsets
    }
    split_mode = is_split_dir(forget)
    run_dirs = {subset.name: (out / subset.name if split_mode else out) for subset in subsets}
    if request.force or not all(is_complete(run_dirs[name], fp) for name, fp in fingerprints.items()):
        check_trainable(config, resolved)

    def run_one(subset: Subset, run_dir: Path) -> RunOutcome:
        fp = fingerprints[subset.name]
        return execute_run(run_dir, fp, lambda tmp: session.train(subset, tmp, fp), force=request.force, name=subset.name)

    if split_mode:
        return run_subsets(subsets, out, method=method, run_one=run_one, split_source=forget, force=request.force)
    return [run_one(subsets[0], out)]


# --------------------------------------------------------------------------------------------
# Baseline budget and λ


def match_baseline_for(config_class: type[LossMethodConfig]):
    """`match_baseline` for a config class: the un-split run's max_steps/epochs at the split runs' total."""

    def as_config(value: Any) -> LossMethodConfig:
        return value if isinstance(value, config_class) else config_class.model_validate(dict(value))

    def match_baseline(split_configs: Mapping[str, Any] | Sequence[Any], split_rows: Mapping[str, Any] | Sequence[Any],
                       baseline: Any, retain_rows: int | None = None, corpora: str = "union") -> BaselineBudget:
        """`split_configs` and `split_rows` (each run's forget texts, or their count) by run name or as
        parallel lists; settings or mappings."""
        if not isinstance(split_rows, Mapping):  # parallel lists: name the runs by position
            split_configs = dict(enumerate(split_configs))
            split_rows = dict(enumerate(split_rows))
        per_run = {name: planned_steps(as_config(split_configs[name]), rows, retain_rows) for name, rows in split_rows.items()}
        total = sum(per_run.values())
        cfg = as_config(baseline)
        rows = sum(n if isinstance(n, int) else len(n) for n in split_rows.values())
        per_epoch = planned_steps(cfg.model_copy(update={"epochs": 1, "max_steps": None}), rows)
        changes: dict[str, Any] = {}
        if planned_steps(cfg, rows) != total:
            changes = {"epochs": max(cfg.epochs, math.ceil(total / per_epoch)), "max_steps": total}
        adjusted = config_class.model_validate({**cfg.model_dump(), **changes})
        changed = {k: v for k, v in changes.items() if getattr(cfg, k) != v}
        return BaselineBudget(config=adjusted, record={"split_runs": per_run, "split_total": total,
                                                       "baseline_planned": planned_steps(adjusted, rows), "changed": changed})

    return match_baseline


def output_kind(config: LossMethodConfig) -> OutputKind:
    return TENSOR_DELTA if config.full else PEFT_ADAPTER


def to_model(base: ResolvedModel, run: Path, lam: float | None, out: Path, scratch: Path | None = None) -> Path:
    """A full model directory: base + λ·(the run's update), λ None meaning 1 (the run as trained), through
    the shared converters of `unlearn.outputs` (an adapter's lora_B scaled by λ, or base + λ·(new − base))."""
    run, out = Path(run), Path(out)
    record = read_provenance(run) or {}
    if record.get("kind") not in (PEFT_ADAPTER, TENSOR_DELTA):
        raise SpungeError(f"{run}: not a run of a loss-based unlearning method (spunge.json kind '{record.get('kind')}')")
    expected = (record.get("base_model") or {}).get("fingerprint")
    if expected and expected != base.fingerprint:
        raise SpungeError(f"{run} was trained on a different base model than {base.ref} (fingerprint mismatch)")
    if record["kind"] == TENSOR_DELTA:
        return delta_to_model(base, run, lam, out)
    if lam is None or lam == 1.0:
        return peft_adapter_to_model(base, run, lam, out, out.parent)  # the adapter as trained: nothing to scale
    where = Path(scratch) if scratch is not None else out.parent
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".spunge-scale-", dir=where) as private:
        return peft_adapter_to_model(base, run, lam, out, Path(private))


def loss_method(*, name: str, summary: str, description: str, config_class: type[LossMethodConfig], retain: RetainNeed,
                objective: Objective) -> UnlearningMethod:
    """The registry record of a loss-based method: its own loss and settings, everything else shared."""

    def train(request: TrainRequest) -> list[RunOutcome]:
        return train_runs(request, method=name, objective=objective, retain_need=retain)

    return UnlearningMethod(
        name=name, summary=summary, description=description, config_class=config_class, retain=retain,
        output_kind=output_kind, train=train, planned_steps=planned_steps,
        match_baseline=match_baseline_for(config_class), to_model=to_model,
        default_lambda=lambda config: 1.0, uses_retain=lambda config: config.retain_weight() > 0,
    )


def settings(config_class: type[LossMethodConfig], values: Mapping[str, Any] | None = None) -> LossMethodConfig:
    """A method's settings from a mapping (Python API), errors naming the key."""
    return build_config(config_class, overrides=dict(values or {}))
