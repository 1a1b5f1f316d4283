"""`spunge merge`."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import typer
import yaml

from spunge_merge.errors import SpungeError
from spunge_merge.merge.settings import MERGE_DTYPES, merge_settings
from spunge_merge.unlearn import registry

_OPTION_NAMES = {"lam": "--lambda", "param": "--param"}
_RUN_OPTIONS = ("base", "method", "density", "weight", "lam", "normalize", "dtype", "param", "recipe_out", "dry_run",
                "retain_data", "gram_inputs", "stats_dir")


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def _parameters(items: list[str]) -> dict:
    """--param KEY=VALUE, VALUE read as YAML (true, 0.5, [0.1, 0.9]) like in a recipe."""
    parameters = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpungeError(f"--param {item!r}: expected KEY=VALUE, e.g. --param int8_mask=true")
        try:
            parameters[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise SpungeError(f"--param {item!r}: value is not valid YAML") from exc
    return parameters


def _statistics(retain_data: Path | None, inputs: str | None, stats_dir: Path | None) -> dict | None:
    """The statistics pass's settings (anchored_ls), None when no option of it is given."""
    given = {"retain_data": str(retain_data) if retain_data else None, "inputs": inputs, "stats_dir": str(stats_dir) if stats_dir else None}
    given = {key: value for key, value in given.items() if value is not None}
    if given and inputs is not None and inputs not in ("base", "run"):
        raise SpungeError(f"--gram-inputs {inputs!r}: expected base or run")
    return given or None


