"""`spunge unlearn NAME`: one command per registered unlearning method, built from its registry record.

The options come from the method's settings class: a field `max_steps` is `--max-steps`, its
`description` is the help, its default is shown from the class, a bool field is `--x/--no-x`, a
list field takes comma-separated values; fields that need structure (mappings) are set through
`--config FILE` (YAML, keys as the field names). Around them every method gets `--model`,
`--forget`, `--retain` (only when the record uses retain data, required when it needs it),
`--out`, `--text-column`, `--force`, `--progress/--no-progress`.

A method may instead ship its own hand-written command in `spunge_merge/cli/<name>.py` (a module
with `METHOD_COMMAND = True` and `register(app, groups)`, as TVN and RMU do, to keep their
established options); it is registered under the record's name with the record's summary.
The group asks the registry when it is listed or called, so a method registered after this module
was imported (a plugin, a test) has its command too.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from spunge_merge.unlearn import registry

_COMMON = {"ctx", "model", "forget", "retain", "out", "config_file", "text_column", "force", "progress"}
_PREFIX = "setting_"  # python names of the settings options, apart from the common ones


class UnlearnGroup(TyperGroup):
    """`spunge unlearn`: the hand-registered commands plus one generated command per other registered method."""

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
    settings: dict[str, tuple[str, str]] = {}  # python parameter name -> (field name, kind)
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]

    def add(name: str, annotation: Any, option: Any) -> None:
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))

    add("model", str, typer.Option(..., "--model", "-m", help="Base model: local directory, Hub id, or alias (smollm2-135m)."))
    add("forget", list[str], typer.Option(..., "--forget", help="Forget data: a data file, or a `spunge split` directory (one run "
                                          "per subset in OUT/<value>/ plus OUT/manifest.json)."))
    if method.retain != "none":
        required = method.retain == "required"
        add("retain", list[str] | None, typer.Option(... if required else None, "--retain",
                                                     help="Retain data file (repeat for several)." + ("" if required else " Optional.")))
    add("out", Path, typer.Option(..., "--out", "-o", help="Output: the run directory (one file) or the directory of runs (split)."))
    add("config_file", Path | None, typer.Option(None, "--config", help="YAML file of settings, keys as the options below in "
                                                 "snake_case; options given on the command line win."))
    add("text_column", str | None, typer.Option(None, "--text-column", help="Column holding the text (default: the split's, else 'text')."))
    for field_name, field in method.config_class.model_fields.items():
        option_type, kind, choices = _field_kind(field.annotation)
        if kind == "skip" or field_name in _COMMON:
            continue
        flag = "--" + field_name.replace("_", "-")
        help_text = field.description or ""
        if choices:
            help_text += f" One of: {', '.join(choices)}."
        if kind in ("list", "list-or-scalar"):
            help_text += " Comma-separated for several."
        default = _shown_default(field.default if field.default_factory is None else field.default_factory())
        declared = f"{flag}/--no-{field_name.replace('_', '-')}" if kind == "bool" else flag
        python_name = _PREFIX + field_name
        settings[python_name] = (field_name, kind)
        add(python_name, option_type if default is not None else option_type | None,
            typer.Option(default, declared, help=help_text, show_default=default is not None))
    add("force", bool, typer.Option(False, "--force", help="Retrain and replace runs even when an identical one exists."))
    add("progress", bool, typer.Option(True, "--progress/--no-progress", help="Show progress bars."))

    def command(**kwargs: Any) -> None:
        from spunge_merge.config import build_config
        from spunge_merge.models import resolve_model

        ctx = kwargs["ctx"]
        given = {}
        for python_name, (field_name, kind) in settings.items():
            source = ctx.get_parameter_source(python_name)
            if source is None or source.name == "DEFAULT":  # typer's own click copy: compare by name
                continue
            value = kwargs[python_name]
            given[field_name] = _split(value, kind == "list") if kind in ("list", "list-or-scalar") and value is not None else value
        config = build_config(method.config_class, config_file=kwargs["config_file"], overrides=given)
        request = registry.TrainRequest(model=resolve_model(kwargs["model"]), forget=[Path(p) for p in kwargs["forget"]],
                                        out=Path(kwargs["out"]), config=config, retain=[Path(p) for p in kwargs.get("retain") or []],
                                        text_column=kwargs["text_column"], force=kwargs["force"], progress=kwargs["progress"])
        print_runs(method.name, method.train(request), Path(kwargs["out"]))

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = f"{method.summary}\n\n{method.description}"
    app = typer.Typer(add_completion=False)
    app.command(method.name, short_help=method.summary)(command)
    return typer.main.get_command(app)


def print_runs(name: str, outcomes: list, out: Path) -> None:
    """One row per run: its name, whether it was trained or found complete, its steps and last loss."""
    from spunge_merge.provenance import read_provenance

    table = Table(title=f"{name} runs in {out}")
    for column in ("run", "status", "steps", "final loss"):
        table.add_column(column)
    for outcome in outcomes:
        result = (read_provenance(outcome.path) or {}).get("result") or {}
        loss = result.get("final_loss")
        table.add_row(outcome.name, "already done" if outcome.skipped else "trained", str(result.get("steps", "-")),
                      "-" if not isinstance(loss, int | float) else f"{loss:.4g}")
    Console().print(table)
    typer.echo(f"Wrote {len(outcomes)} {name} run(s) to {out}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Hand-written method commands (cli/<name>.py with METHOD_COMMAND) under the record's name and summary."""
    for name in registry.method_names():
        module_name = f"spunge_merge.cli.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        if getattr(module, "METHOD_COMMAND", False):
            module.register(app, groups, registry.get_method(name))
