"""Knowledge probe: does the model still complete facts of each domain?

Each fact is a prompt ("The capital of France is") and a short answer ("Paris"). The model
completes the prompt greedily; the fact counts as known when the completion starts with the
answer (case-insensitive, after an optional article or quote) and the answer is not just the
start of a longer word ("C" does not match "carbon"). Accuracy is reported per domain, which is
the attribute a knowledge-removal pipeline splits on: forgotten domains should drop, kept ones
should hold.

Output (into `out/`): `knowledge.json` (kind "knowledge": per-domain and overall accuracy, the
facts file's sha256, the settings) and `knowledge.jsonl` (every prompt, answer, completion and
verdict), each written atomically.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_write_text, write_json
from spunge_merge.models import ResolvedModel, load_causal_lm, load_tokenizer, resolve_model

KNOWLEDGE_FILE = "knowledge.json"
COMPLETIONS_FILE = "knowledge.jsonl"
_LEADING = re.compile(r"^[\s\"'“‘(*]+")
_ARTICLE = re.compile(r"^(the|a|an)\s+")


def answer_matches(completion: str, answer: str) -> bool:
    """True when `completion` starts with `answer` as a whole word (see module docstring)."""
    text = _LEADING.sub("", completion).lower()
    wanted = answer.strip().lower()
    candidates = [text]
    if not _ARTICLE.match(wanted):
        stripped = _ARTICLE.sub("", text, count=1)
        if stripped != text:
            candidates.append(stripped)
    for candidate in candidates:
        if candidate.startswith(wanted):
            rest = candidate[len(wanted):]
            if not rest or not rest[0].isalnum():
                return True
    return False


def load_facts(facts: str | Path, *, where: list[str] | tuple[str, ...] = (), domain_column: str = "domain",
               prompt_column: str = "prompt", answer_column: str = "answer") -> list[dict[str, str]]:
    """The facts of a table (after `where` filters) as dicts with domain, prompt, answer."""
    from spunge_merge.data.loading import load_table
    from spunge_merge.data.split import apply_filters
    from spunge_merge.data.where import parse_condition

    table = load_table(facts)
    missing = [c for c in (domain_column, prompt_column, answer_column) if c not in table.column_names]
    if missing:
        raise SpungeError(f"{facts}: no column '{missing[0]}' (columns: {', '.join(table.column_names)})")
    table = apply_filters(table, [parse_condition(expr) for expr in where], str(facts))
    rows = [{"domain": str(r[domain_column]), "prompt": str(r[prompt_column]), "answer": str(r[answer_column])}
            for r in table]
    rows = [r for r in rows if r["prompt"].strip() and r["answer"].strip()]
    if not rows:
        raise SpungeError(f"{facts}: no facts left after the filters {' AND '.join(where)}")
    return rows


def complete(model_dir: ResolvedModel, prompts: list[str], *, max_new_tokens: int, batch_size: int, device: str = "auto",
             dtype: str = "auto", progress=None) -> list[str]:
    """Greedy completions of `prompts` (left-padded batches; deterministic)."""
    import torch
    from transformers import GenerationConfig

    from spunge_merge.unlearn.base import pick_device, pick_dtype

    torch_device = pick_device(device)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    lm = load_causal_lm(model_dir, dtype=pick_dtype(dtype, torch_device), device=torch_device)
    generation = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    completions: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        encoded = tokenizer(batch, return_tensors="pt", padding=True).to(torch_device)
        with torch.no_grad():
            generated = lm.generate(**encoded, generation_config=generation)
        new_tokens = generated[:, encoded["input_ids"].shape[1]:]
        completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        if progress is not None:
            progress(len(batch))
    return completions


def evaluate_knowledge(
    model: str | Path | ResolvedModel,
    facts: str | Path,
    out: str | Path,
    *,
    where: list[str] | tuple[str, ...] = (),
    domains: list[str] | None = None,
    domain_column: str = "domain",
    prompt_column: str = "prompt",
    answer_column: str = "answer",
    max_new_tokens: int = 8,
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "auto",
    force: bool = False,
) -> dict[str, Any]:
    """Per-domain completion accuracy of `model` on `facts`; writes knowledge.json/.jsonl into `out`.

    `out` is a model's evaluation directory (see `evaluate.results`): the same evaluation asked
    again is read back, a different one over an existing result needs `force`.
    """
    import json

    from spunge_merge.evaluate.results import existing_result, record_evaluation, staged_files
    from spunge_merge.fsutil import sha256_file, sha256_json
    from spunge_merge.provenance import fingerprint as make_fingerprint

    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    rows = load_facts(facts, where=where, domain_column=domain_column, prompt_column=prompt_column, answer_column=answer_column)
    if domains is not None:
        unknown = sorted(set(domains) - {r["domain"] for r in rows})
        if unknown:
            raise SpungeError(f"{facts}: no facts of domain '{unknown[0]}'")
        rows = [r for r in rows if r["domain"] in set(domains)]
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "dtype": dtype, "decoding": "greedy",
                "match": "completion starts with the answer as a whole word, case-insensitive, article/quote allowed"}
    facts_sha = sha256_json(rows)
    key = make_fingerprint(kind="knowledge", model=resolved.fingerprint, facts=facts_sha, settings=settings)
    out = Path(out)
    if (stored := existing_result(out, KNOWLEDGE_FILE, key, force=force)) is not None:
        return stored
    started = time.perf_counter()
    completions = complete(resolved, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, batch_size=batch_size,
                           device=device, dtype=dtype)
    per_domain: dict[str, list[bool]] = defaultdict(list)
    records = []
    for row, completion in zip(rows, completions, strict=True):
        correct = answer_matches(completion, row["answer"])
        per_domain[row["domain"]].append(correct)
        records.append({**row, "completion": completion, "correct": correct})
    order = list(dict.fromkeys(r["domain"] for r in rows))
    summary = {d: {"n": len(per_domain[d]), "correct": sum(per_domain[d]), "accuracy": sum(per_domain[d]) / len(per_domain[d])}
               for d in order}
    total = len(rows)
    correct = sum(s["correct"] for s in summary.values())
    result = {
        "kind": "knowledge",
        "fingerprint": key,
        "model": resolved.describe(),
        "facts": {"path": str(facts), "where": list(where), "rows": total, "sha256": facts_sha,
                  "source_sha256": sha256_file(facts) if Path(facts).is_file() else None},
        "settings": settings,
        "domains": summary,
        "overall": {"n": total, "correct": correct, "accuracy": correct / total},
        "seconds": round(time.perf_counter() - started, 2),
        "files": {"completions": COMPLETIONS_FILE},
    }
    with staged_files(out, "knowledge") as stage:
        atomic_write_text(stage / COMPLETIONS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        write_json(stage / KNOWLEDGE_FILE, result)
    record_evaluation(out, name="knowledge", result=result, files=[KNOWLEDGE_FILE, COMPLETIONS_FILE])
    return result


def knowledge_table(results: dict[str, dict[str, Any]], *, forget: list[str] | None = None) -> str:
    """A Markdown table: one row per model, one column per domain (forgotten domains marked)."""
    forget = set(forget or [])
    domains: list[str] = []
    for result in results.values():
        domains.extend(d for d in result["domains"] if d not in domains)
    head = [f"{d} (forget)" if d in forget else f"{d} (keep)" for d in domains]
    lines = ["| model | " + " | ".join(head) + " | forget avg | keep avg |",
             "|---|" + "---:|" * (len(domains) + 2)]
    for label, result in results.items():
        cells, forgot, kept = [], [], []
        for d in domains:
            entry = result["domains"].get(d)
            if entry is None:
                cells.append("–")
                continue
            cells.append(f"{100 * entry['accuracy']:.0f}% ({entry['correct']}/{entry['n']})")
            (forgot if d in forget else kept).append(entry["accuracy"])
        avg = [f"{100 * sum(v) / len(v):.0f}%" if v else "–" for v in (forgot, kept)]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {avg[0]} | {avg[1]} |")
    return "\n".join(lines) + "\n"
