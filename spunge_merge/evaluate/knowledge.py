"""Knowledge probe: does the model still complete facts of each domain?

Each fact is a prompt ("The capital of France is") and a short answer ("Paris"). Two forms:

- `completion` (default): the model completes the prompt greedily; the fact counts as known when
  the completion starts with the answer (case-insensitive, after an optional article or quote)
  and the answer is not just the start of a longer word ("C" does not match "carbon").
- `choice`: the WMDP format. The answer and 3 distractors (answers of other facts of the same
  domain, drawn with a fixed seed) are ranked by their log-likelihood after the prompt; the fact
  counts as known when the answer ranks strictly first. Chance is 25 %.

Echoing the prompt scores nothing. A fact whose answer appears in its own prompt ("The London
Eye is in the city of" → "London"; "The plural of sheep is" → "sheep") cannot tell knowing from
repeating: a model that copies a word of the prompt gets it right, and one that lost the fact
still does. Such facts are left out when the facts are loaded, and their count and prompts are
reported (`excluded` in knowledge.json); `answer_matches` given the prompt also refuses them.

Accuracy is reported per domain, which is the attribute a knowledge-removal pipeline splits on:
forgotten domains should drop, kept ones should hold.

Output (into `out/`): `knowledge.json` (kind "knowledge": per-domain and overall accuracy, the
facts file's sha256, the settings, the excluded facts) and `knowledge.jsonl` (every evaluated
prompt, answer, completion or options with their log-likelihoods, and verdict), each written
atomically.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from spunge_merge.config import FrozenConfig, build_config
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.registry import (
    Computed,
    Evaluation,
    EvaluationRequest,
    PathText,
    Planned,
    register,
    run_evaluation,
)
from spunge_merge.evaluate.token_scores import padded_batch
from spunge_merge.fsutil import atomic_write_text
from spunge_merge.models import ResolvedModel, load_causal_lm, load_tokenizer
from spunge_merge.provenance import fingerprint as make_fingerprint

KNOWLEDGE_FILE = "knowledge.json"
COMPLETIONS_FILE = "knowledge.jsonl"
FORMS = ("completion", "choice")
CHOICES = 4  # the answer and 3 distractors, as WMDP
ECHO_RULE = "facts whose answer appears in their prompt as a whole word (case-insensitive, leading article ignored) are left out"
_LEADING = re.compile(r"^[\s\"'“‘(*]+")
_ARTICLE = re.compile(r"^(the|a|an)\s+")


def answer_in_prompt(prompt: str, answer: str) -> bool:
    """True when `answer` (or it without a leading article) occurs in `prompt` as a whole word or phrase."""
    text = prompt.lower()
    wanted = answer.strip().lower()
    for candidate in {wanted, _ARTICLE.sub("", wanted, count=1)}:
        if candidate and re.search(rf"(?<!\w){re.escape(candidate)}(?!\w)", text):
            return True
    return False


def answer_matches(completion: str, answer: str, prompt: str | None = None) -> bool:
    """True when `completion` starts with `answer` as a whole word (see module docstring); never when
    `prompt` is given and already holds the answer (an echo cannot be told from knowing)."""
    if prompt is not None and answer_in_prompt(prompt, answer):
        return False
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


def split_echoes(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(facts that can be probed, facts whose answer is in their prompt)."""
    kept = [r for r in rows if not answer_in_prompt(r["prompt"], r["answer"])]
    return kept, [r for r in rows if answer_in_prompt(r["prompt"], r["answer"])]


def load_facts(facts: str | Path, *, where: list[str] | tuple[str, ...] = (), domain_column: str = "domain",
               prompt_column: str = "prompt", answer_column: str = "answer",
               options_column: str | None = None) -> list[dict[str, Any]]:
    """The facts of a table (after `where` filters) as dicts with domain, prompt, answer (echoes included:
    `split_echoes` separates them), and `options` when `options_column` names the fixed choices."""
    from spunge_merge.data.loading import load_table
    from spunge_merge.data.split import apply_filters
    from spunge_merge.data.where import parse_condition

    table = load_table(facts)
    wanted = (domain_column, prompt_column, answer_column, *([options_column] if options_column else []))
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise SpungeError(f"{facts}: no column '{missing[0]}' (columns: {', '.join(table.column_names)})")
    table = apply_filters(table, [parse_condition(expr) for expr in where], str(facts))
    rows = []
    for r in table:
        row: dict[str, Any] = {"domain": str(r[domain_column]), "prompt": str(r[prompt_column]), "answer": str(r[answer_column])}
        if options_column:
            row["options"] = checked_options(r[options_column], row, f"{facts}: column '{options_column}'")
        rows.append(row)
    rows = [r for r in rows if r["prompt"].strip() and r["answer"].strip()]
    if not rows:
        raise SpungeError(f"{facts}: no facts left after the filters {' AND '.join(where)}")
    return rows


