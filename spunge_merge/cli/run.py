"""`spunge run` and `spunge demo`."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.console import Console
from rich.markdown import Markdown

from spunge_merge.pipeline import STAGES, RunSummary, run_pipeline

DEMO_PIPELINE = Path(__file__).resolve().parents[1] / "demo" / "pipeline.yaml"


def _print_summary(summary: RunSummary) -> None:
    console = Console()
    if summary.text:
        console.print(Markdown(summary.text))
    for label, path in summary.merged.items():
        typer.echo(f"Merged model ({label}): {path}")
    for label, path in summary.baseline.items():
        typer.echo(f"Baseline model ({label}): {path}")
    if summary.report is not None:
        typer.echo(f"Report: {summary.report}")
    done = f"stages run: {', '.join(summary.ran)}" if summary.ran else "nothing to do, every stage was up to date"
    typer.echo(f"Run directory: {summary.run_dir} ({done}; {summary.seconds:.0f} s)")


def run_command(
    pipeline: Path = typer.Argument(..., exists=True, dir_okay=False, help="Pipeline YAML file (see recipes/ for commented examples)."),
    only: str = typer.Option(None, "--only", help=f"Run only this stage ({', '.join(STAGES)}); the stages before it must "
                             "already be up to date in the run directory."),
    force: bool = typer.Option(False, "--force", help="Redo the stages that run (all, or the --only one) even when up to date "
                              "(and accept settings that differ from the run directory's record, as --accept-changes)."),
    executor: str = typer.Option(None, "--executor", help="local (one process, one job after another) or ray (each "
                                 "per-attribute job a Ray task). Default: the file's `executor`, else local."),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster to join (auto, ray://HOST:10001). "
                                    "Default: the file's ray.address, else a local Ray instance."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Where everything is written. Default: the file's run_dir, "
                                 "else runs/<name> under the current directory."),
    overrides: list[str] = typer.Option(None, "--set", help="Change one setting of the file for this run: KEY.PATH=VALUE, "
                                        "VALUE read as YAML (e.g. --set baseline.config.lr=2e-5 --set 'eval.models=[baseline]'). "
                                        "Repeatable; the run directory's pipeline.yaml records the settings as run."),
    accept_changes: bool = typer.Option(False, "--accept-changes", help="The run directory was run with other settings "
                                        "(its pipeline.yaml): redo the stages the differences affect. Without it such a "
                                        "run is refused, listing the differences and the stages they would redo."),
    plan: bool = typer.Option(False, "--plan", help="Print the stages, their jobs with step counts and the expected training "
                              "time (from the cost per step measured by earlier runs), computing nothing."),
) -> None:
    """Run a whole Spunge experiment from one file: split, unlearn each subset, unlearn the un-split baseline with
    the same budget, merge, evaluate base vs. baseline vs. Spunge, and optionally push. Resumable: a rerun skips
    every stage whose inputs and settings are unchanged, and an interrupted stage restarts cleanly."""
    if executor is not None and executor not in ("local", "ray"):
        raise typer.BadParameter("use local or ray", param_hint="--executor")
    if plan:
        from spunge_merge.pipeline.plan import format_plan, plan_pipeline

        typer.echo(format_plan(plan_pipeline(pipeline, run_dir=run_dir, overrides=overrides)))
        return
    with _interruptible(run_dir):
        summary = run_pipeline(pipeline, run_dir=run_dir, only=only, force=force, executor=executor, ray_address=ray_address,
                               overrides=overrides, accept_changes=accept_changes)
    _print_summary(summary)


def demo_command(
    run_dir: Path = typer.Option(Path("runs/demo"), "--run-dir", help="Where the demo writes its models and report."),
    force: bool = typer.Option(False, "--force", help="Redo every stage even when up to date."),
    executor: str = typer.Option("local", "--executor", help="local or ray."),
    accept_changes: bool = typer.Option(False, "--accept-changes", help="Redo what differs when the run directory was "
                                        "made by another version of the demo."),
    device: str = typer.Option(None, "--device", help="Device of every stage (the file's runtime.device): cpu, cuda, cuda:N, auto. "
                               "Default: cpu."),
    dtype: str = typer.Option(None, "--dtype", help="Model dtype of every stage (runtime.dtype): auto, float32, bfloat16, float16. "
                              "Default: auto (fp32 on CPU, bf16 on CUDA)."),
) -> None:
    """The offline demo: remove two knowledge domains (capitals, chemical symbols) from smollm2-135m with RMU while
    keeping three (languages, opposites, landmarks), split by domain vs. un-split, and compare per-domain accuracy on
    held-out facts over three seeds (means, and Spunge − baseline with 95 % intervals). Runs on a CPU in minutes
    per seed; the data ships with spunge."""
    from spunge_merge.demo import demo_text

    overrides = [f"runtime.{key}={value}" for key, value in (("device", device), ("dtype", dtype)) if value is not None]
    with _interruptible(run_dir):
        summary = run_pipeline(DEMO_PIPELINE, run_dir=run_dir, force=force, executor=executor, overrides=overrides,
                               accept_changes=accept_changes)
    text = demo_text(getattr(summary, "aggregate", {}), report=str(summary.report) if summary.report else None)
    if not text:
        _print_summary(summary)
        return
    Console().print(Markdown(text))
    done = f"work done: {', '.join(summary.ran)}" if summary.ran else "nothing to do, every seed was up to date"
    typer.echo(f"Run directory: {summary.run_dir} ({done}; {summary.seconds:.0f} s)")


@contextlib.contextmanager
def _interruptible(run_dir: Path | None):
    """Ctrl-C: one line (where the run stopped, how to resume) and exit code 130, as a shell expects; no traceback."""
    try:
        yield
    except KeyboardInterrupt:
        where = f" {run_dir}" if run_dir is not None else ""
        typer.secho(f"Interrupted: the run directory{where} keeps what finished; rerun the same command to resume "
                    "(jobs that had not started are marked 'not started')", err=True, fg="yellow")
        raise typer.Exit(code=130) from None


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("run")(run_command)
    app.command("demo")(demo_command)
