"""`spunge split`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from spunge_merge.data.split import split_dataset


def split_command(
    data: str = typer.Argument(..., help="A .jsonl/.json/.csv/.parquet file, a saved `datasets` directory, or a Hub dataset id."),
    by: str = typer.Option(..., "--by", help="Column whose values define the subsets (e.g. target_group)."),
    where: list[str] = typer.Option([], "--where", help="Row filter COLUMN OP VALUE (>= <= > < == != in, not in); "
                                    "repeat to AND several, e.g. --where 'toxicity_human >= 3'."),
    values: str = typer.Option(None, "--values", help="Comma-separated values to keep, in this order (default: all)."),
    text_column: str = typer.Option(None, "--text-column", help="Column holding the text (default: 'text' if present)."),
    out: Path = typer.Option(Path("split"), "--out", help="Output directory: one file per value plus manifest.json."),
    fmt: str = typer.Option("jsonl", "--format", help="Subset file format: jsonl or parquet."),
    hub_split: str = typer.Option("train", "--split", help="Dataset split to read when DATA is a Hub id or a DatasetDict."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output directory."),
) -> None:
    """Split a dataset into one subset per attribute value, after filtering."""
    wanted = [v.strip() for v in values.split(",") if v.strip()] if values else None
    result = split_dataset(data, by=by, out=out, where=where, values=wanted, text_column=text_column,
                           fmt=fmt, force=force, hub_split=hub_split)
    table = Table(title=f"{by}: {result.rows_after_filter} of {result.rows_in} rows after filters")
    table.add_column(by)
    table.add_column("rows", justify="right")
    for value, count in result.counts.items():
        table.add_row(value, str(count))
    Console().print(table)
    typer.echo(f"Wrote {len(result.counts)} subsets to {result.out}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("split")(split_command)
