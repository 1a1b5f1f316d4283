"""`spunge eval NAME` for every registered evaluation, and `spunge eval compare` (tables, and λ-sweep frontiers with --arm).

An evaluation's options come from its config class (`evaluate.registry`): the field's description is the
help, its default the default, its `cli_flags` the option names. The built-in evaluations keep a
command written here for what their settings class cannot say (a repeatable `--where`, comma lists, the
table printed afterwards); an evaluation registered later (a plugin, a test) gets a command generated
from its record, like `spunge unlearn NAME`: its settings as options (`--config FILE` for the rest),
`--model`, `--out`, `--force`, and its headline printed after the run.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any

import typer
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from spunge_merge.cli.help import field_range
from spunge_merge.cli.unlearn import _check_bounds, _field_kind, _shown_default, _split
from spunge_merge.config import build_config
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate import registry
from spunge_merge.evaluate.fluency import FluencyConfig
from spunge_merge.evaluate.harness import HarnessConfig
from spunge_merge.evaluate.knowledge import KnowledgeConfig
from spunge_merge.evaluate.matched import FrontierReadout
from spunge_merge.evaluate.perplexity import PerplexityConfig
from spunge_merge.evaluate.toxicity import ToxicityConfig

_console = Console()


def _split_list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def _option(cls: type, name: str, *, suffix: str = "") -> Any:
    """The typer option of settings field `name`: its flags (`cli_flags`, else --name-with-dashes), its
    default (required when it has none) and its description as the help."""
    field = cls.model_fields[name]
    flags = list((field.json_schema_extra or {}).get("cli_flags") or ["--" + name.replace("_", "-")])
    if field.default is PydanticUndefined and field.default_factory is None:
        default = ...
    else:
        default = _shown_default(field.default if field.default_factory is None else field.default_factory())
        default = None if default == "" else default
    if field.annotation is bool:
        default = bool(default)
    span = field_range(field.metadata)
    help_text = (field.description or "") + suffix + (f" [range: {span}]" if span else "")
    return typer.Option(default, *flags, help=help_text, show_default=default not in (None, ...))


class EvalGroup(TyperGroup):
    """`spunge eval`: the commands written here, plus one generated command per evaluation registered without one."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(registry.names()))

    def get_command(self, ctx, name: str):
        command = super().get_command(ctx, name)
        if command is None and name in registry.names():
            command = build_command(registry.get(name))
            self.add_command(command, name)
        return command


_COMMON = {"ctx", "model", "out", "config_file", "force"}
_PREFIX = "setting_"


