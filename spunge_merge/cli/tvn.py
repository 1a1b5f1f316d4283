"""`spunge unlearn tvn` and `spunge negate`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from spunge_merge.config import build_config
from spunge_merge.errors import SpungeError
from spunge_merge.provenance import read_provenance
from spunge_merge.unlearn.tvn import TVNConfig, negate_output, train_tvn

_FIELDS = TVNConfig.model_fields
# The settings options of `unlearn tvn`: typer parameter name -> TVNConfig key.
_SETTINGS = ("rank", "lora_alpha", "lora_dropout", "target_modules", "lr", "epochs", "max_steps", "batch_size",
             "grad_accum", "max_length", "warmup", "lr_scheduler", "weight_decay", "max_grad_norm", "lam", "seed",
             "device", "dtype", "eval_samples")

METHOD_COMMAND = True  # `spunge unlearn` uses this hand-written command (options kept from before the registry)


def _d(name: str):
    """The option's default, read from TVNConfig so --help and the library cannot drift apart."""
    return _FIELDS[name].default


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user typed the option (so it overrides --config) rather than it taking its default.

    Compared by name: typer ships its own copy of click, whose enum is not click's.
    """
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tvn_command(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", "-m", help="Base model: local directory, Hub id, or alias (smollm2-135m)."),
    forget: Path = typer.Option(..., "--forget", help="Forget data: one data file, or a `spunge split` directory "
                                "(then one run per subset in OUT/<value>/ plus OUT/manifest.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: the run directory (one file) or the directory of runs (split)."),
    config_file: Path = typer.Option(None, "--config", help="YAML file of settings, keys as the options below in snake_case "
                                     "(`rank: 16`, `lam: 0.5`); options given on the command line win."),
    text_column: str = typer.Option(None, "--text-column", help="Column holding the text (default: the split's, else 'text')."),
    rank: int = typer.Option(_d("rank"), "--rank", "-r", help="LoRA rank r. Paper: 16."),
    lora_alpha: int = typer.Option(_d("lora_alpha"), "--lora-alpha", help="LoRA alpha; the update is scaled by alpha/r. Paper: 16."),
    lora_dropout: float = typer.Option(_d("lora_dropout"), "--lora-dropout", help="Dropout on the LoRA input. Paper: 0.01."),
    target_modules: str = typer.Option(None, "--target-modules", help="Comma-separated module names (q_proj,v_proj), or all-linear. "
                                       "Default: peft's choice for the architecture (q_proj,v_proj for Llama)."),
    lr: float = typer.Option(_d("lr"), "--lr", help="AdamW learning rate. Paper: 2e-5 on the whole set, 1e-4 on split subsets."),
    epochs: int = typer.Option(_d("epochs"), "--epochs", help="Passes over the forget texts. Paper: 1."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps (a cap on --epochs). "
                                  "Default: no cap."),
    batch_size: int = typer.Option(_d("batch_size"), "--batch-size", help="Texts per micro-batch."),
    grad_accum: int = typer.Option(_d("grad_accum"), "--grad-accum", help="Micro-batches per optimizer step."),
    max_length: int = typer.Option(_d("max_length"), "--max-length", help="Tokens per text, EOS included; longer texts are cut."),
    warmup: float = typer.Option(_d("warmup"), "--warmup", help="Warmup: steps when >= 1, fraction of all steps when < 1."),
    lr_scheduler: str = typer.Option(_d("lr_scheduler"), "--lr-scheduler",
                                     help="cosine, linear, constant or constant_with_warmup. Paper: cosine."),
    weight_decay: float = typer.Option(_d("weight_decay"), "--weight-decay", help="AdamW weight decay."),
    max_grad_norm: float = typer.Option(_d("max_grad_norm"), "--max-grad-norm", help="Gradient clipping norm."),
    lam: float = typer.Option(_d("lam"), "--lambda", help="λ >= 0 in θ_u = θ_init − λ·(alpha/r)·B·A; change it later with "
                              "`spunge negate`. Paper: 1.0."),
    seed: int = typer.Option(_d("seed"), "--seed", help="Seed for LoRA init, dropout and shuffling."),
    device: str = typer.Option(_d("device"), "--device", help="cpu, cuda, cuda:N or auto (cuda when available)."),
    dtype: str = typer.Option(_d("dtype"), "--dtype", help="Base model dtype: auto (bf16 on CUDA, fp32 on CPU), float32, "
                              "bfloat16, float16. LoRA weights stay fp32."),
    eval_samples: int = typer.Option(_d("eval_samples"), "--eval-samples", help="Forget texts scored before and after "
                                     "training and after negation, reported in spunge.json (0 = skip)."),
    force: bool = typer.Option(False, "--force", help="Retrain and replace runs even when an identical one exists."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with the loss."),
) -> None:
    """TVN: fine-tune a LoRA adapter on the forget data, then negate it (lora_B × −λ).

    Each run directory is a peft adapter that already carries the negation
    (PeftModel.from_pretrained(base, DIR), or `base+DIR` in a mergekit recipe), with the
    trained adapter kept in unnegated/ and the settings, data hash and losses in spunge.json.
    An identical rerun is skipped; a rerun that only changes --lambda re-negates without training.
    """
    given = {name: ctx.params[name] for name in _SETTINGS if _given(ctx, name)}
    if given.get("lam", 0) < 0:
        raise SpungeError(f"--lambda must be >= 0 (got {lam}); 0 keeps the base model, 1 subtracts the whole task vector")
    config = build_config(TVNConfig, config_file=config_file, overrides=given)
    outcomes = train_tvn(model, forget, out, config, text_column=text_column, force=force, progress=progress)
    table = Table(title=f"TVN runs in {out}")
    for column in ("run", "status", "steps", "loss first → last", "forget NLL base → trained → negated", "λ"):
        table.add_column(column)
    for outcome in outcomes:
        record = read_provenance(outcome.path) or {}
        result = record.get("result", {})
        nll = result.get("forget_nll", {})
        table.add_row(outcome.name, "already done" if outcome.skipped else "trained", str(result.get("steps", "-")),
                      f"{_fmt(result.get('first_loss'))} → {_fmt(result.get('final_loss'))}",
                      f"{_fmt(nll.get('base'))} → {_fmt(nll.get('trained'))} → {_fmt(nll.get('negated'))}",
                      str(result.get("lambda")))
    Console().print(table)
    typer.echo(f"Wrote {len(outcomes)} TVN run(s) to {out}")


def negate_command(
    path: Path = typer.Argument(..., help="A TVN run directory, or a `spunge unlearn tvn` output holding several runs."),
    lam: float = typer.Option(..., "--lambda", help="New λ >= 0 (paper: 1.0); lora_B is rewritten as −λ × the trained B."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the re-negated run(s) here instead of in place."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
) -> None:
    """Re-negate trained TVN adapters with another λ, without retraining (uses each run's unnegated/)."""
    written = negate_output(path, lam, out, force=force)
    for run in written:
        typer.echo(f"{run}: λ = {lam}")


def register(app: typer.Typer, groups: dict[str, typer.Typer], method) -> None:
    """Called by `cli.unlearn` with this method's registry record."""
    groups["unlearn"].command(method.name, short_help=method.summary)(tvn_command)
    app.command("negate")(negate_command)
