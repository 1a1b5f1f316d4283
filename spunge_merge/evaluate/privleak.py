"""Privacy leakage (MUSE's PrivLeak, Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation").

PrivLeak = (AUC_model − AUC_reference) / AUC_reference × 100 %, where AUC is a membership-inference
attack's AUC of the forget texts (members) against held-out texts (non-members), scored the same way
on the evaluated model and on a reference: ideally a model trained without the forget data (MUSE's
"retrain"), else the base model. Near 0: the forget texts leak no more (and no less) than the
reference says they should; large positive: still recognisably trained on (under-unlearning); large
negative: pushed below unseen text (over-unlearning). MUSE uses Min-K % Prob, the default `attack`.

The interval is a paired bootstrap: each resample draws members and non-members (apart) and scores
both models' AUC on the same draw, so the reference's noise is counted once, not twice.

Output (into `out/`): `privleak.json` (kind "privleak": both AUCs, PrivLeak and its interval, the
reference, the data files' sha256).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from spunge_merge.config import build_config
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.mia import MIAConfig, data_identity, membership_scores
from spunge_merge.evaluate.registry import Column, Computed, Evaluation, EvaluationRequest, PathText, Planned, register, run_evaluation
from spunge_merge.evaluate.stats import auc
from spunge_merge.fsutil import atomic_write_text
from spunge_merge.models import ResolvedModel, resolve_model
from spunge_merge.provenance import fingerprint as make_fingerprint

PRIVLEAK_FILE = "privleak.json"
SUMMARY_FILE = "privleak.md"


class PrivLeakConfig(MIAConfig):
    """Settings of a PrivLeak evaluation: the MIA settings, the reference model and the attack."""

    reference: PathText = Field(..., description="The reference model: one trained without the forget data (MUSE's retrain), "
                                                 "or the base model (a Hub id, a local directory, or an alias such as "
                                                 "smollm2-135m).", json_schema_extra={"cli_flags": ["--reference"]})
    attack: Literal["loss", "zlib", "min_k", "min_k_plus_plus"] = Field(
        "min_k", description="The membership attack whose AUC is compared (MUSE: min_k, Min-K % Prob).")


def privleak(model_auc: float, reference_auc: float) -> float:
    """(AUC_model − AUC_reference) / AUC_reference × 100."""
    return (model_auc - reference_auc) / reference_auc * 100.0


def plan_privleak(request: EvaluationRequest) -> Planned:
    """Read both text sets and resolve the reference (they decide the fingerprint); score both models only when asked."""
    cfg: PrivLeakConfig = request.config
    resolved, reference = request.model, resolve_model(cfg.reference)
    members, nonmembers, record = data_identity(cfg)
    settings = cfg.model_dump(exclude={"members", "nonmembers", "device", "reference"})
    key = make_fingerprint(kind="privleak", model=resolved.fingerprint, reference=reference.fingerprint,
                           members=record["members"]["texts_sha256"], nonmembers=record["nonmembers"]["texts_sha256"],
                           settings=settings)

    def compute() -> Computed:
        started = time.perf_counter()
        texts = [*members, *nonmembers]
        mine = membership_scores(resolved, texts, cfg)
        theirs = membership_scores(reference, texts, cfg)
        keep = [i for i in range(len(texts)) if mine[i] and theirs[i]]  # texts of at least 2 tokens
        pos = np.array([i for i in keep if i < len(members)])
        neg = np.array([i for i in keep if i >= len(members)])
        a = np.array([mine[i].get(cfg.attack, np.nan) for i in range(len(texts))])
        b = np.array([theirs[i].get(cfg.attack, np.nan) for i in range(len(texts))])
        model_auc, reference_auc = auc(a[pos], a[neg]), auc(b[pos], b[neg])
        if reference_auc == 0:
            raise SpungeError(f"{cfg.reference}: the reference's {cfg.attack} AUC is 0 (every non-member scores above every "
                              "member), so PrivLeak, relative to it, is undefined")
        rng = np.random.default_rng(cfg.seed)
        replicate = []
        for _ in range(cfg.resamples):
            p, n = pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]
            ref = auc(b[p], b[n])
            if ref > 0:  # a draw where the reference's AUC is 0 has no PrivLeak: left out and counted
                replicate.append(privleak(auc(a[p], a[n]), ref))
        interval = [float(v) for v in np.percentile(replicate, [2.5, 97.5])] if replicate else [None, None]
        result = {"kind": "privleak", "fingerprint": key, "model": resolved.describe(), "reference": reference.describe(),
                  **record, "settings": cfg.model_dump(exclude={"members", "nonmembers"}), "attack": cfg.attack,
                  "auc": model_auc, "reference_auc": reference_auc, "privleak": privleak(model_auc, reference_auc),
                  "ci95": interval, "resamples": cfg.resamples,
                  "resamples_undefined": cfg.resamples - len(replicate),
                  "definition": "(AUC_model − AUC_reference) / AUC_reference × 100 (MUSE); AUC = P(member scores above non-member)",
                  "seconds": round(time.perf_counter() - started, 2)}
        return Computed(result, {SUMMARY_FILE: lambda path: atomic_write_text(path, summary_markdown(result))})

    return Planned(key, compute)


def summary_markdown(result: dict[str, Any]) -> str:
    """The model card's view: PrivLeak with its interval and both AUCs."""
    low, high = result["ci95"]
    interval = f"[{low:+.1f}, {high:+.1f}]" if low is not None else "undefined"
    return (f"# Privacy leakage (PrivLeak)\n\n{result['attack']} AUC {result['auc']:.3f} against the reference's "
            f"{result['reference_auc']:.3f} ({result['reference']['ref']}): PrivLeak **{result['privleak']:+.1f} %** "
            f"(95 % interval {interval}); near 0 is the aim, positive under-, negative over-unlearning.\n")


def evaluate_privleak(model: str | Path | ResolvedModel, members: str | Path, nonmembers: str | Path, reference: str | Path,
                      out: str | Path, *, force: bool = False, **settings: Any) -> dict[str, Any]:
    """PrivLeak of `model` relative to `reference`; writes privleak.json into `out`."""
    cfg = build_config(PrivLeakConfig, overrides={"members": str(members), "nonmembers": str(nonmembers),
                                                  "reference": str(reference), **settings})
    return run_evaluation(PRIVLEAK, model, out, cfg, force=force)


PRIVLEAK = register(Evaluation(
    name="privleak",
    summary="MUSE's PrivLeak: the forget texts' MIA AUC relative to a reference model's (retrained, or the base), in %.",
    config_class=PrivLeakConfig,
    plan=plan_privleak,
    result_file=PRIVLEAK_FILE,
    headline=lambda result: round(result["privleak"], 2),
    columns=(Column("privleak_abs", "|PrivLeak| %", lambda result: abs(result["privleak"]), rank=61, digits=1, utility=False),),
    path_settings=("members", "nonmembers", "reference"),
    data_settings=("members", "nonmembers"),
))
