"""Derived facts files: a model's facts with some domains' training facts capped (unequal subsets,
`models.<model>.train_rows`), or a forget set's domains grouped into subsets (more subsets, `pairs:` entries with
`subsets`); the two combine (the grouping is derived from the capped file).

Why a derived file and not a `where` filter: the cell's every reader (the split, the retain data, the knowledge
and perplexity evaluations, the read-out's size predictor) takes the facts file as it is, and the runs folder is
keyed by its stem (`bench/frontiers.py` `cell_dir`), so a capped cell never reuses the whole cell's runs.

The cap keeps N of a domain's `part == train` rows, chosen by a fixed seeded sample (`CAP_SEED`, per domain): the
same rows for every training seed and both arms (the seed varies the training, not the data). Held-out rows and
every other domain's rows are copied byte for byte, in their order. The file is
`<runs>/derived/<facts stem>-<domain><N>[-...]-<first 8 hex of the original's sha256>.jsonl`, written atomically,
with `<same name>.json` beside it recording the original, its full sha256, the caps, the seed and the rows kept:
an edited original gets a new name, so its runs never mix with the old ones'.

Grouped subsets: the split stage splits by one column's values, and a subset of two domains is no value of
`domain`. So the forgotten domains' rows (train and held-out alike) get a `subset` column, their subset's name
(`frontiers_plan.subset_name`: the domains joined with `_`), and the cell splits `by: subset`; the kept domains'
rows are copied byte for byte without it (the split counts them as `rows_without_value` and writes no subset of
them). The file is `<runs>/derived/<facts stem>-subsets-<name>-<name>[...]-<sha8 of its source>.jsonl`, its record
beside it; the runs folder is keyed by its stem, so a grouped cell never shares the ungrouped cell's runs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAP_SEED = 0
SUBSET_COLUMN = "subset"


def capped_facts(plan: dict, model: str, facts: Path) -> Path:
    """The facts file a model's cells use: `facts` itself, or, where the model's entry caps some domain's training
    rows (`train_rows: {DOMAIN: N}`), the derived file (written once, then reused)."""
    from spunge_merge.fsutil import atomic_write_text, sha256_file, write_json

    caps = plan["models"][model].get("train_rows")
    if not caps:
        return facts
    where = f"{plan.get('_file', 'the plan')}: models.{model}.train_rows"
    lines = [line for line in facts.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines]
    train = train_counts(rows)
    check_caps(caps, train, where, facts)
    digest = sha256_file(facts)
    name = f"{facts.stem}-{'-'.join(f'{d}{n}' for d, n in sorted(caps.items()))}-{digest[:8]}"
    out = plan["runs"] / "derived" / f"{name}.jsonl"
    if out.is_file():
        return out
    keep = kept_lines(rows, caps)
    atomic_write_text(out, "".join(line + "\n" for line, wanted in zip(lines, keep, strict=True) if wanted))
    kept = train_counts([row for row, wanted in zip(rows, keep, strict=True) if wanted])
    write_json(out.with_suffix(".json"), {"source": facts.name, "source_sha256": digest, "train_rows": dict(caps),
                                          "seed": CAP_SEED, "train_rows_before": train, "train_rows_after": kept})
    return out


def check_caps(caps: object, train: dict[str, int], where: str, facts: Path) -> None:
    """Each cap names a domain of the file and a whole number from 1 to one less than its training rows."""
    from spunge_merge.errors import SpungeError

    if not isinstance(caps, dict):
        raise SpungeError(f"{where}: a mapping DOMAIN: N (rows of that domain's training facts to keep)")
    for domain, n in caps.items():
        if domain not in train:
            raise SpungeError(f"{where}.{domain}: not a domain with training facts in {facts.name} "
                              f"(its domains: {', '.join(sorted(train))})")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpungeError(f"{where}.{domain}: {n!r}: a whole number of training rows, at least 1")
        if n >= train[domain]:
            raise SpungeError(f"{where}.{domain}: {n}: nothing to cap, {facts.name} has {train[domain]} training rows "
                              f"of {domain}; give fewer")


def train_counts(rows: list[dict]) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in rows:
        if row.get("part") == "train":
            found[row["domain"]] = found.get(row["domain"], 0) + 1
    return found


def kept_lines(rows: list[dict], caps: dict[str, int]) -> list[bool]:
    """Per row, whether the derived file keeps it: every row but the training rows of a capped domain left out of
    its seeded sample of N (`random.Random(CAP_SEED)` per domain: capping another domain too changes no choice)."""
    keep = [True] * len(rows)
    for domain, n in caps.items():
        positions = [i for i, row in enumerate(rows) if row.get("part") == "train" and row["domain"] == domain]
        chosen = set(random.Random(CAP_SEED).sample(positions, n))
        for i in positions:
            keep[i] = i in chosen
    return keep


def grouped_facts(plan: dict, facts: Path, subsets: tuple[tuple[str, ...], ...]) -> Path:
    """The facts file a grouped forget set's cell uses: `facts` itself where each domain is its own subset (`subsets`
    is ()), else the derived file with the `subset` column on the forgotten domains' rows (written once, then reused)."""
    from frontiers_plan import subset_name

    from spunge_merge.errors import SpungeError
    from spunge_merge.fsutil import atomic_write_text, sha256_file, write_json

    if not subsets:
        return facts
    digest = sha256_file(facts)
    names = [subset_name(group) for group in subsets]
    out = plan["runs"] / "derived" / f"{facts.stem}-subsets-{'-'.join(names)}-{digest[:8]}.jsonl"
    if out.is_file():
        return out
    of = {domain: name for group, name in zip(subsets, names, strict=True) for domain in group}
    written, counts = [], dict.fromkeys(names, 0)
    for line in facts.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if SUBSET_COLUMN in row:
            raise SpungeError(f"{facts.name}: already has a `{SUBSET_COLUMN}` column, which a grouped forget set writes")
        if row["domain"] in of:
            counts[of[row["domain"]]] += row.get("part") == "train"
            line = json.dumps({**row, SUBSET_COLUMN: of[row["domain"]]}, ensure_ascii=False)
        written.append(line + "\n")
    atomic_write_text(out, "".join(written))
    write_json(out.with_suffix(".json"), {"source": facts.name, "source_sha256": digest, "column": SUBSET_COLUMN,
                                          "subsets": {n: list(g) for n, g in zip(names, subsets, strict=True)},
                                          "train_rows": counts})
    return out
