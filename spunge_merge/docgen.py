"""Option tables in docs/ written from the settings classes, so the docs cannot drift from the code.

A page marks a table with two comments naming a settings class by import path:

    <!-- options: spunge_merge.unlearn.tvn:TVNConfig -->
    ...generated table...
    <!-- /options -->

`python -m spunge_merge.docgen` rewrites every marked table under `docs/`; `--check` only reports
the pages whose table differs from the class (the test suite runs that check). The class is the one
definition: its field names are the YAML keys (the CLI option is the same name with dashes), its
defaults the defaults, its descriptions the meaning.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

MARKER = re.compile(r"(<!-- options: (?P<target>[\w.]+:\w+) -->\n)(?P<body>.*?)(<!-- /options -->)", re.S)
DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"


def _default(field) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "(computed)"
    value = field.default
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value) or "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _constraints(field) -> str:
    """The field's range in words (`> 0`, `≤ 1`), from its pydantic metadata."""
    parts = []
    for item in field.metadata:
        for attr, symbol in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{symbol} {bound:g}" if isinstance(bound, float) else f"{symbol} {bound}")
    return ", ".join(parts)


def options_table(cls: type[BaseModel]) -> str:
    """A markdown table of a settings class: key / CLI option, default, range, meaning."""
    rows = ["| key (option) | default | range | meaning |", "|---|---|---|---|"]
    for name, field in cls.model_fields.items():
        key = field.alias or name
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags = ", ".join(f"`{flag}`" for flag in extra.get("cli_flags") or [f"--{key.replace('_', '-')}"])
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{key}` ({flags}) | {_default(field)} | {_constraints(field)} | {description} |")
    return "\n".join(rows) + "\n"


def _resolve(target: str) -> type[BaseModel]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def render_page(text: str) -> str:
    """`text` with every marked table regenerated."""
    def replace(match: re.Match) -> str:
        return match.group(1) + options_table(_resolve(match.group("target"))) + match.group(4)

    return MARKER.sub(replace, text)


def drifted_pages(docs_dir: Path = DOCS_DIR) -> list[Path]:
    """Pages whose marked tables differ from what their classes generate."""
    pages = sorted(docs_dir.glob("*.md"))
    return [page for page in pages if render_page(text := page.read_text(encoding="utf-8")) != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drifted pages and exit 1 instead of rewriting them")
    parser.add_argument("--docs", type=Path, default=DOCS_DIR, help="the docs folder (default: the repository's docs/)")
    args = parser.parse_args(argv)
    drifted = drifted_pages(args.docs)
    if args.check:
        for page in drifted:
            print(f"{page}: option table out of date (run: python -m spunge_merge.docgen)")
        return 1 if drifted else 0
    for page in drifted:
        page.write_text(render_page(page.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"updated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
