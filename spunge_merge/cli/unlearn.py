"""`spunge unlearn NAME`: one command per registered unlearning method, built from its registry record.

The options come from the method's settings class: a field `max_steps` is `--max-steps` (or the
flags in its `json_schema_extra["cli_flags"]`, e.g. TVN's `lam` is `--lambda`), its `description`
is the help, its default is shown from the class, a bool field is `--x/--no-x`, a list field takes
comma-separated values; fields that need structure (mappings) are set through `--config FILE`
(YAML, keys as the field names). Around them every method gets `--model`, `--forget`, `--retain`
and `--retain-text-column` (only when the record uses retain data, required when it needs it),
`--out`, `--text-column`, `--force`, `--progress/--no-progress` (`--quiet`).

A method's own CLI module, `spunge_merge/cli/<name>.py` when it exists, may add commands of its own
(`register(app, groups, method)`: TVN's `spunge negate`, RMU's `spunge materialize`) and the columns
of the table printed after training (`result_row(result) -> {column: text}`).
The group asks the registry when it is listed or called, so a method registered after this module
was imported (a plugin, a test) has its command too.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import operator
import types
import typing
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from spunge_merge.cli.help import field_range
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import guard_output
from spunge_merge.unlearn import registry

_COMMON = {"ctx", "model", "forget", "retain", "retain_text_column", "out", "config_file", "text_column", "force", "progress"}
_PREFIX = "setting_"  # python names of the settings options, apart from the common ones
# `--help` panels of the generated options, by settings field name; a method's own fields (its loss) go to "Loss",
# and a field may name its panel itself (`json_schema_extra={"panel": ...}`).
PANELS = {
    "Data": ("model", "forget", "retain", "retain_text_column", "retain_where", "text_column", "max_length", "eval_samples",
             "min_chars"),
    "LoRA": ("rank", "lora_alpha", "lora_dropout", "target_modules", "full", "full_params"),
    "Optimizer": ("lr", "epochs", "max_steps", "batch_size", "grad_accum", "warmup", "lr_scheduler", "weight_decay",
                  "max_grad_norm", "max_num_batches", "adam_betas", "adam_eps"),
    "Output and runtime": ("out", "config_file", "force", "progress", "seed", "device", "dtype"),
}
_PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}


def panel_of(name: str, field: Any = None) -> str:
    """The `--help` panel of a setting (see `PANELS`)."""
    declared = ((getattr(field, "json_schema_extra", None) or {}) if field is not None else {}).get("panel")
    return declared or _PANEL_OF.get(name, "Loss")


class UnlearnGroup(TyperGroup):
    """`spunge unlearn`: one generated command per registered method, built when first listed or called."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(registry.method_names()))

    def get_command(self, ctx, name: str):
        command = super().get_command(ctx, name)
        if command is None and name in registry.method_names():
            command = build_command(registry.get_method(name))
            self.add_command(command, name)
        return command


def _field_kind(annotation: Any) -> tuple[type | None, str, list[str]]:
    """(option type, kind, choices): kind is scalar, bool, list (always a list), list-or-scalar, or skip."""
    args = [a for a in (typing.get_args(annotation) if _is_union(annotation) else (annotation,)) if a is not type(None)]
    choices = [str(v) for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]
    has_list = any(typing.get_origin(a) in (list, tuple) for a in args)
    if any(typing.get_origin(a) is dict or a is dict for a in args):
        return None, "skip", choices
    if len(args) == 1:
        (only,) = args
        if only is bool:
            return bool, "bool", choices
        if only in (int, float, str):
            return only, "scalar", choices
        if typing.get_origin(only) is Literal:
            return str, "scalar", choices
        if has_list:
            return str, "list", choices
        return str, "scalar", choices
    return str, "list-or-scalar" if has_list else "scalar", choices


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _split(value: str, always_list: bool) -> Any:
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    return items if always_list or len(items) > 1 else (items[0] if items else value)


def _shown_default(value: Any) -> Any:
    if value is PydanticUndefined or value is None:
        return None
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return value


