"""Token-weighted perplexity on retain text, with a sliding window for long texts.

Perplexity is exp(total negative log-likelihood / total predicted tokens) over the whole
corpus: every token weighs the same, whatever the length of its text (a mean of per-text
perplexities would let a few short texts dominate). A text longer than `max_length` tokens is
read in windows that advance by `stride`; each token is predicted once, in the first window
where it is new, with up to `max_length - stride` earlier tokens of context (the method of the
transformers perplexity guide, with exact token counts instead of a mean of window means).
Texts that fit in one window are batched by a token budget, sorted by length.

Output (into `out/`): `perplexity.json` (kind "perplexity": model, data file and its sha256,
settings, perplexity, mean NLL, token and text counts).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from spunge_merge.config import FrozenConfig, build_config
from spunge_merge.data.loading import read_texts, source_sha256
from spunge_merge.evaluate.registry import (
    Column,
    Computed,
    Evaluation,
    EvaluationRequest,
    PathText,
    Planned,
    register,
    run_evaluation,
)
from spunge_merge.fsutil import sha256_texts
from spunge_merge.models import ResolvedModel, load_causal_lm, load_tokenizer
from spunge_merge.provenance import fingerprint as make_fingerprint

PERPLEXITY_FILE = "perplexity.json"
_LOGIT_BUDGET = 2**26  # float32 logits per forward pass (256 MiB); bounds the batch for large vocabularies


class PerplexityConfig(FrozenConfig):
    """Settings of a perplexity evaluation (defaults are the CLI's)."""

    data: PathText = Field(..., description="Retain text: .jsonl/.json/.csv/.parquet (column `text_column`) or .txt (one text "
                           "per line), e.g. ../shared/data/retain/wikitext2_raw_test_rows.jsonl. In a pipeline also a data "
                           "source with filters ({path, where, ...}).", json_schema_extra={"cli_flags": ["--data", "-d"]})
    max_length: int = Field(1024, ge=2, description="Window length in tokens.")
    stride: int = Field(512, ge=1, description="Window step for texts longer than --max-length; each token is scored once, with "
                        "up to max_length - stride tokens of earlier context.")
    max_texts: int | None = Field(None, ge=1, description="Score only the first N texts (default: all).")
    text_column: str = Field("text", description="Column holding the text.")
    min_chars: int = Field(1, ge=1, description="Skip texts shorter than this (RMU's retain filter keeps > 50 chars).")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")


def _windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_target) windows: tokens [first_target, end) are scored in [begin, end)."""
    windows, previous_end = [], 0
    for begin in range(0, length, stride):
        end = min(begin + max_length, length)
        windows.append((begin, end, max(previous_end, begin + 1)))
        previous_end = end
        if end == length:
            break
    return windows


def corpus_nll(lm, tokenizer, texts: list[str], *, max_length: int = 1024, stride: int = 512, progress: bool = True,
               description: str = "perplexity") -> dict[str, Any]:
    """Summed NLL and predicted-token count of `texts` under `lm` (see module docstring)."""
    import math

    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    if stride > max_length:
        raise ValueError(f"stride ({stride}) must not exceed max_length ({max_length})")
    device = next(lm.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = [tokenizer(text)["input_ids"] for text in texts]
    vocab = lm.get_output_embeddings().weight.shape[0] if lm.get_output_embeddings() is not None else len(tokenizer)
    token_budget = max(max_length, _LOGIT_BUDGET // max(1, vocab))

    # Work items: (token ids of one window, index of its first scored token within the window).
    short = sorted((ids for ids in encoded if 2 <= len(ids) <= max_length), key=len)
    long_items = [(ids[b:e], t - b) for ids in encoded if len(ids) > max_length for b, e, t in _windows(len(ids), max_length, stride)]
    batches: list[list[tuple[list[int], int]]] = []
    current: list[tuple[list[int], int]] = []
    for ids in short:
        if current and (len(current) + 1) * len(ids) > token_budget:
            batches.append(current)
            current = []
        current.append((ids, 1))
    if current:
        batches.append(current)
    batches.extend([item] for item in long_items)

    total_nll, total_tokens = 0.0, 0
    with tqdm(total=len(batches), desc=description, unit="batch", disable=not progress) as bar:
        for batch in batches:
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, first_target) in enumerate(batch):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention[row, :len(ids)] = 1
                labels[row, first_target:len(ids)] = torch.tensor(ids[first_target:])
            with torch.no_grad():
                logits = lm(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits.float()
            shifted = labels[:, 1:].to(device)
            losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                     ignore_index=-100, reduction="sum")
            total_nll += float(losses)
            total_tokens += int((shifted != -100).sum())
            bar.update(1)
    mean = total_nll / total_tokens if total_tokens else float("nan")
    return {"nll_sum": total_nll, "tokens": total_tokens, "mean_nll": mean,
            "perplexity": math.exp(mean) if total_tokens else None,
            "texts": len(texts), "texts_scored": sum(1 for ids in encoded if len(ids) >= 2)}


def evaluate_perplexity(
    model: str | ResolvedModel,
    data: str | Path,
    out: str | Path,
    *,
    max_length: int = 1024,
    stride: int = 512,
    max_texts: int | None = None,
    text_column: str = "text",
    min_chars: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of `model` on the texts of `data` (a .jsonl/.json/.csv/.parquet/.txt file)."""
    cfg = build_config(PerplexityConfig, overrides={"data": data, "max_length": max_length, "stride": stride,
                                                    "max_texts": max_texts, "text_column": text_column, "min_chars": min_chars,
                                                    "device": device, "dtype": dtype})
    return run_evaluation(PERPLEXITY, model, out, cfg, force=force, progress=progress)


