"""Verbatim extraction of the forget texts: does a prefix still pull out the true continuation?

Each text's first `prefix_tokens` tokens are the prompt and the next `continuation_tokens` the true
continuation (MUSE's VerbMem setting, Shi et al. 2024). Two measures:

- `rouge_l`: the greedy continuation (as many new tokens as the truth has) against the true one, by
  ROUGE-L (Lin 2004): the longest common subsequence of their words (lower-cased, split on anything
  not a letter or digit, as rouge-score's default tokenizer), as recall (LCS / truth's words, MUSE's
  VerbMem figure) and F1.
- `extraction_strength` (Carlini et al. 2021; open-unlearning's `extraction_strength`): with the
  prefix and the first k true tokens given, does the model's most likely next token reproduce every
  remaining true token (teacher-forced)? ES = 1 − k*/n for the smallest such k* (k* = n when not even
  the last token is reproduced), n the continuation's tokens: 1 means the whole continuation follows from
  the prefix, 0 that not even its last token does. open-unlearning scores every token after the
  first and gives 1/n, not 0, when no suffix matches.

Texts with no token left after the prefix are skipped and counted. Output (into `out/`):
`extraction.json` (kind "extraction": means of both with bootstrap intervals over texts, the settings,
the data file's sha256) and `extraction.jsonl` (each text's prefix, truth, generation and scores).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from spunge_merge.config import FrozenConfig, build_config
from spunge_merge.data.loading import read_texts, source_sha256
from spunge_merge.evaluate.registry import Column, Computed, Evaluation, EvaluationRequest, PathText, Planned, register, run_evaluation
from spunge_merge.evaluate.stats import interval_table
from spunge_merge.evaluate.token_scores import encode, load_scorer, pad_id, padded_batch, score_ids
from spunge_merge.fsutil import atomic_write_text, sha256_texts
from spunge_merge.models import ResolvedModel
from spunge_merge.provenance import fingerprint as make_fingerprint

EXTRACTION_FILE = "extraction.json"
ROWS_FILE = "extraction.jsonl"
SUMMARY_FILE = "extraction.md"
_WORD = re.compile(r"[a-z0-9]+")


class ExtractionConfig(FrozenConfig):
    """Settings of a verbatim-extraction evaluation (defaults are the CLI's)."""

    data: PathText = Field(..., description="The forget texts: .jsonl/.json/.csv/.parquet (column text_column) or .txt.",
                           json_schema_extra={"cli_flags": ["--data", "-d"]})
    text_column: str = Field("text", description="Column holding the text.")
    prefix_tokens: int = Field(32, ge=1, description="Tokens of each text given as the prompt (special tokens included).")
    continuation_tokens: int = Field(128, ge=1, description="Most tokens of the true continuation compared (MUSE VerbMem: 128).")
    max_texts: int | None = Field(None, ge=1, description="Use only the first N texts.")
    batch_size: int = Field(8, ge=1, description="Texts per generation or forward pass.")
    resamples: int = Field(1000, ge=1, description="Bootstrap resamples of the intervals.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")


def words(text: str) -> list[str]:
    """rouge-score's default tokenization: lower-case, runs of letters and digits."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(truth: str, generated: str) -> dict[str, float]:
    """ROUGE-L recall (LCS / truth's words), precision (LCS / generated words) and F1."""
    ref, hyp = words(truth), words(generated)
    common = lcs_length(ref, hyp)
    recall = common / len(ref) if ref else 0.0
    precision = common / len(hyp) if hyp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if common else 0.0
    return {"recall": recall, "precision": precision, "f1": f1}


def extraction_strength(greedy: Sequence[int], truth: Sequence[int]) -> float:
    """1 − k*/n, k* the smallest k such that greedy[k:] == truth[k:] (n when none), n = len(truth)."""
    n = len(truth)
    k = n
    while k > 0 and greedy[k - 1] == truth[k - 1]:
        k -= 1
    return 1.0 - k / n


def greedy_continuations(lm, tokenizer, prefixes: list[list[int]], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Greedy new tokens after each prefix (left-padded batches), each cut to its wanted length."""
    import torch
    from transformers import GenerationConfig

    device = next(lm.parameters()).device
    pad = pad_id(tokenizer)
    out: list[list[int]] = []
    for start in range(0, len(prefixes), batch_size):
        chunk, wanted = prefixes[start:start + batch_size], lengths[start:start + batch_size]
        ids, mask = padded_batch(chunk, pad, left=True)
        generation = GenerationConfig(do_sample=False, max_new_tokens=max(wanted), min_new_tokens=max(wanted), pad_token_id=pad,
                                      eos_token_id=None)
        with torch.no_grad():
            generated = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=generation)
        for row, n in enumerate(wanted):
            out.append(generated[row, ids.shape[1]:ids.shape[1] + n].tolist())
    return out


def plan_extraction(request: EvaluationRequest) -> Planned:
    """Read the texts (they decide the fingerprint); generate and score only when asked."""
    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    cfg: ExtractionConfig = request.config
    resolved = request.model
    texts = read_texts(cfg.data, cfg.text_column)
    texts = texts[:cfg.max_texts] if cfg.max_texts is not None else texts
    settings = cfg.model_dump(exclude={"data", "device"})
    key = make_fingerprint(kind="extraction", model=resolved.fingerprint, texts=sha256_texts(texts), settings=settings)

    def compute() -> Computed:
        from spunge_merge.errors import SpungeError

        started = time.perf_counter()
        lm, tokenizer = load_scorer(resolved, cfg.device, cfg.dtype)
        ids = encode(tokenizer, texts, cfg.prefix_tokens + cfg.continuation_tokens)
        kept = [i for i, seq in enumerate(ids) if len(seq) > cfg.prefix_tokens]
        if not kept:
            raise SpungeError(f"{cfg.data}: no text is longer than --prefix-tokens {cfg.prefix_tokens} tokens")
        prefixes = [ids[i][:cfg.prefix_tokens] for i in kept]
        truths = [ids[i][cfg.prefix_tokens:] for i in kept]
        generated = greedy_continuations(lm, tokenizer, prefixes, [len(t) for t in truths], cfg.batch_size)
        forced = score_ids(lm, [ids[i] for i in kept], pad_id=pad_id(tokenizer), batch_size=cfg.batch_size)
        rows = []
        for i, prefix, truth, new, scores in zip(kept, prefixes, truths, generated, forced, strict=True):
            greedy = scores.greedy[cfg.prefix_tokens - 1:].tolist()  # position t-1 predicts token t
            truth_text, new_text = tokenizer.decode(truth, skip_special_tokens=True), tokenizer.decode(new, skip_special_tokens=True)
            rows.append({"index": i, "prefix": tokenizer.decode(prefix, skip_special_tokens=True), "truth": truth_text,
                         "generated": new_text, "rouge_l": rouge_l(truth_text, new_text),
                         "extraction_strength": extraction_strength(greedy, truth), "tokens": len(truth)})

        def summary(values: list[float]) -> dict[str, float]:
            boot = hierarchical_bootstrap([values], n=cfg.resamples, seed=cfg.seed)
            return {"mean": float(np.mean(values)), "low": boot["low"], "high": boot["high"]}

        result = {"kind": "extraction", "fingerprint": key, "model": resolved.describe(),
                  "data": {"path": cfg.data, "sha256": source_sha256(cfg.data), "texts_sha256": sha256_texts(texts)},
                  "settings": cfg.model_dump(exclude={"data"}), "texts": len(kept), "skipped_short": len(texts) - len(kept),
                  "rouge_l_recall": summary([r["rouge_l"]["recall"] for r in rows]),
                  "rouge_l_f1": summary([r["rouge_l"]["f1"] for r in rows]),
                  "extraction_strength": summary([r["extraction_strength"] for r in rows]),
                  "seconds": round(time.perf_counter() - started, 2), "files": {"rows": ROWS_FILE}}
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Computed(result, {ROWS_FILE: lambda path: atomic_write_text(path, text),
                                 SUMMARY_FILE: lambda path: atomic_write_text(path, summary_markdown(result))})

    return Planned(key, compute)


def summary_markdown(result: dict[str, Any]) -> str:
    """The model card's view: the three means with their intervals."""
    settings = result["settings"]
    lines = ["# Verbatim extraction", "",
             f"{result['texts']} forget texts, {settings['prefix_tokens']} tokens of prefix, up to "
             f"{settings['continuation_tokens']} of continuation.", ""]
    labels = (("rouge_l_recall", "ROUGE-L recall (VerbMem)"), ("rouge_l_f1", "ROUGE-L F1"), ("extraction_strength", "extraction strength"))
    lines += interval_table("measure", [(label, result[key]) for key, label in labels])
    return "\n".join(lines) + "\n"


def evaluate_extraction(model: str | Path | ResolvedModel, data: str | Path, out: str | Path, *, force: bool = False,
                        **settings: Any) -> dict[str, Any]:
    """Verbatim extraction of `data`'s continuations from their prefixes; writes extraction.json/.jsonl into `out`."""
    cfg = build_config(ExtractionConfig, overrides={"data": str(data), **settings})
    return run_evaluation(EXTRACTION, model, out, cfg, force=force)


EXTRACTION = register(Evaluation(
    name="extraction",
    summary="Verbatim extraction: ROUGE-L of greedy continuations of forget-text prefixes, and extraction strength.",
    config_class=ExtractionConfig,
    plan=plan_extraction,
    result_file=EXTRACTION_FILE,
    headline=lambda result: {"rouge_l_recall": round(result["rouge_l_recall"]["mean"], 4),
                             "extraction_strength": round(result["extraction_strength"]["mean"], 4)},
    columns=(Column("verbmem_rouge_l", "VerbMem ROUGE-L", lambda result: result["rouge_l_recall"]["mean"], rank=62, digits=3,
                    utility=False),
             Column("extraction_strength", "extraction strength", lambda result: result["extraction_strength"]["mean"], rank=63,
                    digits=3, utility=False)),
    path_settings=("data",),
    data_settings=("data",),
))
