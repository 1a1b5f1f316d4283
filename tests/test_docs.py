"""The option tables in docs/ are generated from the settings classes: they must not drift."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field

from spunge_merge.config import FrozenConfig
from spunge_merge.docgen import DOCS_DIR, drifted_pages, options_table, render_page
from spunge_merge.unlearn import registry


class _Example(FrozenConfig):
    rate: float = Field(0.5, gt=0, le=1, description="A rate | with a pipe.")
    name: str = Field("x", description="A name.", json_schema_extra={"cli_flags": ["--label", "-l"]})
    on: bool = Field(False, description="A switch.")


def test_a_table_has_one_row_per_setting_with_default_range_and_meaning():
    assert options_table(_Example).splitlines() == [
        "| key (option) | default | range | meaning |",
        "|---|---|---|---|",
        "| `rate` (`--rate`) | 0.5 | > 0, ≤ 1 | A rate \\| with a pipe. |",
        "| `name` (`--label`, `-l`) | x |  | A name. |",
        "| `on` (`--on`) | off |  | A switch. |",
    ]


def test_a_marked_table_is_rewritten_and_text_around_it_is_kept():
    from spunge_merge.unlearn.tvn import TVNConfig

    page = "intro\n<!-- options: spunge_merge.unlearn.tvn:TVNConfig -->\nstale\n<!-- /options -->\nafter\n"
    rendered = render_page(page)
    assert rendered == ("intro\n<!-- options: spunge_merge.unlearn.tvn:TVNConfig -->\n" + options_table(TVNConfig)
                        + "<!-- /options -->\nafter\n")
    assert render_page(rendered) == rendered


def test_the_docs_tables_match_the_settings_classes():
    assert drifted_pages() == [], "run: python -m spunge_merge.docgen"


def test_every_registered_method_has_its_settings_table_in_the_docs():
    marked = set()
    for page in Path(DOCS_DIR).glob("*.md"):
        marked |= set(re.findall(r"<!-- options: ([\w.]+:\w+) -->", page.read_text(encoding="utf-8")))
    for method in registry.all_methods():
        cls = method.config_class
        assert f"{cls.__module__}:{cls.__name__}" in marked, f"{method.name}: no option table for {cls.__name__} in docs/"


def test_every_registered_evaluation_has_its_settings_table_in_the_docs():
    from spunge_merge.evaluate import registry as evaluations
    from spunge_merge.evaluate.compare import CompareConfig

    marked = set()
    for page in Path(DOCS_DIR).glob("*.md"):
        marked |= set(re.findall(r"<!-- options: ([\w.]+:\w+) -->", page.read_text(encoding="utf-8")))
    classes = [evaluation.config_class for evaluation in evaluations.all_evaluations()] + [CompareConfig]
    assert len(classes) >= 6
    for cls in classes:
        assert f"{cls.__module__}:{cls.__name__}" in marked, f"no option table for {cls.__name__} in docs/"


def test_the_split_page_names_every_form_of_by():
    """`--by` / `split.by` forms are declared once (spec.BY_FORMS: the CLI help and the schema join them); the page names each."""
    from spunge_merge.data.discovery.spec import BY_FORMS

    page = (Path(DOCS_DIR) / "split.md").read_text(encoding="utf-8")
    by_row = next(line for line in page.splitlines() if line.startswith("| `--by` |"))
    assert [form for form, _ in BY_FORMS if f"`{form}`" not in by_row] == []
