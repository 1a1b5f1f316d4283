"""Sentence embeddings: mean pooling over the encoder's last hidden states, then L2 normalisation.

That is how all-MiniLM-L6-v2 defines its sentence vector (sentence-transformers' Transformer →
Pooling(mean) → Normalize), computed here with plain transformers so that spunge needs no
sentence-transformers. Texts are encoded in batches of similar length (less padding), with a
progress bar, and the result is cached as safetensors under the spunge cache, keyed by the texts'
sha256 and the model's weights fingerprint: a rerun on the same rows loads instead of encoding.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import sha256_json, sha256_texts
from spunge_merge.models import ResolvedModel, cache_root, resolve_model

_FORMAT = 1  # bump when the computation changes, so old cache entries are not reused
_DEFAULT_MAX_TOKENS = 512


def embedding_cache_file(texts: list[str], model: ResolvedModel) -> Path:
    key = sha256_json({"format": _FORMAT, "texts": sha256_texts(texts), "model": model.fingerprint})
    return cache_root() / "embeddings" / f"{key}.safetensors"


def max_tokens(model: ResolvedModel, tokenizer) -> int:
    """sentence-transformers' `max_seq_length` (256 for all-MiniLM-L6-v2), else the tokenizer's limit."""
    config = model.path / "sentence_bert_config.json"
    if config.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return int(json.loads(config.read_text(encoding="utf-8"))["max_seq_length"])
    limit = getattr(tokenizer, "model_max_length", _DEFAULT_MAX_TOKENS) or _DEFAULT_MAX_TOKENS
    return min(int(limit), _DEFAULT_MAX_TOKENS)


def length_batches(texts: list[str], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length (longest first), so little compute goes to padding."""
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def encode(texts: list[str], model: ResolvedModel, *, batch_size: int = 32, progress: bool = True) -> np.ndarray:
    """(rows, dim) float32 unit vectors, computed now (no cache)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path)
        encoder = AutoModel.from_pretrained(model.path, dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise SpungeError(f"{model.ref}: cannot load as a sentence encoder ({str(exc).splitlines()[0][:200]})") from exc
    limit = max_tokens(model, tokenizer)
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    batches = length_batches(texts, batch_size)
    with torch.inference_mode(), tqdm(total=len(texts), desc="embed", unit="row", disable=not progress, leave=False) as bar:
        for rows in batches:
            inputs = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=limit, return_tensors="pt")
            hidden = encoder(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
            bar.update(len(rows))
    return out


def embed_texts(texts: list[str], model_ref: str, *, batch_size: int = 32, progress: bool = True,
                use_cache: bool = True) -> tuple[np.ndarray, dict]:
    """Embeddings of `texts` (cached), and a record of how they were made (for the manifest)."""
    from safetensors.numpy import load_file, save_file

    model = resolve_model(model_ref)
    cache = embedding_cache_file(texts, model)
    record = {"model": model.describe(), "cache": str(cache), "cached": False}
    if use_cache and cache.is_file():
        return load_file(str(cache))["embeddings"], {**record, "cached": True}
    vectors = encode(texts, model, batch_size=batch_size, progress=progress)
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):  # a read-only cache only costs the encoding next time
            save_file({"embeddings": vectors}, str(tmp))
            tmp.replace(cache)
    return vectors, record
