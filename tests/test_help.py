"""`--help` of every spunge command at 80 columns: words as metavars, no braces, commands in workflow order,
panels for the method options, required options marked, ranges from the settings classes, full-width text."""

from __future__ import annotations

import re

import pytest
import typer.main
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.unlearn.registry import get_method

WORKFLOW = ["split", "unlearn", "negate", "materialize", "merge", "eval", "push", "run", "demo"]


def _help(*args: str, columns: int = 80) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _all_commands() -> list[tuple[str, ...]]:
    """Every command path, nested groups included (found through the click tree, not listed by hand)."""
    root = typer.main.get_command(app)
    ctx = root.make_context("spunge", ["--help"], resilient_parsing=True)
    found = []

    def walk(group, path, ctx):
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            found.append((*path, name))
            if hasattr(command, "list_commands"):
                walk(command, (*path, name), ctx)
    walk(root, (), ctx)
    return found


def _panel_rows(text: str, title: str) -> str:
    """The text of one panel (between its title line and its bottom border)."""
    start = text.index(f"╭─ {title} ")
    return text[start:text.index("╰", start)]


def test_root_help_lists_commands_in_workflow_order_at_full_width():
    text = _help()
    commands = _panel_rows(text, "Commands")
    names = [m.group(1) for m in re.finditer(r"^│ (\w+) ", commands, flags=re.MULTILINE)]
    assert names == WORKFLOW
    assert all(len(line) <= 80 for line in text.splitlines())
    # a command's description is its whole first paragraph, wrapped only by the panel
    run_rows = commands[commands.index("│ run "):commands.index("│ demo ")]
    joined = " ".join(line.strip("│ ").removeprefix("run").strip() for line in run_rows.splitlines())
    assert ("Run a whole Spunge experiment from one file: split, unlearn each subset, unlearn the un-split baseline "
            "with the same budget") in joined


@pytest.mark.parametrize("path", _all_commands(), ids=" ".join)
def test_every_help_page_reads_as_words(path):
    text = _help(*path)
    for python_type in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list[", "<Path>"):
        assert python_type not in text, python_type
    usage = next(line for line in text.splitlines() if line.startswith("Usage:"))
    assert "{" not in usage and "}" not in usage
    assert all(len(line) <= 80 for line in text.splitlines())


def test_split_help_keeps_the_descriptions_wide_at_80_columns():
    text = _help("split")
    assert "Usage: spunge split [OPTIONS] DATA" in text or re.search(r"Usage: \S+ split \[OPTIONS\] DATA", text)
    by_line = next(line for line in text.splitlines() if "--by " in line)
    assert by_line.index("What defines") <= 36  # the description starts before a third of the line...
    assert len(by_line.rstrip("│ ")) >= 70  # ...and runs to its end (typer's layout left it about 22 characters)
    assert re.search(r"--where\s+TEXT\.\.\.", text) and re.search(r"--seed\s+INTEGER", text)
    assert re.search(r"--min-confidence\s+FLOAT", text) and re.search(r"--out\s+PATH", text)
    assert re.search(r"│   --force\s+Replace", text)  # a flag has no metavar


def test_method_options_sit_in_panels_with_their_ranges_and_required_marks():
    text = _help("unlearn", "npo")
    titles = re.findall(r"╭─ ([\w ]+?) ─", text)
    assert titles == ["Data", "LoRA", "Optimizer", "Loss", "Output and runtime", "Options"]
    assert "--rank" in _panel_rows(text, "LoRA") and "--lr " in _panel_rows(text, "Optimizer")
    assert "--beta" in _panel_rows(text, "Loss") and "--seed" in _panel_rows(text, "Output and runtime")
    config = get_method("npo").config_class
    rank_low = next(m.ge for m in config.model_fields["rank"].metadata if getattr(m, "ge", None) is not None)
    beta_low = next(m.gt for m in config.model_fields["beta"].metadata if getattr(m, "gt", None) is not None)
    loss = " ".join(_panel_rows(text, "Loss").split())
    assert f"[range: > {beta_low:g}]" in loss
    lora = " ".join(_panel_rows(text, "LoRA").split())
    assert f"LoRA rank r. [range: >= {rank_low:g}]" in lora
    assert re.search(r"\* -m, --model\s+TEXT", text) and "[required]" in _panel_rows(text, "Data")
    assert re.search(r"\* -b, --base", _help("merge"))  # required unless --recipe


def test_help_follows_the_terminal_width():
    narrow, wide = _help("unlearn", "npo"), _help("unlearn", "npo", columns=120)
    assert max(len(line) for line in wide.splitlines()) == 120
    assert len(wide.splitlines()) < len(narrow.splitlines())