def checked_options(value: Any, row: dict[str, str], where: str) -> list[str]:
    """A fact's fixed choices (WMDP's form: 4 options, the answer among them), refused with the fact's
    prompt named when they could not measure anything: a wrong count, duplicates, the answer missing."""
    if not isinstance(value, list | tuple) or len(value) != CHOICES:
        raise SpungeError(f"{where}: '{row['prompt']}': expected a list of {CHOICES} options, got {value!r}")
    options = [str(v) for v in value]
    if len({o.strip().casefold() for o in options}) != CHOICES:
        raise SpungeError(f"{where}: '{row['prompt']}': the options {options} are not distinct")
    if row["answer"] not in options:
        raise SpungeError(f"{where}: '{row['prompt']}': the answer '{row['answer']}' is not one of the options {options}")
    return options


def complete(model_dir: ResolvedModel, prompts: list[str], *, max_new_tokens: int, batch_size: int, device: str = "auto",
             dtype: str = "auto", progress=None) -> list[str]:
    """Greedy completions of `prompts` (left-padded batches; deterministic)."""
    from spunge_merge.runtime import pick_device, pick_dtype

    torch_device = pick_device(device)
    lm = load_causal_lm(model_dir, dtype=pick_dtype(dtype, torch_device), device=torch_device)
    return complete_loaded(lm, load_tokenizer(model_dir), prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           device=torch_device, progress=progress)


