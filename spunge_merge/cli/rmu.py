"""RMU's own commands: `spunge materialize`, and the columns `spunge unlearn rmu` prints per run.

`spunge unlearn rmu` itself is generated from RMU's registry record (`cli/unlearn.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def result_row(result: dict[str, Any]) -> dict[str, str]:
    """An RMU run's figures: steps, forget and retain loss at the first and the last step, forget cosine, early stop."""
    final = result.get("final", {})
    history = result.get("history") or [{}]
    first = history[0]

    def span(key: str) -> str:
        return f"{first.get(key, float('nan')):.4g} → {final.get(key, float('nan')):.4g}"
    return {"steps": str(result.get("steps", "")), "forget loss first → last": span("forget_loss"),
            "retain loss first → last": span("retain_loss"),
            "forget cosine": f"{final.get('forget_cosine', float('nan')):.3f}",
            "early stop": str(result.get("early_stop_step") or "-")}


def materialize_command(
    run: Path = typer.Argument(..., help="An RMU run directory (delta.safetensors + spunge.json)."),
    out: Path = typer.Option(..., "--out", help="Output model directory (config, safetensors, tokenizer)."),
    model: str = typer.Option(None, "--model", help="Base model (default: the one recorded in the run's spunge.json)."),
    force: bool = typer.Option(False, "--force", help="Replace an output directory spunge wrote (never a folder of yours, nor an input)."),
) -> None:
    """Write a full Hugging Face model directory: the base model with an RMU run's updated tensors."""
    from spunge_merge.unlearn.rmu import materialize

    path = materialize(model, run, out, force=force)
    typer.echo(f"Wrote {path}")


def register(app: typer.Typer, groups: dict[str, typer.Typer], method) -> None:
    """Called by `cli.unlearn` with RMU's registry record."""
    app.command("materialize")(materialize_command)
