"""TVN's own commands: `spunge negate`, and the columns `spunge unlearn tvn` prints per run.

`spunge unlearn tvn` itself is generated from TVN's registry record (`cli/unlearn.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from spunge_merge.unlearn.tvn import negate_output


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def result_row(result: dict[str, Any]) -> dict[str, str]:
    """A TVN run's figures: steps, loss, forget NLL before/after training and after negation, λ."""
    nll = result.get("forget_nll", {})
    return {"steps": str(result.get("steps", "-")),
            "loss first → last": f"{_fmt(result.get('first_loss'))} → {_fmt(result.get('final_loss'))}",
            "forget NLL base → trained → negated": f"{_fmt(nll.get('base'))} → {_fmt(nll.get('trained'))} → {_fmt(nll.get('negated'))}",
            "λ": str(result.get("lambda"))}


def negate_command(
    path: Path = typer.Argument(..., help="A TVN run directory, or a `spunge unlearn tvn` output holding several runs."),
    lam: float = typer.Option(..., "--lambda", help="New λ >= 0 (paper: 1.0); lora_B is rewritten as −λ × the trained B."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the re-negated run(s) here instead of in place."),
    force: bool = typer.Option(False, "--force", help="Replace an --out spunge wrote (never a folder of yours, nor an input)."),
) -> None:
    """Re-negate trained TVN adapters with another λ, without retraining (uses each run's unnegated/)."""
    written = negate_output(path, lam, out, force=force)
    for run in written:
        typer.echo(f"{run}: λ = {lam}")


def register(app: typer.Typer, groups: dict[str, typer.Typer], method) -> None:
    """Called by `cli.unlearn` with TVN's registry record."""
    app.command("negate")(negate_command)
