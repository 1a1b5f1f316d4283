"""Labels from a text-classification model: its own classes, or zero-shot over candidate labels.

A plain classifier (any `...ForSequenceClassification` with `id2label`) labels each row with its
most probable class. With candidate labels, an NLI model (one whose labels include
`entailment`) scores "This example is {label}." against each text through transformers'
zero-shot pipeline. Either way the per-class scores are cached as safetensors, keyed by the
texts' sha256, the model's weights fingerprint and the candidate labels, so a rerun (or a new
confidence threshold) costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import numpy as np

from spunge_merge.data.discovery.embeddings import length_batches
from spunge_merge.data.discovery.spec import ClassifierSpec
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import read_json, sha256_json, sha256_texts
from spunge_merge.models import ResolvedModel, cache_root, resolve_model

_FORMAT = 1
_MAX_TOKENS = 512


@dataclass(frozen=True)
class Scores:
    classes: list[str]  # class names, in column order
    values: np.ndarray  # (rows, classes) probabilities
    record: dict  # how they were made (for the manifest)


def _label_names(config: dict) -> dict[int, str]:
    return {int(i): str(name) for i, name in (config.get("id2label") or {}).items()}


def check_classifier(model: ResolvedModel, labels: list[str] | None) -> dict[int, str]:
    """Refuse, before any work, a model that cannot do what was asked; returns its classes."""
    config = read_json(model.path / "config.json")
    architectures = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        named = ", ".join(architectures) or "none named in config.json"
        raise SpungeError(f"{model.ref}: not a text-classification model (architectures: {named}); "
                          "give a ...ForSequenceClassification model")
    classes = _label_names(config)
    names = set(classes.values()) | set((config.get("label2id") or {}).keys())
    nli = any(name.lower().startswith("entail") for name in names)
    if labels is None and nli:
        raise SpungeError(f"{model.ref}: candidate labels missing: this is an NLI model (labels: "
                          f"{', '.join(classes.values())}); give them with --labels A,B,... for zero-shot")
    if labels is not None and not nli:
        raise SpungeError(f"{model.ref}: has no 'entailment' label (labels: {', '.join(classes.values()) or 'none'}); "
                          "zero-shot --labels needs an NLI model")
    if labels is None and len(classes) < 2:
        raise SpungeError(f"{model.ref}: config.json defines {len(classes)} label(s) in id2label; a classifier needs two or more")
    return classes


def _cache_file(texts: list[str], model: ResolvedModel, spec: ClassifierSpec):
    key = sha256_json({"format": _FORMAT, "texts": sha256_texts(texts), "model": model.fingerprint,
                       "labels": spec.labels, "hypothesis": spec.hypothesis if spec.labels else None})
    return cache_root() / "labels" / f"{key}.safetensors"


def _load_classifier(model: ResolvedModel):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path)
        classifier = AutoModelForSequenceClassification.from_pretrained(model.path, dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise SpungeError(f"{model.ref}: cannot load as a text classifier ({str(exc).splitlines()[0][:200]})") from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(classifier.config, "pad_token_id", None) is None:
        classifier.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, classifier


def _limit(tokenizer, classifier) -> int:
    limits = [_MAX_TOKENS, getattr(tokenizer, "model_max_length", _MAX_TOKENS) or _MAX_TOKENS,
              getattr(classifier.config, "max_position_embeddings", _MAX_TOKENS) or _MAX_TOKENS]
    return int(min(limits))


def _classify(texts: list[str], model: ResolvedModel, classes: dict[int, str], batch_size: int, progress: bool) -> np.ndarray:
    import torch
    from tqdm.auto import tqdm

    tokenizer, classifier = _load_classifier(model)
    limit = _limit(tokenizer, classifier)
    multi_label = getattr(classifier.config, "problem_type", None) == "multi_label_classification"
    out = np.zeros((len(texts), len(classes)), dtype=np.float32)
    with torch.inference_mode(), tqdm(total=len(texts), desc="classify", unit="row", disable=not progress, leave=False) as bar:
        for rows in length_batches(texts, batch_size):
            inputs = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=limit, return_tensors="pt")
            logits = classifier(**inputs).logits.float()
            out[rows] = (logits.sigmoid() if multi_label else logits.softmax(-1)).numpy()
            bar.update(len(rows))
    return out


def _zero_shot(texts: list[str], model: ResolvedModel, spec: ClassifierSpec, progress: bool) -> np.ndarray:
    from tqdm.auto import tqdm
    from transformers import pipeline

    tokenizer, classifier = _load_classifier(model)
    classify = pipeline("zero-shot-classification", model=classifier, tokenizer=tokenizer, device="cpu")
    labels = list(spec.labels)
    column = {label: j for j, label in enumerate(labels)}
    out = np.zeros((len(texts), len(labels)), dtype=np.float32)
    with tqdm(total=len(texts), desc="zero-shot", unit="row", disable=not progress, leave=False) as bar:
        for rows in length_batches(texts, spec.batch_size):
            results = classify([texts[i] for i in rows], candidate_labels=labels, hypothesis_template=spec.hypothesis,
                               multi_label=False, truncation=True)
            for i, result in zip(rows, results if isinstance(results, list) else [results], strict=True):
                for label, score in zip(result["labels"], result["scores"], strict=True):
                    out[i, column[label]] = score
            bar.update(len(rows))
    return out


def classify_texts(texts: list[str], spec: ClassifierSpec, *, progress: bool = True, use_cache: bool = True) -> Scores:
    """Per-class probabilities for every text (cached; see module docstring)."""
    from safetensors.numpy import load_file, save_file

    model = resolve_model(spec.model)
    classes = check_classifier(model, spec.labels)
    names = list(spec.labels) if spec.labels else [classes[i] for i in sorted(classes)]
    cache = _cache_file(texts, model, spec)
    record = {"model": model.describe(), "zero_shot": spec.labels is not None, "cache": str(cache), "cached": False}
    if use_cache and cache.is_file():
        return Scores(classes=names, values=load_file(str(cache))["scores"], record={**record, "cached": True})
    if spec.labels:
        values = _zero_shot(texts, model, spec, progress)
    else:
        values = _classify(texts, model, classes, spec.batch_size, progress)
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            save_file({"scores": values}, str(tmp), metadata={"classes": json.dumps(names)})
            tmp.replace(cache)
    return Scores(classes=names, values=values, record=record)