def complete_loaded(lm, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int, device, progress=None) -> list[str]:
    """`complete` with a model already in memory (`relearn` scores the same model between attack steps)."""
    import torch
    from transformers import GenerationConfig

    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    generation = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    completions: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            encoded = tokenizer(batch, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                generated = lm.generate(**encoded, generation_config=generation)
            new_tokens = generated[:, encoded["input_ids"].shape[1]:]
            completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            if progress is not None:
                progress(len(batch))
    finally:
        tokenizer.padding_side = padding_side
    return completions


def add_distractors(rows: list[dict[str, str]], *, seed: int, pool: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Each fact with `options`: its answer and 3 distractors, the answers of other facts of its domain
    (distinct case-insensitively, none in its prompt), drawn and shuffled by a generator seeded with
    (`seed`, domain, prompt), so a fact's options do not depend on which other facts are evaluated."""
    by_domain: dict[str, list[str]] = defaultdict(list)
    for row in pool if pool is not None else rows:
        if row["answer"].strip().lower() not in {a.strip().lower() for a in by_domain[row["domain"]]}:
            by_domain[row["domain"]].append(row["answer"])
    out = []
    for row in rows:
        wanted = row["answer"].strip().lower()
        candidates = sorted(a for a in by_domain[row["domain"]]
                            if a.strip().lower() != wanted and not answer_in_prompt(row["prompt"], a))
        if len(candidates) < CHOICES - 1:
            raise SpungeError(f"domain '{row['domain']}': {len(candidates)} distinct other answers for '{row['prompt']}', "
                              f"{CHOICES - 1} needed as distractors for --form choice")
        rng = random.Random(f"{seed}/{row['domain']}/{row['prompt']}")
        options = [row["answer"], *rng.sample(candidates, CHOICES - 1)]
        rng.shuffle(options)
        out.append({**row, "options": options})
    return out


def option_logliks(model_dir: ResolvedModel, rows: list[dict[str, Any]], *, batch_size: int, device: str = "auto",
                   dtype: str = "auto") -> list[list[float]]:
    """Summed log-likelihood of " option" after each prompt, per option (context and continuation tokenized
    apart and joined, as the LM Evaluation Harness does)."""
    from spunge_merge.runtime import pick_device, pick_dtype

    torch_device = pick_device(device)
    lm = load_causal_lm(model_dir, dtype=pick_dtype(dtype, torch_device), device=torch_device)
    return option_logliks_loaded(lm, load_tokenizer(model_dir), rows, batch_size=batch_size, device=torch_device)


def option_logliks_loaded(lm, tokenizer, rows: list[dict[str, Any]], *, batch_size: int, device) -> list[list[float]]:
    """`option_logliks` with a model already in memory."""
    import torch

    torch_device = device
    pairs = []
    for row in rows:
        context = tokenizer(row["prompt"].rstrip())["input_ids"]
        for option in row["options"]:
            pairs.append((context, tokenizer(" " + option.strip(), add_special_tokens=False)["input_ids"]))
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        ids, mask = padded_batch([context + option for context, option in chunk], tokenizer.pad_token_id)
        with torch.no_grad():
            logprobs = torch.log_softmax(lm(input_ids=ids.to(torch_device), attention_mask=mask.to(torch_device)).logits.float(), -1)
        for i, (context, option) in enumerate(chunk):
            positions = torch.arange(len(context) - 1, len(context) + len(option) - 1)
            scores.append(float(logprobs[i, positions, torch.tensor(option)].sum()))
    return [scores[i * CHOICES:(i + 1) * CHOICES] for i in range(len(rows))]


class KnowledgeConfig(FrozenConfig):
    """Settings of a knowledge probe (defaults are the CLI's)."""

    facts: PathText = Field(..., description="Facts table (.jsonl/.json/.csv/.parquet) with a domain, a prompt and an answer "
                            "column, e.g. the demo's spunge_merge/demo/facts.jsonl.", json_schema_extra={"cli_flags": ["--facts", "-f"]})
    where: list[str] = Field(default_factory=list, description="Keep only rows matching these conditions, e.g. \"part == heldout\" "
                             "(the `spunge split` --where syntax), all must hold.", json_schema_extra={"cli_flags": ["--where", "-w"]})
    domains: list[str] | None = Field(None, description="Domains to probe (default: every domain left).")
    domain_column: str = Field("domain", description="Column naming each fact's domain.")
    prompt_column: str = Field("prompt", description="Column holding the prompt to complete.")
    answer_column: str = Field("answer", description="Column holding the expected answer.")
    max_new_tokens: int = Field(8, ge=1, description="With form completion: most tokens generated per prompt.")
    batch_size: int = Field(32, ge=1, description="Prompts (completion) or prompt-option pairs (choice) per batch.",
                            json_schema_extra={"cli_flags": ["--batch-size", "-b"]})
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:N.")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    form: Literal["completion", "choice"] = Field(
        "completion", description="completion: greedy completion, known when it starts with the answer as a whole word; choice: "
                                  "the WMDP format, the answer ranked by log-likelihood against 3 distractors (answers of "
                                  "other facts of its domain), known when it ranks first (chance 25 %).")
    seed: int = Field(0, description="With form choice: seed of the distractor draw (same seed, same options).")
    options_column: str | None = Field(
        None, description="With form choice: a column holding each fact's 4 options (the answer among them), used as "
                          "they are instead of drawing distractors, e.g. `options` in bench/knowledge/facts-*.jsonl.")

    @field_validator("where", mode="before")
    @classmethod
    def _where_list(cls, value: Any) -> Any:
        return [] if value is None else [value] if isinstance(value, str) else list(value)


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
    form: str = "completion",
    seed: int = 0,
    options_column: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Per-domain accuracy of `model` on `facts`; writes knowledge.json/.jsonl into `out`.

    `form`: completion (greedy, the answer must start the completion) or choice (answer ranked
    against 3 same-domain distractors by log-likelihood; `seed` draws the distractors). Facts whose
    answer is in their prompt are left out and counted (module docstring). `out` is a model's
    evaluation directory (see `evaluate.results`): the same evaluation asked again is read back, a
    different one over an existing result needs `force`.
    """
    if form not in FORMS:
        raise SpungeError(f"--form '{form}' is not one of {', '.join(FORMS)}")
    if max_new_tokens < 1 or batch_size < 1:
        raise SpungeError("--max-new-tokens and --batch-size must be >= 1")
    cfg = build_config(KnowledgeConfig, overrides={
        "facts": facts, "where": list(where), "domains": domains, "domain_column": domain_column, "prompt_column": prompt_column,
        "answer_column": answer_column, "max_new_tokens": max_new_tokens, "batch_size": batch_size, "device": device,
        "dtype": dtype, "form": form, "seed": seed, "options_column": options_column})
    return run_evaluation(KNOWLEDGE, model, out, cfg, force=force)


def _settings(cfg: KnowledgeConfig) -> dict[str, Any]:
    """The settings knowledge.json records (and the fingerprint covers) for the chosen form."""
    if cfg.form == "choice":
        fixed = {"options_from": cfg.options_column} if cfg.options_column else {}  # absent: results made before stay valid
        return {"form": cfg.form, "choices": CHOICES, "seed": cfg.seed, "batch_size": cfg.batch_size, "dtype": cfg.dtype,
                "match": "the answer's summed log-likelihood after the prompt ranks strictly first of the options",
                "chance": 1 / CHOICES, "echo_rule": ECHO_RULE, **fixed}
    return {"form": cfg.form, "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "dtype": cfg.dtype,
            "decoding": "greedy", "match": "completion starts with the answer as a whole word, case-insensitive, article/quote allowed",
            "echo_rule": ECHO_RULE}


def _probed_facts(cfg: KnowledgeConfig, rewrite=None) -> tuple[list[dict], list[dict], list[dict]]:
    """(every loaded fact, the facts to probe (with options for the choice form), the echoes left out).
    `rewrite(fact, facts)` gives each fact another prompt (relearn's probes), before echoes are left out."""
    if cfg.options_column and cfg.form != "choice":
        raise SpungeError(f"--options-column {cfg.options_column}: fixed options are for --form choice")
    loaded = load_facts(cfg.facts, where=cfg.where, domain_column=cfg.domain_column, prompt_column=cfg.prompt_column,
                        answer_column=cfg.answer_column, options_column=cfg.options_column)
    if cfg.domains is not None:
        unknown = sorted(set(cfg.domains) - {r["domain"] for r in loaded})
        if unknown:
            raise SpungeError(f"{cfg.facts}: no facts of domain '{unknown[0]}'")
        loaded = [r for r in loaded if r["domain"] in set(cfg.domains)]
    if rewrite is not None:
        loaded = [{**r, "prompt": rewrite(r, loaded)} for r in loaded]
    rows, echoes = split_echoes(loaded)
    if not rows:
        raise SpungeError(f"{cfg.facts}: every fact's answer is in its prompt ({ECHO_RULE}); nothing left to probe")
    if cfg.form == "choice" and not cfg.options_column:
        rows = add_distractors(rows, seed=cfg.seed, pool=loaded)
    return loaded, rows, echoes


def plan_knowledge(request: EvaluationRequest) -> Planned:
    """Load and filter the facts (they decide the fingerprint); probe the model only when asked."""
    from spunge_merge.fsutil import sha256_file, sha256_json

    cfg: KnowledgeConfig = request.config
    resolved = request.model
    loaded, rows, echoes = _probed_facts(cfg)
    settings = _settings(cfg)
    facts_sha = sha256_json(loaded)
    key = make_fingerprint(kind="knowledge", model=resolved.fingerprint, facts=facts_sha, settings=settings)

    def compute() -> Computed:
        started = time.perf_counter()
        records = _probe(resolved, rows, cfg)
        summary, excluded_by_domain = _per_domain(rows, records, echoes)
        total = len(rows)
        correct = sum(s["correct"] for s in summary.values())
        result = {
            "kind": "knowledge",
            "fingerprint": key,
            "model": resolved.describe(),
            "facts": {"path": cfg.facts, "where": list(cfg.where), "rows": total, "loaded": len(loaded), "sha256": facts_sha,
                      "source_sha256": sha256_file(cfg.facts) if Path(cfg.facts).is_file() else None},
            "settings": settings,
            "domains": summary,
            "overall": {"n": total, "correct": correct, "accuracy": correct / total},
            "chance": 1 / CHOICES if cfg.form == "choice" else None,
            "excluded": {"rule": ECHO_RULE, "count": len(echoes), "by_domain": dict(excluded_by_domain),
                         "facts": [{"domain": r["domain"], "prompt": r["prompt"], "answer": r["answer"]} for r in echoes]},
            "seconds": round(time.perf_counter() - started, 2),
            "files": {"completions": COMPLETIONS_FILE},
        }
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return Computed(result, {COMPLETIONS_FILE: lambda path: atomic_write_text(path, text)})

    return Planned(key, compute)


def _probe(resolved: ResolvedModel, rows: list[dict[str, Any]], cfg: KnowledgeConfig) -> list[dict[str, Any]]:
    """Each fact with the model's answer (completion, or option log-likelihoods and the chosen one) and its verdict."""
    return _verdicts(rows, cfg,
                     lambda prompts: complete(resolved, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                              device=cfg.device, dtype=cfg.dtype),
                     lambda facts: option_logliks(resolved, facts, batch_size=cfg.batch_size, device=cfg.device, dtype=cfg.dtype))


def _probe_loaded(lm, tokenizer, device, rows: list[dict[str, Any]], cfg: KnowledgeConfig) -> list[dict[str, Any]]:
    """`_probe` with a model already in memory."""
    return _verdicts(rows, cfg,
                     lambda prompts: complete_loaded(lm, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens,
                                                     batch_size=cfg.batch_size, device=device),
                     lambda facts: option_logliks_loaded(lm, tokenizer, facts, batch_size=cfg.batch_size, device=device))


def _verdicts(rows: list[dict[str, Any]], cfg: KnowledgeConfig, completions, logliks) -> list[dict[str, Any]]:
    """Each fact with its verdict, from `completions(prompts)` (form completion) or `logliks(facts)` (form choice)."""
    records = []
    if cfg.form == "choice":
        for row, scores in zip(rows, logliks(rows), strict=True):
            answer_score = scores[row["options"].index(row["answer"])]
            correct = all(answer_score > other for option, other in zip(row["options"], scores, strict=True)
                          if option != row["answer"])
            records.append({**row, "logliks": scores, "chosen": row["options"][scores.index(max(scores))], "correct": correct})
        return records
    for row, completion in zip(rows, completions([r["prompt"] for r in rows]), strict=True):
        records.append({**row, "completion": completion, "correct": answer_matches(completion, row["answer"], row["prompt"])})
    return records


def score_loaded(cfg: KnowledgeConfig, lm, tokenizer, device, rewrite=None) -> dict[str, Any]:
    """Per-domain accuracy of a model already in memory (what `relearn` reads between attack steps):
    {"domains": {domain: {n, correct, accuracy, excluded_echoes, verdicts}}, "overall": {n, correct, accuracy}};
    `verdicts` is each fact's 1 or 0 in the facts' order (the robustness read-out bootstraps over facts);
    `rewrite(fact, facts)` -> another prompt for each fact (relearn's probes: paraphrase, few-shot)."""
    _, rows, echoes = _probed_facts(cfg, rewrite)
    records = _probe_loaded(lm, tokenizer, device, rows, cfg)
    summary, _ = _per_domain(rows, records, echoes)
    for domain, entry in summary.items():
        entry["verdicts"] = [int(bool(r["correct"])) for r in records if r["domain"] == domain]
    correct = sum(entry["correct"] for entry in summary.values())
    return {"domains": summary, "overall": {"n": len(rows), "correct": correct, "accuracy": correct / len(rows)}}


def _per_domain(rows: list[dict], records: list[dict], echoes: list[dict]) -> tuple[dict[str, dict], dict[str, int]]:
    """(per-domain n, correct, accuracy and echoes left out, in the facts' order; echoes per domain)."""
    per_domain: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        per_domain[record["domain"]].append(record["correct"])
    excluded_by_domain: dict[str, int] = defaultdict(int)
    for row in echoes:
        excluded_by_domain[row["domain"]] += 1
    order = list(dict.fromkeys(r["domain"] for r in rows))
    summary = {d: {"n": len(per_domain[d]), "correct": sum(per_domain[d]), "accuracy": sum(per_domain[d]) / len(per_domain[d]),
                   "excluded_echoes": excluded_by_domain.get(d, 0)}
               for d in order}
    return summary, excluded_by_domain


def form_description(form: str | None) -> str:
    """How a knowledge result was measured, in words: reports name the form that was run, never another."""
    if form == "choice":
        return (f"{CHOICES}-option choice; a fact counts when its answer's log-likelihood ranks first of the options "
                f"(chance {100 / CHOICES:g} %)")
    return "greedy completion; a fact counts when the completion starts with its answer"


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


KNOWLEDGE = register(Evaluation(
    name="knowledge",
    summary="Knowledge probe: accuracy per domain on prompt/answer facts (does the model still know them?).",
    config_class=KnowledgeConfig,
    plan=plan_knowledge,
    result_file=KNOWLEDGE_FILE,
    headline=lambda result: {domain: entry["accuracy"] for domain, entry in result["domains"].items()},
    path_settings=("facts",),
    score_loaded=score_loaded,
))
