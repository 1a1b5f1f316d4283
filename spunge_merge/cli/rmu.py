"""`spunge unlearn rmu` and `spunge materialize`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from spunge_merge.config import build_config

_LISTS = "One value for every forget corpus, or a comma-separated list with one per --forget corpus."

METHOD_COMMAND = True  # `spunge unlearn` uses this hand-written command (options kept from before the registry)


def _split_list(value: str | None):
    """'6.5' → '6.5'; '6.5,20' → ['6.5', '20'] (pydantic converts and validates the items)."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items if len(items) > 1 else (items[0] if items else value)


def rmu_command(
    model: str = typer.Option(..., "--model", help="Base model: local directory, Hub id, or alias (smollm2-135m)."),
    forget: list[str] = typer.Option(..., "--forget", help="Forget data. A `spunge split` directory runs one RMU per subset "
                                     "(DIR/<value>/). Several data files (repeat --forget) run ONE RMU alternating a batch of "
                                     "each, one control vector per corpus: the reference's bio+cyber mode, the un-split baseline."),
    retain: list[str] = typer.Option(..., "--retain", help="Retain data file (e.g. ../shared/data/retain/wikitext2_raw_test.txt, "
                                     "one text per line); repeat to give one per --forget corpus."),
    out: Path = typer.Option(..., "--out", help="Output directory: delta.safetensors + spunge.json, or one such dir per subset."),
    config_file: Path = typer.Option(None, "--config", help="YAML file of these settings (keys as below with underscores, "
                                     "e.g. recipes/rmu-smollm2.yaml); options given here win."),
    layer: int = typer.Option(None, "--layer", help="Decoder layer ℓ whose output hidden states are steered. (default: 7, as reference)"),
    update_layers: str = typer.Option(None, "--update-layers", help="Comma-separated layers whose tensors are trained; all must be ≤ ℓ. "
                                      "(default: 5,6,7, as reference)"),
    update_params: str = typer.Option(None, "--update-params", help="Regex on parameter names inside each update layer. "
                                      r"(default: mlp\.down_proj\.weight, the reference's param index 6)"),
    param_regex: str = typer.Option(None, "--param-regex", help="Regex on full checkpoint tensor names (e.g. "
                                    r"'model\.layers\.(5|6|7)\.mlp\.down_proj\.weight'); replaces --update-layers/--update-params."),
    steering_coeff: str = typer.Option(None, "--steering-coeff", help="c, the norm of the control vector: a number, or auto[:β] = "
                                       "β × mean per-token norm of layer-ℓ activations on the first forget batches (adaptive RMU, "
                                       "Dang et al. 2024; β defaults to 5). Paper (Zephyr-7B): 6.5; reference script default: 20. "
                                       f"Model-specific: see recipes/. {_LISTS} (default: 6.5)"),
    alpha: str = typer.Option(None, "--alpha", help=f"Retain-loss weight α. Paper (Zephyr-7B): 1200; reference script default: 100. "
                              f"{_LISTS} (default: 1200)"),
    lr: float = typer.Option(None, "--lr", help="AdamW learning rate (betas 0.9/0.999, eps 1e-6, no weight decay, as the "
                             "reference's transformers.AdamW). (default: 5e-5, paper and reference)"),
    batch_size: int = typer.Option(None, "--batch-size", help="Texts per forget batch and per retain batch. (default: 4)"),
    max_num_batches: int = typer.Option(None, "--max-num-batches", help="Steps per epoch at most; fewer when a corpus has fewer "
                                        "batches. (default: 150, WMDP README; reference script default 80)"),
    forget_max_length: str = typer.Option(None, "--forget-max-length", help=f"Forget truncation in tokens (the reference uses 512 "
                                          f"for bio, 768 for cyber). {_LISTS} (default: 512)"),
    retain_max_length: int = typer.Option(None, "--retain-max-length", help="Retain truncation in tokens. (default: 512)"),
    min_chars: int = typer.Option(None, "--min-chars", help="Drop texts of at most this many characters (reference --min_len). "
                                  "(default: 0)"),
    epochs: int = typer.Option(None, "--epochs", help="Passes over the batches. (default: 1, reference; Spunge paper C.1: 2)"),
    early_stop_cosine: float = typer.Option(None, "--early-stop-cosine", help="Stop as soon as the mean cosine similarity between "
                                            "current and initial layer-ℓ activations on the forget batch drops below this "
                                            "(Spunge paper C.1: 0.5). (default: off)"),
    early_stop_window: int = typer.Option(None, "--early-stop-window", help="Compare the mean cosine of the last N forget batches "
                                          "with --early-stop-cosine (batch cosines are noisy; 1 = the paper's rule). (default: 1)"),
    mask_padding: bool = typer.Option(None, "--mask-padding/--no-mask-padding", help="Leave padding tokens out of both losses "
                                      "(open-unlearning's port); the reference includes them. (default: no)"),
    seed: int = typer.Option(None, "--seed", help="Seed of the control vector(s) and everything else. (default: 42, reference)"),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N. (default: auto)"),
    dtype: str = typer.Option(None, "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16. (default: auto)"),
    cache_prefix: bool = typer.Option(None, "--cache-prefix/--no-cache-prefix", help="With --epochs > 1, keep the frozen layers' "
                                      "activations of every batch in memory instead of recomputing them. (default: no)"),
    text_column: str = typer.Option(None, "--text-column", help="Forget text column (default: the split's text column, or 'text')."),
    retain_text_column: str = typer.Option(None, "--retain-text-column", help="Retain text column for tabular files (default: text)."),
    force: bool = typer.Option(False, "--force", help="Replace existing runs with different settings."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """RMU unlearning (Li et al. 2024, WMDP): steer layer-ℓ activations of forget text to a random vector c·u, keep
    retain activations, training only mlp.down_proj of layers 5-7. Loads only layers 0..ℓ; writes the new tensors."""
    from spunge_merge.unlearn.rmu import RMUConfig, train_rmu

    overrides = {
        "layer": layer, "update_layers": [i.strip() for i in update_layers.split(",") if i.strip()] if update_layers else None,
        "update_params": update_params, "param_regex": param_regex, "steering_coeff": _split_list(steering_coeff),
        "alpha": _split_list(alpha), "lr": lr, "batch_size": batch_size, "max_num_batches": max_num_batches,
        "forget_max_length": _split_list(forget_max_length), "retain_max_length": retain_max_length, "min_chars": min_chars,
        "epochs": epochs, "early_stop_cosine": early_stop_cosine, "early_stop_window": early_stop_window,
        "mask_padding": mask_padding, "seed": seed, "device": device,
        "dtype": dtype, "cache_prefix": cache_prefix,
    }
    config = build_config(RMUConfig, config_file=config_file, overrides=overrides)
    outcomes = train_rmu(model, forget, retain, out, config, text_column=text_column, retain_text_column=retain_text_column,
                         force=force, progress=not quiet)
    _print_runs(outcomes)


def _print_runs(outcomes) -> None:
    from spunge_merge.provenance import read_provenance

    table = Table(title="RMU runs")
    for column in ("run", "steps", "forget loss", "retain loss", "forget cosine", "early stop", "status"):
        table.add_column(column)
    for outcome in outcomes:
        result = (read_provenance(outcome.path) or {}).get("result", {})
        final = result.get("final", {})
        table.add_row(outcome.name, str(result.get("steps", "")), f"{final.get('forget_loss', float('nan')):.4g}",
                      f"{final.get('retain_loss', float('nan')):.4g}", f"{final.get('forget_cosine', float('nan')):.3f}",
                      str(result.get("early_stop_step") or "-"), "skipped (complete)" if outcome.skipped else "done")
    Console().print(table)
    if outcomes:
        typer.echo(f"Wrote {outcomes[0].path.parent if len(outcomes) > 1 else outcomes[0].path}")


def materialize_command(
    run: Path = typer.Argument(..., help="An RMU run directory (delta.safetensors + spunge.json)."),
    out: Path = typer.Option(..., "--out", help="Output model directory (config, safetensors, tokenizer)."),
    model: str = typer.Option(None, "--model", help="Base model (default: the one recorded in the run's spunge.json)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
) -> None:
    """Write a full Hugging Face model directory: the base model with an RMU run's updated tensors."""
    from spunge_merge.unlearn.rmu import materialize

    path = materialize(model, run, out, force=force)
    typer.echo(f"Wrote {path}")


def register(app: typer.Typer, groups: dict[str, typer.Typer], method) -> None:
    """Called by `cli.unlearn` with this method's registry record."""
    groups["unlearn"].command(method.name, short_help=method.summary)(rmu_command)
    app.command("materialize")(materialize_command)