def build_command(evaluation: registry.Evaluation):
    """The click command of `spunge eval <evaluation.name>`, generated from its record."""
    settings: dict[str, tuple[str, str, str, list]] = {}  # python name -> (field, kind, flag, bounds)
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]

    def add(name: str, annotation: Any, option: Any) -> None:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))

    add("model", str, typer.Option(..., "--model", "-m", help="Model to evaluate: local directory, Hub id, or alias (smollm2-135m)."))
    add("out", Path, typer.Option(Path("eval"), "--out", "-o", help=f"Evaluation directory for {evaluation.result_file} "
                                  "(other evaluations may share it)."))
    add("config_file", Path | None, typer.Option(None, "--config", help="YAML file of settings, keys as the options below in "
                                                 "snake_case; options given on the command line win."))
    for field_name, field in evaluation.config_class.model_fields.items():
        option_type, kind, choices = _field_kind(field.annotation)
        extra = field.json_schema_extra or {}
        if kind == "skip" and typing.get_origin(field.annotation) is dict:
            option_type, kind = str, "mapping"  # given as a YAML mapping: --measure-settings '{facts: f.jsonl}'
        elif kind == "list" and extra.get("cli_repeat"):
            option_type, kind = list[str], "repeat"  # values may hold commas (`domain in a,b`): repeat the option
        if kind == "skip" or field_name in _COMMON:
            continue
        flags = list(extra.get("cli_flags") or ["--" + field_name.replace("_", "-")])
        help_text = (field.description or "") + (f" One of: {', '.join(choices)}." if choices else "")
        help_text += " Comma-separated for several." if kind in ("list", "list-or-scalar") else ""
        help_text += " Repeat for several." if kind == "repeat" else ""
        help_text += " A YAML mapping, e.g. '{key: value}'." if kind == "mapping" else ""
        help_text += f" [range: {span}]" if (span := field_range(field.metadata)) else ""
        required = field.default is PydanticUndefined and field.default_factory is None
        default = ... if required else _shown_default(field.default if field.default_factory is None else field.default_factory())
        default = None if kind in ("mapping", "repeat") and default is not ... else default
        declared = [f"{flags[0]}/--no-{flags[0][2:]}", *flags[1:]] if kind == "bool" else flags
        settings[_PREFIX + field_name] = (field_name, kind, flags[0], field.metadata)
        add(_PREFIX + field_name, option_type if default is not None else option_type | None,
            typer.Option(default, *declared, help=help_text, show_default=default not in (None, ...)))
    add("force", bool, typer.Option(False, "--force", help=f"Replace an existing {evaluation.name} result made with other settings."))

    def command(**kwargs: Any) -> None:
        from spunge_merge.config import build_config

        ctx = kwargs["ctx"]
        given = {}
        for python_name, (field_name, kind, flag, bounds) in settings.items():
            source = ctx.get_parameter_source(python_name)
            if source is None or source.name == "DEFAULT":
                continue
            value = kwargs[python_name]
            _check_bounds(flag, value, bounds)
            if kind == "mapping" and value is not None:
                value = _mapping(flag, value)
            given[field_name] = _split(value, kind == "list") if kind in ("list", "list-or-scalar") and value is not None else value
        config = build_config(evaluation.config_class, config_file=kwargs["config_file"], overrides=given)
        result = registry.run_evaluation(evaluation, kwargs["model"], kwargs["out"], config, force=kwargs["force"])
        typer.echo(f"{evaluation.name}: {evaluation.headline(result)}")
        typer.echo(f"Wrote {Path(kwargs['out']) / evaluation.result_file}")

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = evaluation.summary
    app = typer.Typer(add_completion=False)
    app.command(evaluation.name, short_help=evaluation.summary)(command)
    return typer.main.get_command(app)