def _size(text: str) -> int:
    """Bytes from 5GB, 500MB, 2e9 (powers of 1000, as mergekit's sizes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)b?\s*", text.lower())
    if not match or float(match[1]) <= 0:
        raise SpungeError(f"--shard-size {text!r}: expected a size such as 5GB, 500MB or 1000000")
    return int(float(match[1]) * 1000 ** " kmgt".index(match[2] or " "))


def merge_command(
    ctx: typer.Context,
    runs: list[Path] = typer.Argument(None, help="Per-attribute runs of `spunge unlearn`: TVN adapter, RMU delta or full "
                                      "checkpoint directories, or unlearn output directories (all runs of their manifest)."),
    base: str = typer.Option(None, "--base", "-b", help="Base model the runs were unlearned from: local directory, Hub id, "
                             "or alias (smollm2-135m). [required unless --recipe]"),
    out: Path = typer.Option(Path("merged"), "--out", "-o", help="Output model directory."),
    method: str = typer.Option("ties", "--method", help="Any mergekit merge method: ties, task_arithmetic, dare_ties, "
                               "breadcrumbs_ties, della, linear, ... Paper (SPUNGE): ties."),
    density: list[float] = typer.Option(None, "--density", help="Fraction of each task vector kept (TIES' top-k by magnitude), "
                                        "in (0, 1]; once for all runs or once per run. Default 0.2 (TIES paper: k = 20 %)."),
    weight: list[float] = typer.Option(None, "--weight", help="Weight of each run's task vector; once for all runs or once per "
                                       "run. Default 1.0. mergekit applies it before sign election."),
    lam: float = typer.Option(None, "--lambda", help="λ >= 0 scaling the merged task vector: θ = θ_base + λ·τ (0 gives the base). "
                             "Default 1.0 (TIES paper)."),
    normalize: bool = typer.Option(None, "--normalize/--no-normalize", help="Divide by the summed weights of the agreeing models "
                                   "(TIES' disjoint mean). Default: the method's (true for ties)."),
    dtype: str = typer.Option(None, "--dtype", help=f"Merge dtype: {', '.join(MERGE_DTYPES)}. Default: the base weights' dtype."),
    param: list[str] = typer.Option(None, "--param", help="Extra mergekit parameter KEY=VALUE, repeatable "
                                    "(int8_mask=true, rescale=false, epsilon=0.1, gamma=0.01)."),
    retain_data: Path = typer.Option(None, "--retain-data", help="anchored_ls: retain data file whose inputs anchor the base "
                                     "(default: the retain data the runs record)."),
    gram_inputs: str = typer.Option(None, "--gram-inputs", help="anchored_ls: Gram matrices of the base model's inputs "
                                    "(base, default) or each run's (run)."),
    stats_dir: Path = typer.Option(None, "--stats-dir", help="anchored_ls: where statistics files are kept. Default: "
                                   "$SPUNGE_CACHE/merge-stats (reused while model and data are unchanged)."),
    recipe: Path = typer.Option(None, "--recipe", help="Run this mergekit recipe (e.g. one written by --recipe-out and edited) "
                                "instead of building one from RUN... and the options above."),
    recipe_out: Path = typer.Option(None, "--recipe-out", help="Also write the recipe to this file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only write the portable recipe (to --recipe-out, default OUT.yml): "
                                 "the runs by relative path, to edit and run anywhere; build nothing, merge nothing."),
    cuda: bool = typer.Option(False, "--cuda", help="Compute merged tensors on the GPU (mergekit's --cuda)."),
    seed: int = typer.Option(0, "--seed", help="Seed for methods that sample (dare_ties, della)."),
    shard_size: str = typer.Option("5GB", "--shard-size", help="Largest output shard (as mergekit's --out-shard-size)."),
    views_dir: Path = typer.Option(None, "--views-dir", help="Where run views are kept. Default: $SPUNGE_CACHE/merge-views "
                                   "(safe to delete; rebuilt when needed)."),
    force: bool = typer.Option(False, "--force", help="Replace an output directory spunge wrote (never a folder of yours, nor an input)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Merge per-attribute unlearned models into one with mergekit (TIES by default).

    Each TVN adapter or RMU delta becomes a view: the tensors it changed, plus links to the base.

    Tensors no run changed are copied from the base (what mergekit computes for them); mergekit merges the rest.

    The recipe is plain mergekit YAML, saved as OUT/mergekit_config.yml: mergekit-yaml runs it unchanged.

    Re-run a hand-edited recipe with: spunge merge --recipe FILE --out DIR
    """
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    shard_bytes = _size(shard_size)
    from spunge_merge.merge import merge_recipe, merge_runs

    if recipe is not None:
        clashing = [_OPTION_NAMES.get(name, f"--{name.replace('_', '-')}") for name in _RUN_OPTIONS if _given(ctx, name)]
        clashing += ["RUN"] if runs else []
        if clashing:
            raise SpungeError(f"--recipe takes the models and parameters from the recipe; drop {', '.join(clashing)}")
        result = merge_recipe(recipe, out, cuda=cuda, force=force, seed=seed, shard_size=shard_bytes, views_dir=views_dir,
                              progress=progress, method_descriptions=registry.descriptions())
    else:
        if not base:
            raise SpungeError("--base is required (the model the runs were unlearned from), unless --recipe is given")
        if not runs:
            raise SpungeError("give the runs to merge (RUN...), or a recipe with --recipe")
        # the options, validated once into the settings object that the recipe is built from
        settings = merge_settings(method=method, density=list(density) if density else None,
                                  weight=list(weight) if weight else None, lam=lam, normalize=normalize, dtype=dtype,
                                  parameters=_parameters(param), statistics=_statistics(retain_data, gram_inputs, stats_dir))
        result = merge_runs(base, runs, out, settings=settings, cuda=cuda, force=force, recipe_out=recipe_out, dry_run=dry_run,
                            seed=seed, shard_size=shard_bytes, views_dir=views_dir, progress=progress,
                            method_descriptions=registry.descriptions())
        if dry_run:
            typer.echo(result.read_text(encoding="utf-8"), nl=False)
            typer.echo(f"Wrote the portable recipe to {result}: its paths are relative to the runs' folder (see its comments); "
                       f"from there: spunge merge --recipe {result} --out {out}", err=True)
            return
    _report(result, time.perf_counter() - started)


def _report(out: Path, seconds: float) -> None:
    from spunge_merge.provenance import read_provenance

    record = read_provenance(out) or {}
    result = record.get("result", {})
    runs = record.get("runs") or []
    if (out / "spunge.json").stat().st_mtime < time.time() - seconds:
        typer.echo(f"{out} already holds this merge (same recipe and inputs); nothing to do (--force redoes it)")
        return
    typer.echo(f"Merged {len(runs)} run(s) with {record.get('method')} into {out}: {result.get('tensors')} tensors, "
               f"{result.get('computed')} merged by mergekit, {result.get('copied_from_base')} unchanged (copied from the base); "
               f"{seconds:.1f} s")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("merge")(merge_command)
