"""The offline demo (`spunge demo`): its facts (facts.jsonl, written by make_facts.py), its pipeline
(pipeline.yaml) and what the command prints.

The demo runs three seeds, because one seed's Spunge − baseline gap on ~40 held-out facts per
domain is within noise: `demo_text` shows the per-domain table as means over seeds (min–max),
Spunge − baseline on the forget and keep averages with their 95 % intervals, and the verdict,
which says only what those intervals support.
"""

from __future__ import annotations

from typing import Any

HEADLINE = ("forget avg", "keep avg")


def demo_text(aggregate: dict[str, Any], *, report: str | None = None) -> str:
    """Markdown of a seeded demo run's aggregate (`report.json` content); empty when there is none."""
    from spunge_merge.pipeline.seeds import differences_table, knowledge_table

    if not aggregate or not aggregate.get("models"):
        return ""
    seeds = aggregate["seeds"]
    parts = [f"# spunge demo: {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             f"Held-out facts completed correctly, mean over seeds (min–max); forgotten: {', '.join(aggregate['forget'])}.", "",
             knowledge_table(aggregate),
             "Spunge − baseline, mean over seeds with a 95 % bootstrap interval over seeds and facts "
             "(helps/hurts: the interval excludes 0; level: it includes 0):", "",
             differences_table(aggregate, HEADLINE)]
    if aggregate.get("verdict"):
        parts += [f"**{aggregate['verdict']}**", ""]
    if report:
        parts += [f"Full report (every figure, every seed): `{report}`", ""]
    return "\n".join(parts)
