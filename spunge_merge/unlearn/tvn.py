"""TVN, task vector negation (Ilharco et al. 2023) with LoRA (Zhang et al. 2023).

Fine-tune a LoRA adapter on the forget texts, then subtract it from the base model:
θ_u = θ_init − λ·ΔW with ΔW = (lora_alpha / r)·B·A. The subtraction is stored *in the
adapter*: lora_B is scaled by −λ, so the result is an ordinary peft adapter that
`PeftModel.from_pretrained(base, DIR)`, `merge_and_unload()` and mergekit's `base+adapter`
syntax all apply unchanged, and no full model copy is written per subset. The trained
(un-negated) adapter is kept in `unnegated/` so `negate_run` can pick another λ without
retraining.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from spunge_merge.config import FrozenConfig, Lambda, build_config, check_lambda
from spunge_merge.data.loading import Subset, is_split_dir, load_subsets
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, atomic_write_bytes, copy_file, write_json
from spunge_merge.models import ALIASES, ResolvedModel, check_safetensors, load_causal_lm, load_tokenizer, resolve_model
from spunge_merge.provenance import PROVENANCE_FILE, fingerprint, is_complete, read_provenance, write_provenance
from spunge_merge.runs import RUNS_MANIFEST, RunOutcome, execute_run, list_runs, run_subsets
from spunge_merge.runtime import pick_device, pick_dtype, seed_everything
from spunge_merge.unlearn import budget, lm_data, registry
from spunge_merge.unlearn.outputs import apply_adapter
from spunge_merge.unlearn.registry import TrainRequest, UnlearningMethod

log = logging.getLogger(__name__)

KIND = "tvn-adapter"
METHOD = "tvn"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
UNNEGATED = "unnegated"
_LORA_B = re.compile(r"\.lora_(embedding_)?B(\.|$)")
# Settings that do not change the trained adapter: a rerun that differs only in these reuses it.
_NOT_IN_FINGERPRINT = frozenset({"lam", "eval_samples", "device", "dtype"})


def target_module_names(value: Any) -> Any:
    """LoRA target modules as people write them: `q_proj,v_proj` (CLI, YAML) or a list, or `all-linear`.
    Shared by every LoRA-based method's settings."""
    if isinstance(value, str) and value.strip().lower() != "all-linear":
        names = [name.strip() for name in value.split(",") if name.strip()]
        if not names:
            raise ValueError("give module names separated by commas, or all-linear")
        return names
    if isinstance(value, str):
        return "all-linear"
    if isinstance(value, list) and not value:
        raise ValueError("empty list; leave it unset for peft's default")
    return value