def plan_perplexity(request: EvaluationRequest) -> Planned:
    """Read the texts and fingerprint them with the model and settings; the NLL is computed only when asked."""
    from spunge_merge.errors import SpungeError
    from spunge_merge.runtime import pick_device, pick_dtype

    cfg: PerplexityConfig = request.config
    if cfg.stride > cfg.max_length:
        raise SpungeError(f"--stride ({cfg.stride}) must not exceed --max-length ({cfg.max_length})")
    resolved = request.model
    texts = read_texts(cfg.data, cfg.text_column, min_chars=cfg.min_chars)
    if cfg.max_texts is not None:
        texts = texts[:cfg.max_texts]
    recorded = cfg.model_dump(exclude={"data"})
    settings = cfg.model_dump(exclude={"data", "device"})
    fingerprint = make_fingerprint(kind="perplexity", model=resolved.fingerprint, texts=sha256_texts(texts), settings=settings)

    def compute() -> Computed:
        started = time.perf_counter()
        torch_device = pick_device(cfg.device)
        lm = load_causal_lm(resolved, dtype=pick_dtype(cfg.dtype, torch_device), device=torch_device)
        tokenizer = load_tokenizer(resolved)
        figures = corpus_nll(lm, tokenizer, texts, max_length=cfg.max_length, stride=cfg.stride, progress=request.progress)
        return Computed({
            "kind": "perplexity",
            "fingerprint": fingerprint,
            "model": resolved.describe(),
            "data": {"path": cfg.data, "sha256": source_sha256(cfg.data), "texts_sha256": sha256_texts(texts),
                     "text_column": cfg.text_column},
            "config": recorded,
            **figures,
            "timing": {"seconds": round(time.perf_counter() - started, 2)},
        })

    return Planned(fingerprint, compute)


PERPLEXITY = register(Evaluation(
    name="perplexity",
    summary="Token-weighted perplexity on retain text (sliding window for long texts).",
    config_class=PerplexityConfig,
    plan=plan_perplexity,
    result_file=PERPLEXITY_FILE,
    headline=lambda result: result.get("perplexity"),
    columns=(Column("retain_ppl", "retain PPL", lambda result: result["perplexity"], rank=30),),
    path_settings=("data",),
    data_settings=("data",),
))