def _mapping(flag: str, text: str) -> dict:
    """A mapping option's YAML text, refused by its option when it is not a mapping."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpungeError(f"{flag} {text}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(value, dict):
        raise SpungeError(f"{flag} {text}: expected a YAML mapping, e.g. '{{key: value}}'")
    return value


def toxicity_command(
    model: str = typer.Option(..., "--model", "-m", help="Model to evaluate: local directory (e.g. a merged model), Hub id, "
                              "or alias (smollm2-135m)."),
    prompts: Path = _option(ToxicityConfig, "prompts"),
    groups: str = _option(ToxicityConfig, "groups", suffix=" Comma-separated."),
    n_per_group: int = _option(ToxicityConfig, "n_per_group"),
    classifier: str = _option(ToxicityConfig, "classifier"),
    toxic_label: str = _option(ToxicityConfig, "toxic_label"),
    threshold: float = _option(ToxicityConfig, "threshold"),
    max_new_tokens: int = _option(ToxicityConfig, "max_new_tokens"),
    batch_size: int = _option(ToxicityConfig, "batch_size"),
    judge_batch_size: int = _option(ToxicityConfig, "judge_batch_size"),
    seed: int = _option(ToxicityConfig, "seed"),
    device: str = _option(ToxicityConfig, "device"),
    dtype: str = _option(ToxicityConfig, "dtype"),
    allow_pickle: bool = _option(ToxicityConfig, "allow_pickle"),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Evaluation directory: toxicity.json, generations.jsonl, "
                             "toxicity.md, toxicity_radar.png (other evaluations may share it)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing toxicity result made with other settings."),
) -> None:
    """Toxicity per group: sample ToxiGen prompts, generate greedily, judge, aggregate, plot."""
    from spunge_merge.evaluate.toxicity import RADAR_FILE, evaluate_toxicity, judge_line

    result = evaluate_toxicity(model, prompts, out, groups=_split_list(groups), n_per_group=n_per_group,
                               classifier=classifier, threshold=threshold, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, seed=seed, device=device, dtype=dtype, toxic_label=toxic_label,
                               allow_pickle=allow_pickle, judge_batch_size=judge_batch_size, force=force)
    table = Table(title=f"Toxic generations: {result['model']['ref']}")
    for column in ("group", "toxic %", "95 % CI", "toxic / n"):
        table.add_column(column, justify="left" if column == "group" else "right")
    rows = list(result["groups"].items()) + [("all", result["overall"])]
    for group, summary in rows:
        table.add_row(group, f"{summary['pct']:.1f}", f"{summary['ci95'][0]:.1f}-{summary['ci95'][1]:.1f}",
                      f"{summary['toxic']}/{summary['n']}")
    _console.print(table)
    typer.echo(f"Judge: {judge_line(result['judge'])}")
    if result.get("non_text"):
        share = result["non_text"]["overall"]
        typer.echo(f"Not text: {share['pct']:.1f} % of the generations ({share['non_text']}/{share['n']}; "
                   f"{result['non_text']['rule']})")
    typer.echo(f"Wrote {out / 'toxicity.json'} and {out / RADAR_FILE}")


def fluency_command(
    generations: Path = typer.Option(..., "--generations", help="generations.jsonl written by `spunge eval toxicity`."),
    judge: str = _option(FluencyConfig, "judge"),
    model: str = typer.Option(None, "--model", "-m", help="Model that wrote the generations, for the record (default: "
                              "read from toxicity.json next to the generations file)."),
    max_length: int = _option(FluencyConfig, "max_length"),
    device: str = _option(FluencyConfig, "device"),
    dtype: str = _option(FluencyConfig, "dtype"),
    out: Path = typer.Option(None, "--out", "-o", help="Evaluation directory for fluency.json (default: the generations "
                             "file's directory)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing fluency result made with other settings."),
) -> None:
    """Fluency: perplexity of the generations under a judge LM (lower is more fluent)."""
    from spunge_merge.evaluate.fluency import evaluate_fluency

    target = out or generations.parent
    result = evaluate_fluency(generations, judge, target, model=model, max_length=max_length, device=device, dtype=dtype,
                              force=force)
    typer.echo(f"Fluency PPL under {result['judge']['ref']}: {result['perplexity']:.2f} "
               f"({result['tokens']} tokens, {result['texts']} generations, {result['generations']['empty']} empty skipped)")
    typer.echo(f"Wrote {target / 'fluency.json'}")


def perplexity_command(
    model: str = typer.Option(..., "--model", "-m", help="Model: local directory, Hub id, or alias (smollm2-135m)."),
    data: Path = _option(PerplexityConfig, "data"),
    text_column: str = _option(PerplexityConfig, "text_column"),
    max_length: int = _option(PerplexityConfig, "max_length"),
    stride: int = _option(PerplexityConfig, "stride"),
    max_texts: int = _option(PerplexityConfig, "max_texts"),
    min_chars: int = _option(PerplexityConfig, "min_chars"),
    device: str = _option(PerplexityConfig, "device"),
    dtype: str = _option(PerplexityConfig, "dtype"),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Evaluation directory for perplexity.json."),
    force: bool = typer.Option(False, "--force", help="Replace an existing perplexity result made with other settings."),
) -> None:
    """Token-weighted perplexity on retain text (sliding window for long texts)."""
    from spunge_merge.evaluate.perplexity import evaluate_perplexity

    result = evaluate_perplexity(model, data, out, max_length=max_length, stride=stride, max_texts=max_texts,
                                 text_column=text_column, min_chars=min_chars, device=device, dtype=dtype, force=force)
    typer.echo(f"Perplexity: {result['perplexity']:.3f} ({result['tokens']} tokens, {result['texts']} texts)")
    typer.echo(f"Wrote {out / 'perplexity.json'}")


def harness_command(
    model: str = typer.Option(..., "--model", "-m", help="Model: local directory, Hub id, or alias (smollm2-135m)."),
    tasks: str = _option(HarnessConfig, "tasks"),
    include_path: Path = _option(HarnessConfig, "include_path"),
    limit: float = _option(HarnessConfig, "limit"),
    num_fewshot: int = _option(HarnessConfig, "num_fewshot"),
    batch_size: int = _option(HarnessConfig, "batch_size"),
    seed: int = _option(HarnessConfig, "seed"),
    device: str = _option(HarnessConfig, "device"),
    dtype: str = _option(HarnessConfig, "dtype"),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Evaluation directory for harness.json and harness.md."),
    force: bool = typer.Option(False, "--force", help="Replace an existing harness result made with other settings."),
) -> None:
    """Utility (or WMDP accuracy) with the LM Evaluation Harness (the `eval` extra)."""
    from spunge_merge.evaluate.harness import evaluate_harness

    if limit is not None and limit >= 1 and limit != int(limit):
        raise SpungeError(f"--limit {limit}: give a whole number of examples or a fraction below 1")
    limit_value = int(limit) if limit is not None and limit >= 1 else limit
    result = evaluate_harness(model, tasks, out, include_path=include_path, limit=limit_value, num_fewshot=num_fewshot,
                              batch_size=batch_size, device=device, dtype=dtype, seed=seed, force=force)
    table = Table(title=f"lm_eval {result['lm_eval_version']}: {result['model']['ref']}")
    for column in ("task", "metric", "value"):
        table.add_column(column)
    for task, entry in result["tasks"].items():
        table.add_row(task, entry["primary_metric"], f"{entry['primary']:.4f}")
    _console.print(table)
    if result["utility"] is not None:
        typer.echo(f"Utility (mean): {result['utility']:.4f}")
    typer.echo(f"Wrote {out / 'harness.json'}")


def knowledge_command(
    model: str = typer.Option(..., "--model", "-m", help="Model: local directory, Hub id, or alias (smollm2-135m)."),
    facts: Path = _option(KnowledgeConfig, "facts"),
    where: list[str] = _option(KnowledgeConfig, "where", suffix=" Repeat to AND several."),
    domains: str = _option(KnowledgeConfig, "domains", suffix=" Comma-separated."),
    form: str = _option(KnowledgeConfig, "form"),
    seed: int = _option(KnowledgeConfig, "seed"),
    options_column: str = _option(KnowledgeConfig, "options_column"),
    domain_column: str = _option(KnowledgeConfig, "domain_column"),
    prompt_column: str = _option(KnowledgeConfig, "prompt_column"),
    answer_column: str = _option(KnowledgeConfig, "answer_column"),
    max_new_tokens: int = _option(KnowledgeConfig, "max_new_tokens"),
    batch_size: int = _option(KnowledgeConfig, "batch_size"),
    device: str = _option(KnowledgeConfig, "device"),
    dtype: str = _option(KnowledgeConfig, "dtype"),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="Evaluation directory: knowledge.json and knowledge.jsonl (every "
                             "fact, completion or option scores, verdict); other evaluations may share it."),
    force: bool = typer.Option(False, "--force", help="Replace an existing knowledge result made with other settings."),
) -> None:
    """Knowledge probe: accuracy per domain on prompt/answer facts (does the model still know them?).

    Facts whose answer appears in their own prompt ("The London Eye is in the city of" → London) are left
    out and counted: echoing the prompt would score them, so they cannot tell knowing from repeating.
    """
    from spunge_merge.evaluate.knowledge import evaluate_knowledge

    result = evaluate_knowledge(model, facts, out, where=list(where or ()), domains=_split_list(domains),
                                domain_column=domain_column, prompt_column=prompt_column, answer_column=answer_column,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, dtype=dtype,
                                form=form, seed=seed, options_column=options_column, force=force)
    table = Table(title=f"Knowledge ({result['settings']['form']}): {result['model']['ref']}")
    for column in ("domain", "accuracy %", "correct / n", "left out (answer in prompt)"):
        table.add_column(column, justify="left" if column == "domain" else "right")
    for domain, entry in result["domains"].items():
        table.add_row(domain, f"{100 * entry['accuracy']:.1f}", f"{entry['correct']}/{entry['n']}",
                      str(entry.get("excluded_echoes", 0)))
    overall = result["overall"]
    table.add_row("all", f"{100 * overall['accuracy']:.1f}", f"{overall['correct']}/{overall['n']}",
                  str(result.get("excluded", {}).get("count", 0)))
    _console.print(table)
    if result.get("chance"):
        typer.echo(f"Chance: {100 * result['chance']:.0f} %")
    typer.echo(f"Wrote {out / 'knowledge.json'}")


def _parse_result_arg(text: str) -> tuple[str, str]:
    label, sep, path = text.partition("=")
    if sep and label and path:
        return label, path
    return Path(text).name or text, text


def compare_command(
    results: list[str] = typer.Argument(None, help="Results as LABEL=DIR (or DIR, labelled by its name): evaluation "
                                        "directories, or LABEL=FILE.json. Order = table order, e.g. base=... baseline=... "
                                        "spunge=... Not used with --arm."),
    arm: list[str] = typer.Option(None, "--arm", "-a", help="Frontier mode: one arm of a λ sweep, repeatable. "
                                  "NAME=DIR[,DIR...] with one evaluation directory per λ (each holding toxicity.json and "
                                  "the --metric's result; λ read from the evaluated model's spunge.json), or "
                                  "NAME@LAMBDA=DIR for one point with its λ given. A DIR may be a quoted glob "
                                  "('spunge=run/eval/spunge-lam*'). Repeating a NAME adds points to it. Order = table order."),
    base: Path = typer.Option(None, "--base", help="Frontier mode: the base model's evaluation directory (a star on the "
                              "plot, the first row of the tables)."),
    metric: str = typer.Option("retain_ppl", "--metric", help="Frontier mode: utility on the x axis, also the quantity "
                               "matched at the operating point: retain_ppl (perplexity.json), fluency_ppl (fluency.json) "
                               "or utility (harness.json mean accuracy, higher is better)."),
    target: float = typer.Option(None, "--target", "--target-ppl", help="Frontier mode: operating point, a value of "
                                 "--metric (default: the reference arm's λ = 1 point). The paper reports λ = 1 only; "
                                 "that table is always written too."),
    match: str = typer.Option("interpolate", "--match", help="Frontier mode: how each arm is read at the target: "
                              "interpolate (linear between the two points bracketing it; toxicity intervals then "
                              "approximate; the nearest point when outside the arm's range) or nearest (the measured "
                              "point closest to it, with the residual mismatch shown)."),
    reference: str = typer.Option(None, "--reference", "-r", help="Label that relative changes refer to (default: the "
                                  "first result; with --arm the first arm, e.g. the un-split baseline)."),
    non_text_tolerance: float = typer.Option(5.0, "--non-text-tolerance", help="Percentage points of generations that are "
                                             "not text (empty, symbols, a few words looped; rule in toxicity.json) a model may "
                                             "have above the base model's (the result labelled base, else the lowest share) "
                                             "and still be compared on toxicity: the judge scores non-text as harmless. "
                                             "Frontier mode: points beyond it are inadmissible (never matched, never "
                                             "Pareto); table mode: such rows are flagged."),
    no_non_text_check: bool = typer.Option(False, "--no-non-text-check", help="Compare without the non-text check "
                                           "(a model may then win by breaking its output)."),
    out: Path = typer.Option(Path("compare"), "--out", "-o", help="Output directory: compare.json, compare.md, "
                             "compare_radar.png; with --arm frontier.json, frontier.md, frontier.png."),
    force: bool = typer.Option(False, "--force", help="Replace an existing comparison of other results."),
    forget: str = typer.Option(None, "--forget", help="Frontier mode on knowledge evaluations (knowledge.json, no "
                               "toxicity.json): the forgotten domains, comma-separated; forget avg against keep avg, "
                               "read at matched keep as `spunge eval frontier` does."),
    allow_mixed: bool = typer.Option(False, "--allow-mixed", help="Table mode: compare results measured differently "
                                     "(knowledge form or fact set, judge, prompt sample, data, settings); each difference "
                                     "is recorded as a warning. Without it such a table is refused, naming the difference."),
) -> None:
    """Compare evaluated models in the shape of the paper's Table 1, or arms of a λ sweep as a frontier.

    With RESULT...: one table (toxicity, fluency PPL, retain PPL, utility) with relative changes and a
    radar overlay. With --arm: the toxicity-utility frontier (PNG, Pareto points, Wilson bars), the
    table at a matched operating point and at λ = 1, e.g.
    spunge eval compare --base eval/base --arm 'baseline=eval/baseline-lam*' --arm 'spunge=eval/spunge-lam*'
    """
    if arm:
        if results:
            raise SpungeError("give either RESULT... (one table) or --arm (a frontier), not both; "
                              "the base model goes with --base")
        _frontier_compare(arm, base=base, metric=metric, target=target, match=match, reference=reference,
                          non_text_tolerance=None if no_non_text_check else non_text_tolerance, out=out, force=force,
                          forget=forget)
        return
    if not results:
        raise SpungeError("nothing to compare: give results (LABEL=DIR ...) or arms (--arm NAME=DIR,...)")
    if base is not None or target is not None or metric != "retain_ppl" or match != "interpolate":
        raise SpungeError("--base, --metric, --target and --match belong to frontier mode: add --arm")
    from spunge_merge.evaluate.compare import COMPARE_SUMMARY, compare_results

    parsed: dict[str, list[str]] = {}
    for item in results:
        label, path = _parse_result_arg(item)
        parsed.setdefault(label, []).append(path)
    result = compare_results(parsed, out, reference_label=reference,
                             non_text_tolerance=None if no_non_text_check else non_text_tolerance, force=force,
                             allow_mixed=allow_mixed)
    typer.echo((out / COMPARE_SUMMARY).read_text(encoding="utf-8"))
    for warning in result["warnings"]:
        typer.secho(f"Warning: {warning}", err=True, fg="yellow")
    typer.echo(f"Wrote {out / 'compare.json'}")


def _frontier_compare(arm: list[str], *, base: Path | None, metric: str, target: float | None, match: str,
                      reference: str | None, non_text_tolerance: float | None, out: Path, force: bool, forget: str | None) -> None:
    """`spunge eval compare --arm ...`: the arms' frontier (toxicity against --metric), or forget against keep
    when every point is a knowledge evaluation; prints the summary and writes it under `out`."""
    from spunge_merge.evaluate.frontier import FRONTIER_SUMMARY, frontier_results, parse_arm

    arms: dict[str, list] = {}
    for item in arm:
        name, points = parse_arm(item)
        arms.setdefault(name, []).extend(points)
    if _knowledge_arms(arms, base):
        _knowledge_compare(arms, base, _split_list(forget) or [], out, force)
        return
    frontier = frontier_results(arms, out, base=base, metric=metric, target=target, match=match, reference=reference,
                                non_text_tolerance=non_text_tolerance, force=force)
    typer.echo((out / FRONTIER_SUMMARY).read_text(encoding="utf-8"))
    for warning in frontier["warnings"]:
        typer.secho(f"Warning: {warning}", err=True, fg="yellow")
    typer.echo(f"Wrote {out / 'frontier.json'} and {out / 'frontier.png'}")


def _knowledge_arms(arms: dict[str, list], base: Path | None) -> bool:
    """True when every point is a knowledge evaluation without toxicity: the frontier is then forget against keep."""
    from spunge_merge.evaluate.frontier_knowledge import has_knowledge

    dirs = [p.path for points in arms.values() for p in points] + ([base] if base is not None else [])
    return all(has_knowledge(d) and not (d / "toxicity.json").is_file() for d in dirs)


def _knowledge_compare(arms: dict[str, list], base: Path | None, forget: list[str], out: Path, force: bool) -> None:
    from spunge_merge.evaluate.frontier_knowledge import FRONTIER_SUMMARY, knowledge_frontier, unit_from_arms

    warnings: list[str] = []
    units, baseline = unit_from_arms(arms, base, forget, warnings)
    result = knowledge_frontier(units, [a for a in arms if a != baseline], baseline, out, warnings=warnings, force=force)
    typer.echo((out / FRONTIER_SUMMARY).read_text(encoding="utf-8"))
    for warning in result["warnings"]:
        typer.secho(f"Warning: {warning}", err=True, fg="yellow")
    typer.echo(f"Wrote {out / 'frontier.json'} and {out / 'frontier.png'}")


def frontier_command(
    run: Path = typer.Argument(..., help="A `spunge run` directory with a λ sweep (merge.lambda and baseline.lambda lists) "
                               "whose eval stage ran the knowledge probe on base, baseline and spunge."),
    keep_drop: float = _option(FrontierReadout, "keep_drop"),
    retain_ppl_margin_pct: float = _option(FrontierReadout, "retain_ppl_margin_pct"),
    forget_at_most: float = _option(FrontierReadout, "forget_at_most"),
    level_margin: float = _option(FrontierReadout, "level_margin"),
    min_seeds: int = _option(FrontierReadout, "min_seeds"),
    no_ppl_check: bool = typer.Option(False, "--no-ppl-check", help="Read keep accuracy alone as utility (a model "
                                      "with broken language may then count as useful)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output directory: frontier.json, frontier.md, frontier.png "
                             "(default RUN/eval/frontier)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing frontier read with other settings."),
) -> None:
    """Does splitting pay on my data? Forget against keep over λ and seeds, read at matched utility.

    Spunge − baseline forget avg where both keep base − KEEP_DROP points (interpolated along λ), with a
    95 % interval over seeds and facts and a verdict; at λ = 1 and at matched forgetting too; a PNG, e.g.
    spunge eval frontier runs/my-facts --out frontier
    """
    from spunge_merge.evaluate.frontier_knowledge import FRONTIER_SUMMARY, knowledge_frontier, units_from_run
    from spunge_merge.evaluate.matched import FrontierReadout as Readout

    given = {"keep_drop": keep_drop, "forget_at_most": forget_at_most, "level_margin": level_margin, "min_seeds": min_seeds,
             "retain_ppl_margin_pct": retain_ppl_margin_pct}
    readout = build_config(Readout, overrides=given, option_names={key: "--" + key.replace("_", "-") for key in given})
    if no_ppl_check:
        readout = readout.model_copy(update={"retain_ppl_margin_pct": None})
    warnings: list[str] = []
    units, _ = units_from_run(run, warnings)
    out = out if out is not None else run / "eval" / "frontier"
    result = knowledge_frontier(units, ["spunge"], "baseline", out, readout=readout, warnings=warnings, force=force)
    typer.echo((out / FRONTIER_SUMMARY).read_text(encoding="utf-8"))
    for warning in result["warnings"]:
        typer.secho(f"Warning: {warning}", err=True, fg="yellow")
    typer.echo(f"Wrote {out / 'frontier.json'} and {out / 'frontier.png'}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    group = groups["eval"]
    group.command("toxicity")(toxicity_command)
    group.command("fluency")(fluency_command)
    group.command("perplexity")(perplexity_command)
    group.command("harness")(harness_command)
    group.command("knowledge")(knowledge_command)
    group.command("compare")(compare_command)
    group.command("frontier")(frontier_command)