def build_command(method: registry.UnlearningMethod) -> typer.core.TyperCommand:
    """The click command of `spunge unlearn <method.name>`, generated from the record."""
    settings: dict[str, tuple[str, str, str, list]] = {}  # python parameter name -> (field, kind, flag, bounds)
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]

    def add(name: str, annotation: Any, option: Any) -> None:
        if getattr(option, "rich_help_panel", None) is None and name != "ctx":
            option.rich_help_panel = panel_of(name)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))

    add("model", str, typer.Option(..., "--model", "-m", help="Base model: local directory, Hub id, or alias (smollm2-135m)."))
    add("forget", list[str], typer.Option(..., "--forget", help="Forget data: a data file, or a `spunge split` directory (one run "
                                          "per subset in OUT/<value>/ plus OUT/manifest.json)."))
    if method.retain != "none":
        required = method.retain == "required"
        add("retain", list[str] | None, typer.Option(... if required else None, "--retain",
                                                     help="Retain data file (repeat for several)." + ("" if required else " Optional.")))
        add("retain_text_column", str | None, typer.Option(None, "--retain-text-column",
                                                           help="Retain text column for tabular files (default: text)."))
        add("retain_where", list[str] | None, typer.Option(None, "--retain-where", help="Keep only the retain rows where COLUMN OP "
                                                           "VALUE holds (the grammar of `spunge split --where`); repeat to AND "
                                                           "several, e.g. --retain-where 'lang == en'. Recorded with the run."))
    add("out", Path, typer.Option(..., "--out", "-o", help="Output: the run directory (one file) or the directory of runs (split)."))
    add("config_file", Path | None, typer.Option(None, "--config", help="YAML file of settings, keys as the options below in "
                                                 "snake_case; options given on the command line win."))
    add("text_column", str | None, typer.Option(None, "--text-column", help="Column holding the text (default: the split's, else 'text')."))
    for field_name, field in method.config_class.model_fields.items():
        option_type, kind, choices = _field_kind(field.annotation)
        if kind == "skip" or field_name in _COMMON:
            continue
        flags = list((field.json_schema_extra or {}).get("cli_flags") or ["--" + field_name.replace("_", "-")])
        help_text = field.description or ""
        if choices:
            help_text += f" One of: {', '.join(choices)}."
        if kind in ("list", "list-or-scalar"):
            help_text += " Comma-separated for several."
        if span := field_range(field.metadata):
            help_text += f" [range: {span}]"
        default = _shown_default(field.default if field.default_factory is None else field.default_factory())
        declared = [f"{flags[0]}/--no-{flags[0][2:]}", *flags[1:]] if kind == "bool" else flags
        python_name = _PREFIX + field_name
        settings[python_name] = (field_name, kind, flags[0], field.metadata)
        add(python_name, option_type if default is not None else option_type | None,
            typer.Option(default, *declared, help=help_text, show_default=default is not None,
                         rich_help_panel=panel_of(field_name, field)))
    add("force", bool, typer.Option(False, "--force", help="Retrain and replace runs even when an identical one exists."))
    add("progress", bool, typer.Option(True, "--progress/--no-progress", " /--quiet", help="Show progress bars."))

    def command(**kwargs: Any) -> None:
        from spunge_merge.config import build_config
        from spunge_merge.models import resolve_model

        ctx = kwargs["ctx"]
        guard_output(kwargs["out"], inputs=[kwargs["model"], kwargs["config_file"], *kwargs["forget"], *(kwargs.get("retain") or [])],
                     force=kwargs["force"])  # before any file is read; the request checks the resolved model again
        given = {}
        for python_name, (field_name, kind, flag, bounds) in settings.items():
            source = ctx.get_parameter_source(python_name)
            if source is None or source.name == "DEFAULT":  # typer's own click copy: compare by name
                continue
            value = kwargs[python_name]
            _check_bounds(flag, value, bounds)
            given[field_name] = _split(value, kind == "list") if kind in ("list", "list-or-scalar") and value is not None else value
        config = build_config(method.config_class, config_file=kwargs["config_file"], overrides=given)
        retain_where = tuple(kwargs.get("retain_where") or ())
        check_inputs(kwargs["forget"], kwargs.get("retain") or [], retain_where, kwargs["text_column"], kwargs.get("retain_text_column"),
                     config)
        request = registry.TrainRequest(model=resolve_model(kwargs["model"]), forget=[Path(p) for p in kwargs["forget"]],
                                        out=Path(kwargs["out"]), config=config, retain=[Path(p) for p in kwargs.get("retain") or []],
                                        text_column=kwargs["text_column"], retain_text_column=kwargs.get("retain_text_column"),
                                        retain_where=retain_where, force=kwargs["force"], progress=kwargs["progress"])
        print_runs(method.name, method.train(request), Path(kwargs["out"]))

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = f"{method.summary}\n\n{method.description}"
    app = typer.Typer(add_completion=False)
    app.command(method.name, short_help=method.summary)(command)
    return typer.main.get_command(app)


