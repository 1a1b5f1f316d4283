"""`spunge split`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from spunge_merge.data.discovery import build_by
from spunge_merge.data.discovery.spec import ClassifierSpec, ClusterSpec, by_forms_text
from spunge_merge.data.split import split_dataset

_BY_HELP = f"What defines the subsets: {by_forms_text()}."


def _help(applies: str, spec, field: str, form: str | None = None, default: str | None = None) -> str:
    """An option's help is the setting's own description (one definition), with its default."""
    info = spec.model_fields[field]
    if default is None:
        default = "none" if info.default is None else info.default
        default = "-".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{applies}: {info.description} ({f'{form}; ' if form else ''}default: {default})"


def split_command(
    data: str = typer.Argument(..., help="A .jsonl/.json/.csv/.parquet file, a saved `datasets` directory, or a Hub dataset id."),
    by: str = typer.Option(..., "--by", help=_BY_HELP),
    where: list[str] = typer.Option([], "--where", help="Row filter COLUMN OP VALUE (>= <= > < == != in, not in); "
                                    "repeat to AND several, e.g. --where 'toxicity_human >= 3'. Applied before discovery, "
                                    "after numbering the rows of block:N."),
    values: str = typer.Option(None, "--values", help="Comma-separated values to keep, in this order (default: all)."),
    text_column: str = typer.Option(None, "--text-column", help="Column holding the text (default: 'text' if present)."),
    out: Path = typer.Option(Path("split"), "--out", help="Output directory: one file per value plus manifest.json."),
    fmt: str = typer.Option("jsonl", "--format", help="Subset file format: jsonl or parquet."),
    hub_split: str = typer.Option("train", "--split", help="Dataset split to read when DATA is a Hub id or a DatasetDict."),
    force: bool = typer.Option(False, "--force", help="Replace an output directory spunge wrote (never a folder of yours, nor an input)."),
    seed: int = typer.Option(None, "--seed", help=_help("cluster", ClusterSpec, "seed")),
    k_range: str = typer.Option(None, "--k-range", help=_help("cluster", ClusterSpec, "k_range", "LOW-HIGH")),
    embedding_model: str = typer.Option(None, "--embedding-model", help=_help("cluster", ClusterSpec, "model")),
    labels: str = typer.Option(None, "--labels", help=_help("classifier", ClassifierSpec, "labels", "comma-separated")),
    min_confidence: float = typer.Option(None, "--min-confidence", help=_help("classifier", ClassifierSpec, "threshold")),
    unsure: str = typer.Option(None, "--unsure", help=_help("classifier", ClassifierSpec, "unsure")),
    hypothesis: str = typer.Option(None, "--hypothesis", help=_help("classifier", ClassifierSpec, "hypothesis")),
    truth: str = typer.Option(None, "--truth", help=_help("cluster/classifier", ClusterSpec, "truth")),
    label_column: str = typer.Option(None, "--label-column", help=_help("cluster/classifier/block", ClusterSpec, "column",
                                                                        default="cluster / predicted_label / block")),
    batch_size: int = typer.Option(None, "--batch-size", help=_help("cluster/classifier", ClusterSpec, "batch_size")),
    report: bool = typer.Option(True, "--report/--no-report",
                                help="cluster/classifier: write report.md and map.png (2-D map by subset) into --out."),
) -> None:
    """Split a dataset into one subset per attribute value, after filtering; or discover the attribute first."""
    spec = build_by(by, {"seed": seed, "k_range": k_range, "embedding_model": embedding_model, "labels": labels,
                         "threshold": min_confidence, "unsure": unsure, "hypothesis": hypothesis, "truth": truth,
                         "column": label_column, "batch_size": batch_size})
    wanted = [v.strip() for v in values.split(",") if v.strip()] if values else None
    result = split_dataset(data, by=spec, out=out, where=where, values=wanted, text_column=text_column,
                           fmt=fmt, force=force, hub_split=hub_split, report=report)
    console = Console()
    if result.discovery is not None:
        _print_discovery(console, result)
    else:
        table = Table(title=f"{result.column}: {result.rows_after_filter} of {result.rows_in} rows after filters")
        table.add_column(result.column)
        table.add_column("rows", justify="right")
        for value, count in result.counts.items():
            table.add_row(value, str(count))
        console.print(table)
        if (blocks := result.blocks) is not None:
            tail = "" if blocks["last_block_rows"] == blocks["size"] else f"; the last holds {blocks['last_block_rows']}"
            console.print(f"{blocks['rows_numbered']} rows numbered in the source's order before the filters: "
                          f"{blocks['blocks']} blocks of {blocks['size']}{tail}")
    typer.echo(f"Wrote {len(result.counts)} subsets to {result.out}")


def _print_discovery(console: Console, result) -> None:
    record = result.discovery.record
    if record["method"] == "cluster":
        scores = ", ".join(f"K={k}: {s}" for k, s in record["silhouette"].items())
        console.print(f"silhouette ({'K given' if record['k_given'] else 'K chosen'} = {record['k']}): {scores}")
    else:
        console.print(f"{record['unsure_rows']} rows below confidence {record['threshold']} ({record['unsure']})")
    if agree := record.get("agreement"):
        console.print(f"agreement with '{record['truth']}': ARI {agree['ari']}, purity {agree['purity']} ({agree['rows']} rows)")
    table = Table(title=f"{result.column}: {result.rows_after_filter} of {result.rows_in} rows after filters")
    for name, justify in ((result.column, "left"), ("rows", "right"), ("top terms", "left"), ("example", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for subset in result.discovery.subsets:
        if subset["value"] not in result.counts:
            continue
        example = " ".join(subset["examples"][0].split())[:100] if subset["examples"] else ""
        table.add_row(subset["value"], str(result.counts[subset["value"]]), ", ".join(subset["terms"][:6]), example)
    console.print(table)
    report = result.out / "report.md"
    if report.is_file():
        console.print(f"report with three examples per subset and a 2-D map: {report}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("split")(split_command)
