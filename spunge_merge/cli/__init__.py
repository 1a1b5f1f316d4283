"""The `spunge` command line (Typer): one module per stage, no logic beyond parsing and printing.

Each stage module in `STAGE_MODULES` exposes `register(app, groups)` and adds its commands;
`unlearn` adds one command per registered unlearning method (see `cli/unlearn.py`).
A `SpungeError` raised anywhere below is printed as one line and exits with code 2.
"""

from __future__ import annotations

import importlib

import click
import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click; its commands raise that copy's errors
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import UsageError

from spunge_merge import __version__
from spunge_merge.cli.evaluate import EvalGroup
from spunge_merge.cli.help import SpungeHelp
from spunge_merge.cli.unlearn import UnlearnGroup
from spunge_merge.errors import SpungeError

STAGE_MODULES = ("split", "unlearn", "merge", "evaluate", "push", "run")


class _SpungeGroup(SpungeHelp, TyperGroup):
    """Turns user-fixable errors into one line on stderr and exit code 2; `--help` pages from `cli.help`."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SpungeError as exc:
            typer.secho(f"Error: {exc}", err=True, fg="red")
            raise typer.Exit(code=2) from None
        except UsageError as exc:  # a bad option of a command: one line too, with where to read about it
            command = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            message = " ".join(exc.format_message().split())
            typer.secho(f"Error: {message} (see: {command} --help)", err=True, fg="red")
            raise typer.Exit(code=exc.exit_code) from None


app = typer.Typer(
    cls=_SpungeGroup,
    name="spunge",
    help="Split, Unlearn, Merge: attribute-aware LLM unlearning with TIES merging through mergekit.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
unlearn_app = typer.Typer(cls=UnlearnGroup, help="Unlearn a forget set (or each subset of a split) from a base model, "
                          "with one of the registered methods.", no_args_is_help=True)
eval_app = typer.Typer(cls=EvalGroup, help="Evaluate models, one command per registered evaluation, and compare them.",
                       no_args_is_help=True)
app.add_typer(unlearn_app, name="unlearn")
app.add_typer(eval_app, name="eval")
GROUPS = {"unlearn": unlearn_app, "eval": eval_app}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spunge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Let every command of this call load models whose "
                                      "weights are only pickles (pytorch_model.bin). Unpickling can run code from the file: "
                                      "use it only for files you trust. Without it such models are refused."),
) -> None:
    """Split, Unlearn, Merge: attribute-aware LLM unlearning."""
    from spunge_merge.models import allow_pickle as set_allow_pickle

    set_allow_pickle(allow_pickle)


for _stage in STAGE_MODULES:
    importlib.import_module(f"spunge_merge.cli.{_stage}").register(app, GROUPS)


def main() -> None:
    app()
