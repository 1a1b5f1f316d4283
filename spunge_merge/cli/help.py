"""`--help` for every spunge command, rendered here once: words as metavars, options in panels, the terminal's width.

Typer's own rich help shows Python types as metavars (`<list[str]>`, `<bool>` on every flag), an
argument as `{data}` in the usage line, and five narrow columns that leave the descriptions about 22
characters at 80 columns. Rather than edit every option by hand, the root group gives each command it
returns (and, through nested groups, theirs) this module's `format_help`:

- metavars read as words from the option's type: TEXT, INTEGER, FLOAT, PATH, `PATH...` for a
  repeatable one, the choices for a Literal; flags have none;
- options sit in the panel their declaration names (`rich_help_panel`; the generated method and
  evaluation options get theirs from `cli.unlearn.panel_of`), the rest under "Options";
- required options carry `*` and `[required]`; defaults and ranges (`[range: ...]`) follow the help;
- paragraphs are joined and wrapped at the terminal's width (`COLUMNS`), names and metavar in one
  narrow column, so the description keeps most of the line;
- a group lists its commands in the order of the work (`COMMAND_ORDER`), then any others.
"""

from __future__ import annotations

import inspect
import io
import shutil
import types
import typing
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

COMMAND_ORDER = ("split", "unlearn", "negate", "materialize", "merge", "eval", "push", "run", "demo")
PANEL_ORDER = ("Data", "LoRA", "Optimizer", "Loss", "Output and runtime")  # the generated method options' panels (cli/unlearn.py)
_WORDS = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH", bool: ""}
_MIN_WIDTH = 60


def terminal_width() -> int:
    """The terminal's width (`COLUMNS` when set), at least 60 characters."""
    return max(_MIN_WIDTH, shutil.get_terminal_size((80, 24)).columns)


def metavar(param: Any) -> str:
    """The option's value as a word: TEXT, INTEGER, FLOAT, PATH (+ `...` when repeatable), a Literal's
    choices, nothing for a flag."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", str)
    args = [a for a in (typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType)
                        else (annotation,)) if a is not type(None)]
    inner = args[0] if args else str
    repeat = False
    if typing.get_origin(inner) in (list, tuple):
        repeat = True
        inner = (typing.get_args(inner) or (str,))[0]
    if typing.get_origin(inner) is typing.Literal:
        choices = "|".join(str(v) for v in typing.get_args(inner))
        word = choices if len(choices) <= 24 else "CHOICE"
    elif getattr(descriptor, "is_choice", False) and getattr(descriptor, "choices", None):
        choices = "|".join(str(getattr(c, "value", c)) for c in descriptor.choices)
        word = choices if len(choices) <= 24 else "CHOICE"
    else:
        word = next((w for t, w in _WORDS.items() if isinstance(inner, type) and issubclass(inner, t)), "TEXT")
        if isinstance(inner, type) and issubclass(inner, Path):
            word = "PATH"
    repeat = repeat or bool(getattr(param, "multiple", False)) or getattr(param, "nargs", 1) not in (1, None)
    return word + ("..." if repeat and word else "")


def _paragraphs(text: str | None) -> list[str]:
    """A docstring as paragraphs, each one line (hard breaks kept only before list items)."""
    if not text:
        return []
    found = []
    for block in inspect.cleandoc(text).split("\n\n"):
        lines = [line.strip() for line in block.replace("\b\n", "").splitlines() if line.strip()]
        if not lines:
            continue
        joined = lines[0]
        for line in lines[1:]:
            joined += ("\n" if line.startswith(("- ", "* ", "• ")) else " ") + line
        found.append(joined)
    return found


def _default(param: Any) -> str | None:
    if not getattr(param, "show_default", True) or getattr(param, "required", False):
        return None
    value = getattr(param, "default", None)
    if callable(value) or value is None or value == [] or value == () or value == "":
        return None
    if getattr(param, "is_flag", False):
        if getattr(param, "secondary_opts", None):
            names = param.opts if value else param.secondary_opts
            return names[0].lstrip("-") if names else None
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(getattr(value, "value", value))


def _names(param: Any) -> str:
    if getattr(param, "param_type_name", "") == "argument":
        return metavar_of_argument(param)
    opts = sorted(param.opts, key=lambda o: (o.startswith("--"), o))  # -m, --model
    lines = [", ".join(opts)]
    if getattr(param, "secondary_opts", None):
        lines.append(", ".join(o.strip() for o in param.secondary_opts if o.strip()))
    return "\n".join(lines)


def metavar_of_argument(param: Any) -> str:
    name = (getattr(param, "metavar", None) or param.name or "ARG").upper()
    return name + ("..." if getattr(param, "nargs", 1) == -1 else "")


def _range(param: Any) -> str | None:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is None and high is None:
        return None
    if low is not None and high is not None:
        return f"{low} to {high}"
    return f">= {low}" if low is not None else f"<= {high}"


def _param_row(param: Any) -> tuple[Text, Text, Text]:
    required = bool(getattr(param, "required", False))
    help_text = " ".join(_paragraphs(getattr(param, "help", None) or "")).replace("\n", " ")
    starred = required or "[required unless " in help_text  # required but for an alternative (merge's --base unless --recipe)
    lines = _names(param).splitlines()
    names = Text("\n".join([("* " if starred else "  ") + lines[0], *("  " + line for line in lines[1:])]))
    word = Text(metavar(param))
    extra = []
    if (default := _default(param)) is not None:
        extra.append(f"[default: {default}]")
    if (span := _range(param)) is not None:
        extra.append(f"[range: {span}]")
    if required:
        extra.append("[required]")
    return names, word, Text(" ".join([help_text, *extra]).strip())


def _panel(title: str, rows: list[tuple[Text, ...]], width: int) -> Panel:
    table = Table(show_header=False, box=None, padding=(0, 1), expand=True, pad_edge=False)
    names_width = min(max((max(len(line) for line in row[0].plain.splitlines()) for row in rows), default=8), max(16, width // 3))
    table.add_column(no_wrap=False, width=names_width, overflow="fold")
    if len(rows[0]) == 3:
        word_width = min(max((len(row[1].plain) for row in rows), default=0), 16)
        table.add_column(no_wrap=False, width=word_width, overflow="fold")
    table.add_column(ratio=1, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return Panel(table, title=title, title_align="left", box=box.ROUNDED, padding=(0, 1))


def _panel_rank(title: str) -> int:
    """Panels in the order of `PANEL_ORDER`; others where they first appear (a stable sort), "Options" last."""
    if title in PANEL_ORDER:
        return PANEL_ORDER.index(title)
    return len(PANEL_ORDER) + (1 if title == "Options" else 0)


def render_help(command: Any, ctx: Any) -> str:
    """The whole help page of `command` as text, at the terminal's width."""
    width = terminal_width()
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, highlight=False,
                      markup=False, emoji=False, legacy_windows=False)
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    arguments = [p for p in params if getattr(p, "param_type_name", "") == "argument"]
    options = [p for p in params if getattr(p, "param_type_name", "") == "option"]
    is_group = hasattr(command, "list_commands")
    usage = [ctx.command_path] + (["[OPTIONS]"] if options else [])
    usage += [metavar_of_argument(a) if a.required else f"[{metavar_of_argument(a)}]" for a in arguments]
    if is_group:
        usage.append("COMMAND [ARGS]...")
    parts: list[Any] = [Text("Usage: " + " ".join(usage)), Text("")]
    for paragraph in _paragraphs(command.help):
        parts += [Text(paragraph), Text("")]
    if arguments:
        parts.append(_panel("Arguments", [(Text(("* " if a.required else "  ") + metavar_of_argument(a)),
                                           Text(" ".join(_paragraphs(getattr(a, "help", None) or "")))) for a in arguments], width))
    panels: dict[str, list] = {}
    for option in options:
        panels.setdefault(getattr(option, "rich_help_panel", None) or "Options", []).append(_param_row(option))
    for title, rows in sorted(panels.items(), key=lambda kv: _panel_rank(kv[0])):
        parts.append(_panel(title, rows, width))
    if is_group:
        rows = []
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            summary = sub.short_help or (_paragraphs(sub.help) or [""])[0]
            rows.append((Text(name), Text(summary.replace("\n", " "))))
        if rows:
            parts.append(_panel("Commands", rows, width))
    for paragraph in _paragraphs(getattr(command, "epilog", None)):
        parts += [Text(paragraph)]
    console.print(Group(*parts))
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"


