"""One loss-based run on a base model loaded once per session: the trainable weights, the fit, the run's files."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spunge_merge.data.loading import Subset
from spunge_merge.models import ResolvedModel, load_tokenizer
from spunge_merge.provenance import write_provenance
from spunge_merge.runtime import PEFT_WRAP_WARNINGS, pick_device, pick_dtype, quiet_dependency, seed_everything
from spunge_merge.tensorfiles import refuse_non_finite_files
from spunge_merge.unlearn import lm_data
from spunge_merge.unlearn.lora import adapter_base_name, load_training_base, lora_config
from spunge_merge.unlearn.loss_training.config import PEFT_ADAPTER, TENSOR_DELTA, LossMethodConfig, Objective
from spunge_merge.unlearn.loss_training.loop import Fit, fit, reference_logprobs
from spunge_merge.unlearn.loss_training.order import planned_steps
from spunge_merge.unlearn.loss_training.weights import select_full_params

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DELTA_FILE = "delta.safetensors"


@dataclass
class _Trainable:
    """The model a run trains and its trainable parameters; for `full`, the chosen tensors' names and values before training."""

    model: Any
    params: list
    names: list[str] = field(default_factory=list)
    named: dict[str, Any] = field(default_factory=dict)
    originals: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Measured:
    """What one run's training produced, for its spunge.json."""

    result: Fit
    before: float | None
    after: float | None
    trained: dict[str, Any]
    trainable: int
    train_seconds: float


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
            self._lm = load_training_base(self.resolved, self.config, dtype=self.dtype, device=self.device)
            self._retain_encoded = [ids for subset in self.retain for ids in self.encode(subset, retain=True)] or None
        return self._lm, self._tokenizer

    def encode(self, subset: Subset, *, retain: bool = False) -> list:
        """A subset's rows as token ids: whole texts, or (prompt_column/answer_column) prompt + answer with the
        prompt masked; a retain file is read as pairs only when it holds both columns."""
        config = self.config
        if config.answer_column and (not retain or has_pair_columns(subset.source, config)):
            pairs = lm_data.read_pairs(subset.source, config.prompt_column, config.answer_column)
            return lm_data.encode_pairs(self._tokenizer, pairs, max_length=config.max_length)
        return lm_data.encode_texts(self._tokenizer, subset.texts, max_length=config.max_length)


    def train(self, subset: Subset, tmp: Path, fp: str) -> None:
        config = self.config
        lm, tokenizer = self._load()
        pad_id = tokenizer.pad_token_id
        encoded = self.encode(subset)
        probe = encoded[: config.eval_samples]
        seed_everything(config.seed)
        weights = self._trainable(lm)
        try:
            measured = self._fit(weights, encoded, probe, pad_id, tmp, label=subset.name)
        finally:
            self._restore(weights)
        self._record(tmp, subset, fp, encoded, probe, measured)

    def _trainable(self, lm) -> _Trainable:
        """`full`: the chosen tensors of `lm` itself, all others frozen; else a fresh LoRA adapter on it."""
        config = self.config
        if config.full:
            names = select_full_params([name for name, _ in lm.named_parameters()], config, self.resolved.ref)
            named = dict(lm.named_parameters())
            originals = {name: named[name].detach().clone() for name in names}
            for param in lm.parameters():
                param.requires_grad_(False)
            params = [named[name].requires_grad_(True) for name in names]
            return _Trainable(lm, params, names, named, originals)
        from peft import get_peft_model

        with quiet_dependency(PEFT_WRAP_WARNINGS):
            model = get_peft_model(lm, lora_config(config))
        return _Trainable(model, [p for p in model.parameters() if p.requires_grad])

    def _reference(self, model, encoded, pad_id):
        """NPO's log π_ref per forget row. LoRA: the base weights are the same tensors, reached with the adapter
        switched off. full: nothing has trained yet. Either way no second copy of the model."""
        config = self.config
        if config.full:
            return reference_logprobs(model, encoded, pad_id=pad_id, batch_size=config.batch_size, device=self.device)
        with model.disable_adapter():
            return reference_logprobs(model, encoded, pad_id=pad_id, batch_size=config.batch_size, device=self.device)

    @contextmanager
    def _base_weights(self, weights: _Trainable):
        """The model at its base weights for the span of the block (KL retain): LoRA's adapter off, or, with
        `full`, the trained tensors swapped for their values before training and back (no second model)."""
        import torch

        if not self.config.full:
            with weights.model.disable_adapter():
                yield
            return
        trained = {name: weights.named[name].detach().clone() for name in weights.names}
        with torch.no_grad():
            for name in weights.names:
                weights.named[name].copy_(weights.originals[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name in weights.names:
                    weights.named[name].copy_(trained[name])

    def _fit(self, weights: _Trainable, encoded, probe, pad_id, tmp: Path, *, label: str) -> _Measured:
        """Train, probe the forget NLL before and after, and save the update (delta.safetensors or the adapter)."""
        config, objective, model = self.config, self.objective, weights.model
        reference = self._reference(model, encoded, pad_id) if objective.reference else None
        before = self._probe_nll(model, probe, pad_id)
        started = time.perf_counter()
        result = fit(model, weights.params, encoded, self._retain_encoded if config.retain_weight() > 0 else None,
                     objective=objective, config=config, pad_id=pad_id, device=self.device, reference=reference,
                     progress=self.progress, label=label, base_weights=lambda: self._base_weights(weights))
        train_seconds = time.perf_counter() - started
        after = self._probe_nll(model, probe, pad_id)
        if config.full:
            from spunge_merge.tensorfiles import save_tensors

            tensors = {name: weights.named[name].detach().to("cpu").contiguous() for name in weights.names}
            save_tensors(tmp / DELTA_FILE, tensors, {"format": "pt"}, cause=self._cause())
            trained = {"updated_tensors": weights.names}
        else:
            adapter_config = model.peft_config["default"]
            adapter_config.base_model_name_or_path = adapter_base_name(self.resolved)
            model.save_pretrained(tmp, safe_serialization=True)
            refuse_non_finite_files(tmp, self._cause())
            trained = {"target_modules": sorted(adapter_config.target_modules), "scaling": config.lora_alpha / config.rank}
        return _Measured(result, before, after, trained, sum(p.numel() for p in weights.params), train_seconds)

    def _cause(self) -> str:
        """The settings a non-finite trained weight is blamed on (`refuse_non_finite`)."""
        return f"{self.method} training, lr {self.config.lr}"

    def _restore(self, weights: _Trainable) -> None:
        """The base model as loaded, for the next subset: `full` tensors put back, or the adapter unloaded."""
        import torch

        if self.config.full:
            with torch.no_grad():
                for name, value in weights.originals.items():
                    weights.named[name].copy_(value)
                    weights.named[name].requires_grad_(False)
        else:
            self._lm = weights.model.unload()  # the base model with its original layers, for the next subset

    def _record(self, tmp: Path, subset: Subset, fp: str, encoded, probe, measured: _Measured) -> None:
        config, objective, result = self.config, self.objective, measured.result
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
                "forget_nll": {"samples": len(probe), "base": measured.before, "trained": measured.after},
                "reference": ("log π_ref per forget row, computed once before training "
                              + ("(base weights)" if config.full else "(adapter disabled)")) if objective.reference else None,
                "tokens": sum(len(ids) for ids in encoded),
                "target_tokens": sum(lm_data.predicted_tokens(ids) for ids in encoded),
                "form": "question/answer (loss on answer tokens)" if config.answer_column else "text",
                "retain_form": self._retain_form() if retain_rows else None,
                "trainable_params": measured.trainable,
                **measured.trained,
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "train_seconds": round(measured.train_seconds, 3),
            },
        )

    def _retain_form(self) -> str:
        """How the retain rows were read (`encode`): as pairs only where a retain file holds both columns."""
        config = self.config
        paired = [bool(config.answer_column) and has_pair_columns(s.source, config) for s in self.retain]
        if all(paired):
            return "question/answer (retain term on answer tokens)"
        return "question/answer in the files holding both columns, text in the others" if any(paired) else "text"

    def _probe_nll(self, model, probe, pad_id) -> float | None:
        if not probe:
            return None
        batches = [lm_data.collate(probe[i:i + self.config.batch_size], pad_id) for i in range(0, len(probe), self.config.batch_size)]
        return lm_data.mean_token_nll(model, batches, self.device)



def has_pair_columns(source: Path, config: LossMethodConfig) -> bool:
    """True when the table at `source` holds both the prompt and the answer column."""
    from spunge_merge.data.loading import load_table

    columns = load_table(source).column_names
    return config.prompt_column in columns and config.answer_column in columns
