"""TVN's training: fine-tune one LoRA adapter per forget subset on a base model loaded once, then negate it."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spunge_merge.config import build_config
from spunge_merge.data.loading import Subset, is_split_dir, load_subsets
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_write_bytes, copy_file
from spunge_merge.models import ResolvedModel, load_tokenizer, resolve_model
from spunge_merge.provenance import fingerprint, is_complete, read_provenance, write_provenance
from spunge_merge.runs import RunOutcome, execute_run, run_subsets
from spunge_merge.runtime import PEFT_WRAP_WARNINGS, pick_device, pick_dtype, quiet_dependency, report_step, seed_everything
from spunge_merge.unlearn import lm_data
from spunge_merge.unlearn.lora import adapter_base_name, check_quantize, check_target_modules, load_training_base, lora_config
from spunge_merge.unlearn.tvn.negation import _write_negated, negate_run
from spunge_merge.unlearn.tvn.settings import _LORA_B, ADAPTER_CONFIG, ADAPTER_WEIGHTS, KIND, METHOD, UNNEGATED, TVNConfig

log = logging.getLogger("spunge_merge.unlearn.tvn")  # the name it had as one module


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _warmup_steps(config: TVNConfig, total: int) -> int:
    return int(config.warmup) if config.warmup >= 1 else math.ceil(config.warmup * total)


def fit_lora(peft_model, encoded: list[list[int]], *, pad_id: int, config: TVNConfig, device, progress: bool = True,
             label: str = "tvn", rows_used: set[int] | None = None) -> list[float]:
    """Plain causal-LM fine-tune of the trainable (LoRA) weights; returns the loss of every optimizer step.

    Each step's loss is the token-weighted mean NLL over its accumulation group, and the
    gradient is that of the same quantity, so grad_accum=k on batch b equals one batch of k·b
    (up to padding). Every epoch reshuffles the texts with `lm_data.epoch_seed(config.seed, epoch)`;
    `rows_used`, when given, receives the index of every text fed to an optimizer step.
    """
    import torch
    from transformers import get_scheduler

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total = lm_data.optimizer_steps(len(encoded), batch_size=config.batch_size, grad_accum=config.grad_accum,
                                    epochs=config.epochs, max_steps=config.max_steps)
    scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=_warmup_steps(config, total),
                              num_training_steps=total)
    losses: list[float] = []
    peft_model.train()
    with _progress(progress) as bar:
        task = bar.add_task(label, total=total, loss="-")
        for epoch in range(config.epochs):
            micro = lm_data.batches(encoded, batch_size=config.batch_size, pad_id=pad_id,
                                    seed=lm_data.epoch_seed(config.seed, epoch))
            for group in lm_data.accumulation_groups(micro, config.grad_accum):
                if len(losses) >= total:
                    break
                group_tokens = max(sum(batch.tokens for batch in group), 1)
                step_loss = 0.0
                for batch in group:
                    loss = lm_data.sum_token_nll(peft_model, batch.to(device)) / group_tokens
                    loss.backward()
                    step_loss += float(loss.detach())
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if not math.isfinite(step_loss):
                    raise SpungeError(f"training loss became {step_loss} at step {len(losses) + 1}; lower --lr")
                losses.append(step_loss)
                if rows_used is not None:
                    rows_used.update(row for batch in group for row in batch.rows)
                bar.update(task, advance=1, loss=f"{step_loss:.4f}")
                report_step(label, len(losses), total)
    peft_model.eval()
    return losses


def _negated_nll(peft_model, eval_batches, lam: float, device) -> float:
    """Forget NLL with lora_B temporarily scaled by −λ (the model the saved adapter gives)."""
    import torch

    b_params = [p for name, p in peft_model.named_parameters() if _LORA_B.search(name)]
    saved = [p.detach().clone() for p in b_params]
    try:
        with torch.no_grad():
            for p in b_params:
                p.mul_(-lam)
        return lm_data.mean_token_nll(peft_model, eval_batches, device)
    finally:
        with torch.no_grad():
            for p, original in zip(b_params, saved, strict=True):
                p.copy_(original)



class _Trainer:
    """Loads the base model once, on first need, and trains one adapter per subset on it."""

    def __init__(self, resolved: ResolvedModel, config: TVNConfig, *, progress: bool):
        self.resolved, self.config, self.progress = resolved, config, progress
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self._lm = None
        self._tokenizer = None

    def _load(self):
        if self._lm is None:
            self._tokenizer = load_tokenizer(self.resolved)
            self._lm = load_training_base(self.resolved, self.config, dtype=self.dtype, device=self.device)
        return self._lm, self._tokenizer

    def train(self, subset: Subset, tmp: Path, fp: str) -> None:
        from peft import get_peft_model

        config = self.config
        lm, tokenizer = self._load()
        encoded = lm_data.encode_texts(tokenizer, subset.texts, max_length=config.max_length)
        eval_batches = lm_data.batches(encoded[: config.eval_samples], batch_size=config.batch_size,
                                       pad_id=tokenizer.pad_token_id) if config.eval_samples else []
        seed_everything(config.seed)
        with quiet_dependency(PEFT_WRAP_WARNINGS):
            peft_model = get_peft_model(lm, lora_config(config))
        try:
            started = time.perf_counter()
            before = lm_data.mean_token_nll(peft_model, eval_batches, self.device) if eval_batches else None
            rows_used: set[int] = set()
            losses = fit_lora(peft_model, encoded, pad_id=tokenizer.pad_token_id, config=config, device=self.device,
                              progress=self.progress, label=subset.name, rows_used=rows_used)
            train_seconds = time.perf_counter() - started
            after = lm_data.mean_token_nll(peft_model, eval_batches, self.device) if eval_batches else None
            negated = _negated_nll(peft_model, eval_batches, config.lam, self.device) if eval_batches else None
            adapter_config = peft_model.peft_config["default"]
            adapter_config.base_model_name_or_path = adapter_base_name(self.resolved)
            peft_model.save_pretrained(tmp / UNNEGATED, safe_serialization=True)
            weights = tmp / UNNEGATED / ADAPTER_WEIGHTS
            atomic_write_bytes(weights, weights.read_bytes())  # peft's file is 0600 (safetensors); give it the usual mode
            trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
            target_modules = sorted(adapter_config.target_modules)
        finally:
            self._lm = peft_model.unload()  # the base model with its original layers, for the next subset
        copy_file(tmp / UNNEGATED / ADAPTER_CONFIG, tmp / ADAPTER_CONFIG)
        _write_negated(tmp / UNNEGATED, tmp, config.lam)
        write_provenance(
            tmp, kind=KIND, fingerprint=fp, method=METHOD,
            base_model=self.resolved.describe(),
            config=config.model_dump(mode="json"),
            data=subset.describe() | {"rows_available": len(encoded), "rows_used": len(rows_used), "order": "shuffled",
                                      "rows_used_rule": "distinct rows fed to at least one optimizer step"},
            attribute={"column": subset.column, "value": subset.value} if subset.column else None,
            seed=config.seed,
            result={
                "lambda": config.lam,
                "steps": len(losses),
                "losses": losses,
                "first_loss": losses[0] if losses else None,
                "final_loss": losses[-1] if losses else None,
                "forget_nll": {"samples": len(encoded[: config.eval_samples]), "base": before, "trained": after,
                               "negated": negated},
                "tokens": sum(len(ids) for ids in encoded),
                "target_modules": target_modules,
                "trainable_params": trainable,
                "scaling": config.lora_alpha / config.rank,
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "train_seconds": round(train_seconds, 3),
            },
        )


def _check_writable(out: Path) -> None:
    """Fail before training when nothing can be written where `out` would go."""
    probe = out if out.is_dir() else out.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise SpungeError(f"cannot write to {out}: {probe} is a file, not a directory")
    try:
        tempfile.TemporaryDirectory(dir=probe, prefix=".spunge-write-check-").cleanup()
    except OSError as exc:
        raise SpungeError(f"cannot write to {out}: {probe} is not writable ({exc.strerror or exc})") from exc
    if not os.access(probe, os.W_OK):
        raise SpungeError(f"cannot write to {out}: {probe} is not writable")


def _as_config(config: TVNConfig | Mapping[str, Any] | None) -> TVNConfig:
    if isinstance(config, TVNConfig):
        return config
    return build_config(TVNConfig, overrides=dict(config or {}))


def train_tvn(
    model: str | ResolvedModel,
    forget: str | Path,
    out: str | Path,
    config: TVNConfig | Mapping[str, Any] | None = None,
    *,
    text_column: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[RunOutcome]:
    """Train and negate one LoRA adapter per forget subset.

    `forget` is a data file (one run, written to `out`) or a `spunge split` directory (one run
    per subset in `out/<name>/` plus `out/manifest.json`). A run whose `spunge.json` carries the
    same fingerprint (settings, data sha256, base model) is skipped; if only λ differs it is
    re-negated from `unnegated/` instead of retrained.
    """
    config = _as_config(config)
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    forget, out = Path(forget), Path(out)
    subsets = load_subsets(forget, text_column)
    _check_writable(out)
    trainer = _Trainer(resolved, config, progress=progress)
    fingerprints = {
        subset.name: fingerprint(method=METHOD, config=config.training_fingerprint_part(), data=subset.sha256,
                                 data_order="epoch_seed",  # per-epoch order from lm_data.epoch_seed (was seed + epoch)
                                 base_model=resolved.fingerprint, device=trainer.device.type,
                                 dtype=str(trainer.dtype))
        for subset in subsets
    }
    split_mode = is_split_dir(forget)
    run_dirs = {subset.name: (out / subset.name if split_mode else out) for subset in subsets}
    if force or not all(is_complete(run_dirs[name], fp) for name, fp in fingerprints.items()):
        check_quantize(config)
        check_target_modules(config, resolved)

    def run_one(subset: Subset, run_dir: Path) -> RunOutcome:
        fp = fingerprints[subset.name]
        outcome = execute_run(run_dir, fp, lambda tmp: trainer.train(subset, tmp, fp), force=force, name=subset.name)
        if outcome.skipped:
            previous = (read_provenance(run_dir) or {}).get("result", {}).get("lambda")
            if previous != config.lam:
                log.info("%s: trained adapter reused, re-negated with λ=%s (was %s)", subset.name, config.lam, previous)
                negate_run(run_dir, config.lam)
        return outcome

    if split_mode:
        return run_subsets(subsets, out, method=METHOD, run_one=run_one, split_source=forget, force=force)
    return [run_one(subsets[0], out)]