def field_range(metadata: list) -> str | None:
    """A settings field's valid range from its constraints (ge, gt, le, lt), as help shows it: `>= 1`, `0 < x <= 1`."""
    bounds = {name: getattr(item, name) for item in metadata for name in ("ge", "gt", "le", "lt")
              if getattr(item, name, None) is not None}
    low = f"{bounds['ge']:g} <=" if "ge" in bounds else f"{bounds['gt']:g} <" if "gt" in bounds else None
    high = f"<= {bounds['le']:g}" if "le" in bounds else f"< {bounds['lt']:g}" if "lt" in bounds else None
    if low and high:
        return f"{low} x {high}"
    if low:
        return ">= " + low[:-3] if low.endswith("<=") else "> " + low[:-2]
    return high


def _order(names: list[str]) -> list[str]:
    return [n for n in COMMAND_ORDER if n in names] + [n for n in names if n not in COMMAND_ORDER]


class SpungeHelp:
    """Mixed into the root group: `--help` is `render_help`; the commands it returns get the same
    (`with_spunge_help`), and it lists them in the order of the work."""

    def format_help(self, ctx, formatter) -> None:
        formatter.write(render_help(self, ctx))

    def get_command(self, ctx, name: str):
        return with_spunge_help(super().get_command(ctx, name))  # type: ignore[misc]

    def list_commands(self, ctx) -> list[str]:
        return _order(list(super().list_commands(ctx)))  # type: ignore[misc]


_CLASSES: dict[type, type] = {}


def with_spunge_help(command: Any) -> Any:
    """`command` with spunge's help page (and, for a group, the same for what it returns); None stays None.

    Done by giving the object a one-level subclass of its own class (click's command classes take no
    mixin base on an existing object), made once per class."""
    if command is None or getattr(command, "_spunge_help", False):
        return command
    cls = type(command)
    if cls not in _CLASSES:
        members: dict[str, Any] = {"__module__": __name__, "__slots__": (), "_spunge_help": True,
                                   "format_help": lambda self, ctx, formatter: formatter.write(render_help(self, ctx))}
        if hasattr(cls, "list_commands"):
            members["get_command"] = lambda self, ctx, name: with_spunge_help(cls.get_command(self, ctx, name))
            members["list_commands"] = lambda self, ctx: _order(list(cls.list_commands(self, ctx)))
        _CLASSES[cls] = type(f"Spunge{cls.__name__}", (cls,), members)
    command.__class__ = _CLASSES[cls]
    return command