def check_inputs(forget: list[str], retain: list[str], retain_where: tuple[str, ...], text_column: str | None,
                 retain_text_column: str | None, config=None) -> None:
    """Every data input read (and the retain filters applied) before the model is resolved, which may download
    or convert it: a missing retain file or a filter on an unknown column fails in a second, not after that.
    In the question/answer form (`config.answer_column`) rows are read by their answer column, as training reads them."""
    from spunge_merge.data.loading import load_retain, load_subsets

    if retain_where and not retain:
        raise SpungeError("--retain-where filters the --retain data: give --retain too")
    for path in forget:
        if not Path(path).expanduser().exists():
            raise SpungeError(f"--forget {path}: no such file or directory")
    for path in retain:
        if not Path(path).expanduser().exists():
            raise SpungeError(f"--retain {path}: no such file or directory")
    answer = getattr(config, "answer_column", None)
    for path in forget:
        load_subsets(path, answer or text_column)
    for path in retain:
        load_retain(path, answer if answer and _holds_pairs(path, config) else retain_text_column, retain_where)


def _holds_pairs(path: str, config) -> bool:
    from spunge_merge.unlearn.loss_training.session import has_pair_columns

    return has_pair_columns(Path(path).expanduser(), config)


_BOUNDS = {"ge": (">=", operator.ge), "gt": (">", operator.gt), "le": ("<=", operator.le), "lt": ("<", operator.lt)}


def _check_bounds(flag: str, value: Any, bounds: list) -> None:
    """A number given on the command line outside the field's range, named by its option."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return  # NaN and ±inf are refused by the settings class itself, as "not a finite number"
    for bound in bounds:
        for attribute, (words, holds) in _BOUNDS.items():
            limit = getattr(bound, attribute, None)
            if limit is not None and not holds(value, limit):
                raise SpungeError(f"{flag} must be {words} {limit:g} (got {value:g})")


def _method_cli(name: str):
    """The method's own CLI module (`spunge_merge/cli/<name>.py`), or None."""
    module_name = f"spunge_merge.cli.{name}"
    try:
        found = importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        found = False
    return importlib.import_module(module_name) if found else None


def _span(first: Any, last: Any) -> str:
    shown = [f"{v:.4g}" if isinstance(v, int | float) and not isinstance(v, bool) else "-" for v in (first, last)]
    return " → ".join(shown)


def summary_row(result: dict[str, Any]) -> dict[str, str]:
    """A run's figures before and after training, from the keys every loss-based method records: steps, the loss,
    the forget NLL of the probe texts (base → trained) and the retain loss term at the first and last step."""
    losses, retain = result.get("losses") or [], result.get("retain_terms") or []
    nll = result.get("forget_nll") if isinstance(result.get("forget_nll"), dict) else {}
    row = {"steps": str(result.get("steps", "-")),
           "loss first → last": _span(result.get("first_loss", losses[0] if losses else None),
                                      result.get("final_loss", losses[-1] if losses else None)),
           "forget NLL base → trained": _span(nll.get("base"), nll.get("trained"))}
    if any(retain):  # a run without retain data records zeros
        row["retain term first → last step"] = _span(retain[0], retain[-1])
    return row


def print_runs(name: str, outcomes: list, out: Path) -> None:
    """One row per run: its name, whether it was trained or found complete, then the method's columns
    (its CLI module's `result_row`) or its steps and last loss."""
    from spunge_merge.provenance import read_provenance

    own = getattr(_method_cli(name), "result_row", None)
    rows = []
    for outcome in outcomes:
        result = (read_provenance(outcome.path) or {}).get("result") or {}
        columns = own(result) if own is not None else summary_row(result)
        rows.append({"run": outcome.name, "status": "already done" if outcome.skipped else "trained", **columns})
    table = Table(title=f"{name} runs in {out}")
    for column in dict.fromkeys(key for row in rows for key in row) or ("run", "status"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)
    typer.echo(f"Wrote {len(outcomes)} {name} run(s) to {out}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Each method's own commands (its CLI module's `register(app, groups, method)`), e.g. `spunge negate`."""
    for name in registry.method_names():
        module = _method_cli(name)
        if module is not None and hasattr(module, "register"):
            module.register(app, groups, registry.get_method(name))