class TVNConfig(FrozenConfig):
    """TVN hyperparameters; defaults follow the paper (Kadhe et al. 2024) where it gives a value."""

    rank: int = Field(16, ge=1, description="LoRA rank r. Paper: 16.", json_schema_extra={"cli_flags": ["--rank", "-r"]})
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha; the update is scaled by alpha/r. Paper: 16.")
    lora_dropout: float = Field(0.01, ge=0.0, lt=1.0, description="Dropout on the LoRA input. Paper: 0.01.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="Module names to adapt (q_proj,v_proj), or all-linear; unset = peft's default for the architecture "
                          "(q_proj, v_proj for Llama).")
    lr: float = Field(2e-5, gt=0.0, description="AdamW learning rate. Paper: 2e-5 on the whole set, 1e-4 on split subsets.")
    epochs: int = Field(1, ge=1, description="Passes over the forget texts. Paper: 1.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (None = all epochs).")
    batch_size: int = Field(8, ge=1, description="Texts per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(128, ge=2, description="Tokens per text, EOS included; longer texts are truncated.")
    warmup: float = Field(0.0, ge=0.0, description="Warmup: steps when >= 1, fraction of all steps when < 1.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule (transformers.get_scheduler).")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on the LoRA weights.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping norm (None = no clipping).")
    lam: Lambda = Field(1.0, description="λ in θ_u = θ_init − λ·(alpha/r)·B·A: how much of the task vector is subtracted; "
                        "change it later with `spunge negate`. Paper: 1.0.", json_schema_extra={"cli_flags": ["--lambda"]})
    seed: int = Field(42, description="Seed for LoRA init, dropout and shuffling.")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto.")
    dtype: str = Field("auto", description="Base model dtype: auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    eval_samples: int = Field(64, ge=0, description="Forget texts scored before/after training and after negation (0 = skip).")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        return target_module_names(value)

    def training_fingerprint_part(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}


# --------------------------------------------------------------------------------------------
# Target modules: checked on a weightless (meta-device) copy of the model before any training.


def _lora_capable_modules(resolved: ResolvedModel) -> tuple[str, list[str]]:
    """(model_type, names of the modules LoRA can adapt: linear, embedding, conv)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    try:
        config = AutoConfig.from_pretrained(resolved.path)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise SpungeError(f"{resolved.ref}: not a causal language model transformers can build ({exc})") from exc
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    return config.model_type, [name for name, module in skeleton.named_modules() if isinstance(module, kinds)]


def check_target_modules(config: TVNConfig, resolved: ResolvedModel) -> None:
    """Every requested target module must match a LoRA-capable module (peft's own matching rule)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type, keys = _lora_capable_modules(resolved)
    available = ", ".join(sorted({key.rsplit(".", 1)[-1] for key in keys}))
    if config.target_modules is None:
        if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise SpungeError(f"peft has no default LoRA target modules for model type '{model_type}'; "
                              f"pass --target-modules (modules: {available})")
        return
    if config.target_modules == "all-linear":
        return
    for name in config.target_modules:
        probe = LoraConfig(target_modules=[name])
        if not any(check_target_module_exists(probe, key) for key in keys):
            raise SpungeError(f"target module '{name}' matches no linear or embedding layer of {resolved.ref} "
                              f"(modules: {available})")


def _lora_config(config: TVNConfig):
    from peft import LoraConfig

    return LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, bias="none", task_type="CAUSAL_LM")


# --------------------------------------------------------------------------------------------
# Negation: a pure rewrite of the adapter weights.


def negated_tensors(unnegated: Mapping[str, Any], lam: float) -> dict[str, Any]:
    """The adapter's tensors with every lora_B (and lora_embedding_B) multiplied by −λ."""
    import torch

    lam = check_lambda(lam)
    out, scaled = {}, 0
    for key, tensor in unnegated.items():
        if _LORA_B.search(key):
            out[key] = (tensor.to(torch.float32) * -float(lam)).to(tensor.dtype).contiguous()
            scaled += 1
        else:
            out[key] = tensor
    if not scaled:
        raise SpungeError("the adapter holds no lora_B tensors: not a LoRA adapter")
    return out


def _write_negated(unnegated_dir: Path, target_dir: Path, lam: float) -> None:
    from safetensors.torch import load_file, save

    source = unnegated_dir / ADAPTER_WEIGHTS
    if not source.is_file():
        raise SpungeError(f"{source}: missing; the un-negated adapter is needed to negate again")
    check_safetensors(source)
    # Bytes through atomic_write_bytes: safetensors' save_file creates files with mode 0600.
    atomic_write_bytes(target_dir / ADAPTER_WEIGHTS, save(negated_tensors(load_file(source), lam), metadata={"format": "pt"}))


def _copy_tree_except(src: Path, dst: Path, skip: set[Path]) -> None:
    """Copy (a reflink where possible) every file of `src` into `dst`, except the relative paths in `skip`:
    never a hard link, so rewriting the new run cannot change the one it came from."""
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if relative in skip:
            continue
        if path.is_dir():
            (dst / relative).mkdir(parents=True, exist_ok=True)
        else:
            (dst / relative).parent.mkdir(parents=True, exist_ok=True)
            copy_file(path, dst / relative)


def negate_run(run_dir: str | Path, lam: float, out: str | Path | None = None, *, force: bool = False) -> Path:
    """Re-negate one TVN run with a new λ from its `unnegated/` adapter (in place, or into `out`).

    The new directory is assembled beside the target and renamed over it, so a reader never
    sees an adapter whose weights and `spunge.json` disagree on λ.
    """
    run_dir = Path(run_dir)
    record = read_provenance(run_dir)
    if record is None or record.get("kind") != KIND:
        raise SpungeError(f"{run_dir} is not a TVN run (no spunge.json of kind '{KIND}')")
    lam = check_lambda(lam)
    if not (run_dir / UNNEGATED / ADAPTER_WEIGHTS).is_file():
        raise SpungeError(f"{run_dir / UNNEGATED / ADAPTER_WEIGHTS}: missing; cannot negate again without it")
    target = Path(out) if out is not None else run_dir
    in_place = target.resolve() == run_dir.resolve()
    with atomic_output_dir(target, force=in_place or force) as tmp:
        _copy_tree_except(run_dir, tmp, {Path(ADAPTER_WEIGHTS), Path(PROVENANCE_FILE)})
        _write_negated(run_dir / UNNEGATED, tmp, lam)
        record["result"] = {**record.get("result", {}), "lambda": float(lam)}
        record["config"] = {**record.get("config", {}), "lam": float(lam)}
        if not in_place:
            record["negated_from"] = str(run_dir)
        write_json(tmp / PROVENANCE_FILE, record)
    return target


def negate_output(path: str | Path, lam: float, out: str | Path | None = None, *, force: bool = False) -> list[Path]:
    """`negate_run` on a single run, or on every run of an unlearn output (keeping its manifest)."""
    path = Path(path)
    if not path.is_dir():
        raise SpungeError(f"{path}: no such run directory")
    lam = check_lambda(lam)
    runs = list_runs(path)
    if runs == [path]:
        return [negate_run(path, lam, out, force=force)]
    for run in runs:  # check them all before rewriting any
        record = read_provenance(run)
        if record is None or record.get("kind") != KIND:
            raise SpungeError(f"{run} is not a TVN run (no spunge.json of kind '{KIND}')")
    if out is None:
        return [negate_run(run, lam) for run in runs]
    out = Path(out)
    with atomic_output_dir(out, force=force) as tmp:
        for run in runs:
            negate_run(run, lam, tmp / run.name)
        copy_file(path / RUNS_MANIFEST, tmp / RUNS_MANIFEST)
    return [out / run.name for run in runs]


# --------------------------------------------------------------------------------------------
# Training


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


def _adapter_base_name(resolved: ResolvedModel) -> str:
    """What adapter_config.json names as the base: the Hub id when the user gave one, else the local path."""
    is_local = resolved.ref in ALIASES or Path(resolved.ref).expanduser().exists()
    return str(resolved.path) if is_local else resolved.ref


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
            self._lm = load_causal_lm(self.resolved, dtype=self.dtype, device=self.device)
        return self._lm, self._tokenizer

    def train(self, subset: Subset, tmp: Path, fp: str) -> None:
        from peft import get_peft_model

        config = self.config
        lm, tokenizer = self._load()
        encoded = lm_data.encode_texts(tokenizer, subset.texts, max_length=config.max_length)
        eval_batches = lm_data.batches(encoded[: config.eval_samples], batch_size=config.batch_size,
                                       pad_id=tokenizer.pad_token_id) if config.eval_samples else []
        seed_everything(config.seed)
        peft_model = get_peft_model(lm, _lora_config(config))
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
            adapter_config.base_model_name_or_path = _adapter_base_name(self.resolved)
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


# --------------------------------------------------------------------------------------------
# The method's record: what the CLI, the pipeline, the baseline and the model card know of TVN.


def _train_request(request: TrainRequest) -> list[RunOutcome]:
    if len(request.forget) != 1:
        raise SpungeError(f"TVN takes one forget data file or split directory, got {len(request.forget)}")
    return train_tvn(request.model, request.forget[0], request.out, request.config, text_column=request.text_column,
                     force=request.force, progress=request.progress)


def run_to_model(base: ResolvedModel, run: Path, lam: float | None, out: Path, scratch: Path) -> Path:
    """The trained adapter negated at λ (a copy in `scratch`; None: as the run holds it), merged into the base."""
    adapter = Path(run) if lam is None else negate_run(run, lam, out=scratch, force=True)
    return apply_adapter(base, adapter, Path(out))


registry.register(UnlearningMethod(
    name=METHOD,
    summary="Task vector negation: fine-tune a LoRA adapter on the forget text, then subtract it (× λ).",
    description=(
        "**Task vector negation (TVN)**: a LoRA adapter is fine-tuned on the subset's text (learning to produce it), "
        "then the adapter is negated (its update scaled by −λ) and added to the base model, which moves the model "
        "away from that behaviour (Ilharco et al., 2023)."
    ),
    config_class=TVNConfig,
    retain="none",
    output_kind=lambda config: "peft-adapter",
    train=_train_request,
    planned_steps=budget.planned_steps,
    match_baseline=functools.partial(budget.match_steps, TVNConfig),
    to_model=run_to_model,
    default_lambda=lambda config: config.lam,
    baseline_corpora=("union",),
))
