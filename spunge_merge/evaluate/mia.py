"""Membership inference on the forget texts: can an attacker still tell them from unseen texts of the same kind?

Members are the forget texts, non-members held-out texts of the same distribution (MUSE's
forget/holdout, TOFU's forget/perturbed-free holdout, or the project's held-out facts). Each attack
gives every text a membership score, higher meaning "more likely seen in training":

- `loss` (Yeom et al. 2018): minus the mean token NLL.
- `zlib` (Carlini et al. 2021, "Extracting Training Data from Large Language Models"): minus the mean
  token NLL divided by the zlib-compressed length of the text in bytes.
- `min_k` (Shi et al. 2024, "Detecting Pretraining Data", Min-K % Prob): the mean of the k % lowest
  token log-probabilities (at least one token).
- `min_k_plus_plus` (Zhang et al. 2024, "Min-K%++"): the same over (log p(x_t|x_<t) − μ_t)/σ_t, μ_t and
  σ_t the mean and standard deviation of log p(z|x_<t) for z drawn from the model's own next-token
  distribution at t.

Per attack the AUC = P(a member scores above a non-member) + ½·P(tie), with a bootstrap interval
(members and non-members resampled apart; `stats.auc_bootstrap`). 0.5 is chance: the forget texts look
unseen; near 1 they are recognisably memorised; well below 0.5 they look *less* likely than unseen text
(over-unlearning, itself a tell). MUSE reports this AUC; open-unlearning reports 1 − AUC.

Output (into `out/`): `mia.json` (kind "mia": per-attack AUC and interval, the settings, the data files'
sha256) and `mia.jsonl` (every text's scores, member or not).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from spunge_merge.config import FrozenConfig, build_config
from spunge_merge.data.loading import read_texts, source_sha256
from spunge_merge.evaluate.registry import Column, Computed, Evaluation, EvaluationRequest, PathText, Planned, register, run_evaluation
from spunge_merge.evaluate.stats import interval_table
from spunge_merge.evaluate.token_scores import TokenScores, encode, load_scorer, pad_id, score_ids
from spunge_merge.fsutil import atomic_write_text, sha256_texts
from spunge_merge.models import ResolvedModel
from spunge_merge.provenance import fingerprint as make_fingerprint

MIA_FILE = "mia.json"
SCORES_FILE = "mia.jsonl"
SUMMARY_FILE = "mia.md"
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")


class MIAConfig(FrozenConfig):
    """Settings of a membership-inference evaluation (defaults are the CLI's; k = 0.4 as MUSE and open-unlearning)."""

    members: PathText = Field(..., description="The forget texts (members): .jsonl/.json/.csv/.parquet (column text_column) or "
                                               ".txt. In a pipeline also a data source with filters ({path, config, hub_split, "
                                               "where, ...}), e.g. MUSE's raw forget split.",
                              json_schema_extra={"cli_flags": ["--members"]})
    nonmembers: PathText = Field(..., description="Held-out texts of the same distribution, never trained on (non-members).",
                                 json_schema_extra={"cli_flags": ["--nonmembers"]})
    text_column: str = Field("text", description="Column holding the text in both files.")
    max_texts: int | None = Field(None, ge=1, description="Score only the first N texts of each file.")
    max_length: int = Field(512, ge=2, description="Tokens scored per text (longer texts are cut).")
    k: float = Field(0.4, gt=0.0, le=1.0, description="Min-K % and Min-K %++: the fraction of a text's lowest token scores averaged.")
    batch_size: int = Field(8, ge=1, description="Texts per forward pass.")
    resamples: int = Field(1000, ge=1, description="Bootstrap resamples of each AUC's interval.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")


def lowest_mean(values: np.ndarray, k: float) -> float:
    """Mean of the max(1, ⌊k·n⌋) smallest values."""
    count = max(1, int(len(values) * k))
    return float(np.sort(values)[:count].mean())


def attack_scores(scores: TokenScores, text: str, k: float) -> dict[str, float]:
    """Every attack's membership score of one text (higher = more likely a member)."""
    mean_nll = float(-scores.logprob.mean())
    normalised = (scores.logprob - scores.mean) / np.maximum(scores.std, 1e-12)
    return {"loss": -mean_nll,
            "zlib": -mean_nll / len(zlib.compress(text.encode("utf-8"))),
            "min_k": lowest_mean(scores.logprob, k),
            "min_k_plus_plus": lowest_mean(normalised, k)}


def read_side(path: str, cfg: MIAConfig) -> list[str]:
    texts = read_texts(path, cfg.text_column)
    return texts[:cfg.max_texts] if cfg.max_texts is not None else texts


def membership_scores(resolved: ResolvedModel, texts: Sequence[str], cfg: MIAConfig) -> list[dict[str, float]]:
    """Every attack's score of each text under `resolved` (texts cut to max_length tokens; the zlib length is of the cut text)."""
    lm, tokenizer = load_scorer(resolved, cfg.device, cfg.dtype)
    ids = encode(tokenizer, texts, cfg.max_length)
    usable = [i for i, seq in enumerate(ids) if len(seq) >= 2]
    scored = score_ids(lm, [ids[i] for i in usable], pad_id=pad_id(tokenizer), batch_size=cfg.batch_size)
    out: list[dict[str, float]] = [{} for _ in texts]
    for i, scores in zip(usable, scored, strict=True):
        cut = tokenizer.decode(ids[i], skip_special_tokens=True)
        out[i] = attack_scores(scores, cut, cfg.k)
    return out


def data_identity(cfg: MIAConfig) -> tuple[list[str], list[str], dict[str, Any]]:
    """(members, non-members, what the result records of them)."""
    from spunge_merge.errors import SpungeError

    members, nonmembers = read_side(cfg.members, cfg), read_side(cfg.nonmembers, cfg)
    overlap = set(members) & set(nonmembers)
    if overlap:
        raise SpungeError(f"{cfg.nonmembers}: {len(overlap)} text(s) also in {cfg.members}, e.g. '{sorted(overlap)[0][:60]}'")
    record = {"members": {"path": cfg.members, "sha256": source_sha256(cfg.members), "texts": len(members),
                          "texts_sha256": sha256_texts(members)},
              "nonmembers": {"path": cfg.nonmembers, "sha256": source_sha256(cfg.nonmembers), "texts": len(nonmembers),
                             "texts_sha256": sha256_texts(nonmembers)}}
    return members, nonmembers, record


def plan_mia(request: EvaluationRequest) -> Planned:
    """Read both text sets (they decide the fingerprint); score the model only when asked."""
    from spunge_merge.evaluate.stats import auc_bootstrap

    cfg: MIAConfig = request.config
    resolved = request.model
    members, nonmembers, record = data_identity(cfg)
    settings = cfg.model_dump(exclude={"members", "nonmembers", "device"})
    key = make_fingerprint(kind="mia", model=resolved.fingerprint, members=record["members"]["texts_sha256"],
                           nonmembers=record["nonmembers"]["texts_sha256"], settings=settings)

    def compute() -> Computed:
        started = time.perf_counter()
        scores = membership_scores(resolved, [*members, *nonmembers], cfg)
        side = [True] * len(members) + [False] * len(nonmembers)
        attacks = {}
        for attack in ATTACKS:
            pos = [s[attack] for s, member in zip(scores, side, strict=True) if member and s]
            neg = [s[attack] for s, member in zip(scores, side, strict=True) if not member and s]
            attacks[attack] = auc_bootstrap(pos, neg, n=cfg.resamples, seed=cfg.seed)
        rows = [{"member": member, "text": text, **s} for text, member, s in zip([*members, *nonmembers], side, scores, strict=True)]
        result = {"kind": "mia", "fingerprint": key, "model": resolved.describe(), **record,
                  "settings": cfg.model_dump(exclude={"members", "nonmembers"}), "attacks": attacks,
                  "auc": "P(member score > non-member score) + ½·P(tie); 0.5 chance, 1 memorised (open-unlearning reports 1 − AUC)",
                  "seconds": round(time.perf_counter() - started, 2), "files": {"scores": SCORES_FILE}}
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Computed(result, {SCORES_FILE: lambda path: atomic_write_text(path, text),
                                 SUMMARY_FILE: lambda path: atomic_write_text(path, summary_markdown(result))})

    return Planned(key, compute)


def summary_markdown(result: dict[str, Any]) -> str:
    """The model card's view: one row per attack."""
    lines = ["# Membership inference", "",
             f"{result['members']['texts']} forget texts (members) against {result['nonmembers']['texts']} held-out texts; "
             "AUC = P(a member scores above a non-member): 0.5 chance, 1 memorised.", ""]
    names = {"loss": "LOSS", "zlib": "zlib", "min_k": "Min-K %", "min_k_plus_plus": "Min-K %++"}
    lines += interval_table("attack", [(names.get(attack, attack), entry) for attack, entry in result["attacks"].items()],
                            value="auc", value_title="AUC")
    return "\n".join(lines) + "\n"


def evaluate_mia(model: str | Path | ResolvedModel, members: str | Path, nonmembers: str | Path, out: str | Path, *,
                 force: bool = False, **settings: Any) -> dict[str, Any]:
    """Membership-inference AUCs of `model` on `members` against `nonmembers`; writes mia.json/.jsonl into `out`."""
    cfg = build_config(MIAConfig, overrides={"members": str(members), "nonmembers": str(nonmembers), **settings})
    return run_evaluation(MIA, model, out, cfg, force=force)


MIA = register(Evaluation(
    name="mia",
    summary="Membership inference (LOSS, zlib, Min-K %, Min-K %++): AUC of forget texts against held-out texts, with intervals.",
    config_class=MIAConfig,
    plan=plan_mia,
    result_file=MIA_FILE,
    headline=lambda result: {attack: round(entry["auc"], 4) for attack, entry in result["attacks"].items()},
    columns=(Column("mia_auc", "MIA AUC (Min-K %++)", lambda result: result["attacks"]["min_k_plus_plus"]["auc"], rank=60,
                    digits=3, utility=False),),
    path_settings=("members", "nonmembers"),
    data_settings=("members", "nonmembers"),
))
