"""`split`: the unlearning data as one file per subset (`spunge split`'s layout), and the retain data.

In a loss method's question/answer form (`prompt_column`, `answer_column`: TOFU) the retain file keeps
each row's prompt and answer beside its text, so that training reads the retain rows as pairs too.
"""

from __future__ import annotations

import json
from typing import Any

from spunge_merge.card import RETAIN_SOURCES_SUFFIX
from spunge_merge.data.discovery import BlockBy
from spunge_merge.data.loading import SPLIT_MANIFEST
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, atomic_write_text, read_json, write_json
from spunge_merge.pipeline import inputs
from spunge_merge.pipeline.schema import DataRef
from spunge_merge.pipeline.stages.common import FORMAT, Context, run_stage
from spunge_merge.provenance import fingerprint


def stage_split(ctx: Context) -> dict[str, Any]:
    section = ctx.pipeline.split
    retain = ctx.pipeline.unlearn.retain or []
    if section.subsets is None:
        data = inputs.identity(section.data, ctx.base_dir)
    else:
        data = {name: inputs.identity(ref, ctx.base_dir) for name, ref in section.subsets.items()}
    pairs = pair_columns(ctx.pipeline.unlearn.config) if retain else ()
    fp = fingerprint(format=FORMAT, split=section.model_dump(mode="json", by_alias=True), data=data,
                     retain=[inputs.identity(ref, ctx.base_dir) for ref in retain], **({"retain_pairs": list(pairs)} if pairs else {}))
    outputs = [ctx.split_dir / SPLIT_MANIFEST] + ([ctx.retain_file] if retain else [])

    def work() -> dict[str, Any]:
        if section.subsets is None:
            _split_by_column(ctx)
        else:
            _split_from_sources(ctx)
        if retain:
            _write_retain(ctx, retain, pairs)
        manifest = read_json(ctx.split_dir / SPLIT_MANIFEST)
        counts = {entry["value"]: entry["rows"] for entry in manifest["subsets"]}
        return {"detail": ", ".join(f"{v} {n}" for v, n in counts.items()), "rows": counts}

    return run_stage(ctx, "split", fp, outputs, work)


def _split_by_column(ctx: Context) -> None:
    from spunge_merge.data.split import split_dataset

    section = ctx.pipeline.split
    ref = section.data
    if isinstance(section.by, BlockBy) and ref.config is not None:  # the configuration's rows as they come, numbered, then filtered
        source = ctx.inputs_dir / "forget.jsonl"
        inputs.write_table(ref, ctx.base_dir, source, filtered=False)
        split_dataset(source, by=section.by, out=ctx.split_dir, where=ref.where, values=section.values, text_column=ref.text_column,
                      force=True, progress=False)
    elif ref.config is not None or ref.limit is not None:  # Hub configuration or a row limit: write the rows first
        source = ctx.inputs_dir / "forget.jsonl"
        inputs.write_rows(ref, ctx.base_dir, source)
        split_dataset(source, by=section.by, out=ctx.split_dir, values=section.values, text_column="text", force=True,
                      progress=False)
    else:  # `by` a column, or how to discover one (clusters, a classifier): split_dataset handles both
        split_dataset(ctx.path(ref.path), by=section.by, out=ctx.split_dir, where=ref.where, values=section.values,
                      text_column=ref.text_column, force=True, hub_split=ref.hub_split, progress=False)


def _split_from_sources(ctx: Context) -> None:
    """`split.subsets`: one data source per subset, laid out as a `spunge split` directory."""
    from spunge_merge import __version__
    from spunge_merge.data.split import safe_name

    section = ctx.pipeline.split
    with atomic_output_dir(ctx.split_dir, force=True) as tmp:
        entries = []
        for name, ref in section.subsets.items():
            file = f"{safe_name(name)}.jsonl"
            rows = inputs.write_rows(ref, ctx.base_dir, tmp / file, texts_only=True)
            entries.append({"value": name, "name": safe_name(name), "file": file, "rows": rows})
        write_json(tmp / SPLIT_MANIFEST, {
            "kind": "split", "spunge_version": __version__, "column": section.attribute, "text_column": "text", "format": "jsonl",
            "source": {name: inputs.identity(ref, ctx.base_dir) for name, ref in section.subsets.items()},
            "filters": [], "values": list(section.subsets), "subsets": entries,
            "rows_after_filter": sum(e["rows"] for e in entries),
        })


def pair_columns(config: Any) -> tuple[str, ...]:
    """(prompt column, answer column) of a loss method's question/answer form, else ()."""
    columns = (getattr(config, "prompt_column", None), getattr(config, "answer_column", None))
    return columns if all(columns) else ()


def _write_retain(ctx: Context, refs: list[DataRef], pairs: tuple[str, ...]) -> None:
    """All retain sources as one text file (RMU uses one retain set for every run), with the `pairs` columns of
    the sources that hold them; every source must then hold them, or none (one file, one way to read it)."""
    parts, paired = [], []
    for i, ref in enumerate(refs):
        part = ctx.inputs_dir / f".retain-{i}.jsonl"
        inputs.write_rows(ref, ctx.base_dir, part, texts_only=True, keep=pairs)
        text = part.read_text(encoding="utf-8")
        parts.append(text)
        paired.append(set(pairs) <= set(json.loads(text.partition("\n")[0])))
        part.unlink()
    if pairs and any(paired) and not all(paired):
        lacking = ", ".join(ref.path for ref, has in zip(refs, paired, strict=True) if not has)
        raise SpungeError(f"unlearn.retain: {lacking} lacks the columns {' and '.join(pairs)} that the other retain sources hold "
                          "(unlearn.config.prompt_column/answer_column); give retain sources of one form")
    atomic_write_text(ctx.retain_file, "".join(parts))
    # What the rows came from, for the model card (the runs record only this file): the sources as written, filters.
    sources = [{"path": ref.path, "where": list(ref.where), "limit": ref.limit} for ref in refs]
    atomic_write_text(ctx.retain_file.with_suffix(RETAIN_SOURCES_SUFFIX),
                      json.dumps({"kind": "retain-sources", "sources": sources}, indent=2) + "\n")

