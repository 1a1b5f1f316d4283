"""One RMU run on a model loaded once per session: steering coefficients, the training loop, the run's files."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.models import ResolvedModel
from spunge_merge.provenance import write_provenance
from spunge_merge.runtime import pick_device, pick_dtype, report_step, seed_everything
from spunge_merge.unlearn.partial_model import load_partial_decoder
from spunge_merge.unlearn.rmu.data import Corpus, Plan, _tokenize, make_plan, prepare_tokenizer
from spunge_merge.unlearn.rmu.decoder import SplitDecoder
from spunge_merge.unlearn.rmu.outputs import DELTA_FILE, RUN_KIND
from spunge_merge.unlearn.rmu.selection import Selection
from spunge_merge.unlearn.rmu.settings import RMUConfig, parse_steering
from spunge_merge.unlearn.rmu.trainer import (
    ADAM_BETAS,
    ADAM_EPS,
    Batch,
    NonFiniteLoss,
    RMUTrainer,
    StepRecord,
    activation_norm,
    control_vectors,
)

AUTO_STEERING_BATCHES = 4  # forget batches measured for `auto` (the adaptive-RMU code measures the first one)


@dataclass
class _Batches:
    """Tokenizes the rows a step asks for, each role at its own truncation length."""

    tokenizer: Any
    plan: Plan
    lengths: list[int]  # forget truncation per forget corpus
    retain_max_length: int
    device: Any

    def forget(self, corpus: int, rows: tuple[int, ...]) -> Batch:
        return _tokenize(self.tokenizer, [self.plan.forget[corpus][r] for r in rows], self.lengths[corpus], self.device,
                         ("forget", corpus, rows))

    def retain(self, retain_set: int, rows: tuple[int, ...]) -> Batch:
        return _tokenize(self.tokenizer, [self.plan.retain[retain_set][r] for r in rows], self.retain_max_length, self.device,
                         ("retain", retain_set, rows))


@dataclass
class _Training:
    """What the loop did: one history entry per step, the early stop (if any) and the rows applied updates used."""

    history: list[dict[str, Any]]
    early_stop: dict[str, Any] | None
    used_forget: list[set[int]]
    used_retain: list[set[int]]
    steps_planned: int
    elapsed: float


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
        batches = _Batches(state["tokenizer"], plan, lengths, config.retain_max_length, state["device"])
        coefficients, measured = self._steering_coefficients(trainer, plan, batches, steering)
        controls = [v.to(device=state["device"], dtype=state["dtype"])
                    for v in control_vectors(state["hidden"], coefficients, config.seed)]
        training = self._train(trainer, plan, batches, controls, alphas, name)
        self._write(tmp, forget, retain, training, fingerprint_value=fingerprint_value, attribute=attribute,
                    results={"steering_coeff": coefficients, "steering_mode": [m for m, _ in steering],
                             "auto_mean_activation_norm": measured, "alpha": alphas, "forget_max_length": lengths,
                             "steps_per_epoch": plan.steps_per_epoch})

    def _steering_coefficients(self, trainer: RMUTrainer, plan: Plan, batches: _Batches,
                               steering: list[tuple[str, float]]) -> tuple[list[float], list[float | None]]:
        """c per forget corpus: the fixed value, or β × the mean layer-ℓ norm of its first forget batches (`auto`)."""
        config = self.config
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
                batch = batches.forget(corpus, rows)
                acts = trainer.frozen_activations(batch)
                norms.extend(activation_norm(acts, batch.attention_mask if config.mask_padding else None))
            mean_norm = sum(norms) / len(norms)
            measured.append(mean_norm)
            coefficients.append(value * mean_norm)
        return coefficients, measured

    def _train(self, trainer: RMUTrainer, plan: Plan, batches: _Batches, controls: list, alphas: list[float],
               name: str) -> _Training:
        """The planned steps in order, until the plan ends or the early-stop rule fires."""
        config = self.config
        history: list[dict[str, Any]] = []
        early_stop = None
        recent: list[float] = []
        window = config.early_stop_window

        def should_stop(cosine: float) -> bool:
            recent.append(cosine)
            return (config.early_stop_cosine is not None and len(recent) >= window
                    and sum(recent[-window:]) / window < config.early_stop_cosine)
        total = plan.steps_per_epoch * config.epochs
        used_forget: list[set[int]] = [set() for _ in plan.forget]  # rows fed to an applied update
        used_retain: list[set[int]] = [set() for _ in plan.retain]
        started = time.perf_counter()
        with _progress_bar(self.progress, total, f"RMU {name}") as advance:
            for epoch, step in plan.schedule(config.epochs):
                corpus = step.corpus
                try:
                    record = trainer.step(batches.forget(corpus, step.forget_rows), batches.retain(step.retain_set, step.retain_rows),
                                          controls[corpus], alphas[corpus], should_stop=should_stop)
                except NonFiniteLoss as exc:
                    raise SpungeError(f"RMU loss is not finite at step {len(history) + 1} (epoch {epoch + 1}; {exc}); stopped, "
                                      "nothing was written: lower --lr or --steering-coeff, or use --dtype float32") from None
                history.append({"step": len(history) + 1, "epoch": epoch + 1, "corpus": corpus, "batch": step.batch,
                                "forget_loss": record.forget_loss, "retain_loss": record.retain_loss,
                                "forget_cosine": record.forget_cosine, "updated": not record.stopped})
                advance(record)
                report_step(name, len(history), total)
                if record.stopped:
                    early_stop = {"step": len(history), "epoch": epoch + 1, "forget_cosine": record.forget_cosine,
                                  "mean_forget_cosine": sum(recent[-window:]) / window, "window": window,
                                  "threshold": config.early_stop_cosine}
                    break
                used_forget[corpus].update(step.forget_rows)
                used_retain[step.retain_set].update(step.retain_rows)
        return _Training(history, early_stop, used_forget, used_retain, total, time.perf_counter() - started)

    def _write(self, tmp: Path, forget: list[Corpus], retain: list[Corpus], training: _Training, *, fingerprint_value: str,
               attribute: dict | None, results: dict[str, Any]) -> None:
        """delta.safetensors (the trained tensors under their checkpoint names) and spunge.json."""
        from spunge_merge.tensorfiles import save_tensors

        state, config, history, early_stop = self._state, self.config, training.history, training.early_stop
        trainer: RMUTrainer = state["trainer"]
        updates = sum(1 for h in history if h["updated"])
        tensors = {ckpt: trainer.params[name].detach().to("cpu").contiguous()
                   for ckpt, name in zip(self.selection.tensors, state["param_names"], strict=True)}
        save_tensors(tmp / DELTA_FILE, tensors, {"format": "pt", "spunge_kind": RUN_KIND, "base_fingerprint": self.resolved.fingerprint},
                     cause=f"rmu training, lr {config.lr}, steering_coeff {config.steering_coeff}")
        last = history[-1]
        write_provenance(
            tmp, kind=RUN_KIND, fingerprint=fingerprint_value, method="rmu",
            base_model=self.resolved.describe(),
            config=config.model_dump(),
            data={"forget": [c.subset.describe() | {"rows_available": len(c.texts), "rows_used": len(used)}
                             for c, used in zip(forget, training.used_forget, strict=True)],
                  "retain": [c.subset.describe() | {"rows_available": len(c.texts), "rows_used": len(used)}
                             for c, used in zip(retain, training.used_retain, strict=True)],
                  "order": config.data_order,
                  "rows_used_rule": "distinct rows fed to at least one applied update (rows_available: after --min-chars)"},
            attribute=attribute,
            result={
                "steps": updates, "steps_per_epoch": results["steps_per_epoch"], "steps_planned": training.steps_planned,
                "epochs_run": history[-1]["epoch"], "early_stop": early_stop, "early_stop_step": early_stop["step"] if early_stop else None,
                "layer": config.layer, "first_updated_layer": self.selection.first_layer,
                "updated_tensors": list(self.selection.tensors),
                "steering_coeff": results["steering_coeff"], "steering_mode": results["steering_mode"],
                "auto_mean_activation_norm": results["auto_mean_activation_norm"], "alpha": results["alpha"],
                "forget_max_length": results["forget_max_length"],
                "control_vector_seed": config.seed,
                "control_vector_generator": "torch.Generator(cpu).manual_seed(seed); torch.rand(1,1,hidden) per corpus",
                "optimizer": {"name": "AdamW", "lr": config.lr, "betas": list(ADAM_BETAS), "eps": ADAM_EPS, "weight_decay": 0.0},
                "device": str(state["device"]), "dtype": str(state["dtype"]).replace("torch.", ""),
                "final": {"forget_loss": last["forget_loss"], "retain_loss": last["retain_loss"], "forget_cosine": last["forget_cosine"]},
                "history": history, "elapsed_s": round(training.elapsed, 3),
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

