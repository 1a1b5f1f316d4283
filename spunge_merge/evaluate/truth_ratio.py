"""TOFU's truth ratio (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs").

A fact is a question, a correct answer (TOFU: its paraphrase) and perturbed answers (wrong ones in
the same style). Each answer's length-normalised probability is P(a|q)^(1/|a|) = exp(−mean token NLL
of " a" after q). The truth ratio R = P̄_perturbed / P_correct, P̄_perturbed the geometric mean over the
perturbed answers (exp of minus the mean of their mean NLLs; TOFU's and open-unlearning's code, where
the paper writes an arithmetic mean). R well below 1: the model prefers the truth; R near 1: it cannot
tell the truth from the perturbations (what a model never trained on the facts shows).

Aggregates over facts, each with a bootstrap interval over facts: `forget` = mean of min(R, 1/R)
(open-unlearning's `closer_to_1_better`, for forget facts: higher is more forgotten), `retain` = mean of
max(0, 1 − R) (`true_better`, for facts the model should keep), and the mean R.

A WMDP-form fact (the project's bench/knowledge/facts-*.jsonl: prompt, answer, 4 options) gives its
options other than the answer as the perturbed answers (`options_column`), the answer as the correct one.

Forget quality (TOFU's, optional): given `reference`, a truth_ratio result of a model never trained on
the forget facts (TOFU's retain model) on the same facts, the p-value of a two-sample Kolmogorov-Smirnov
test between the two models' per-fact R (scipy's `ks_2samp`, as open-unlearning's `ks_test`): high means
the unlearned model's ratios are indistinguishable from the retain model's.

Output (into `out/`): `truth_ratio.json` (kind "truth_ratio") and `truth_ratio.jsonl` (each fact's R).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from spunge_merge.config import FrozenConfig, build_config
from spunge_merge.data.loading import load_table, source_sha256
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.registry import Column, Computed, Evaluation, EvaluationRequest, PathText, Planned, register, run_evaluation
from spunge_merge.evaluate.stats import interval_table
from spunge_merge.evaluate.token_scores import continuation_logprobs, load_scorer
from spunge_merge.fsutil import atomic_write_text, read_json, sha256_json
from spunge_merge.models import ResolvedModel
from spunge_merge.provenance import fingerprint as make_fingerprint

TRUTH_RATIO_FILE = "truth_ratio.json"
ROWS_FILE = "truth_ratio.jsonl"
SUMMARY_FILE = "truth_ratio.md"


class TruthRatioConfig(FrozenConfig):
    """Settings of a truth-ratio evaluation; the column names default to TOFU's."""

    data: PathText = Field(..., description="Facts (.jsonl/.json/.csv/.parquet), e.g. TOFU's forget10_perturbed, or "
                                            "bench/knowledge/facts-*.jsonl with options_column. In a pipeline also a data "
                                            "source ({path, config, hub_split, where, ...}), its rows written with every column.",
                           json_schema_extra={"cli_flags": ["--data", "-d"]})
    where: list[str] = Field(default_factory=list, description="Keep only rows matching these conditions (the `spunge split` "
                                                               "--where syntax), all must hold.")
    question_column: str = Field("question", description="Column holding the question (prompt).")
    answer_column: str = Field("paraphrased_answer", description="Column holding the correct answer (TOFU: its paraphrase).")
    perturbed_column: str | None = Field("perturbed_answer", description="Column holding a list of perturbed (wrong) answers.")
    options_column: str | None = Field(None, description="Instead of perturbed_column: a column of options holding the answer; "
                                                         "the other options are the perturbed answers (WMDP form).")
    max_facts: int | None = Field(None, ge=1, description="Use only the first N facts.")
    reference: PathText | None = Field(None, description="A truth_ratio result folder of a model never trained on the forget "
                                                         "facts (TOFU's retain model), on the same facts: adds forget quality, the "
                                                         "KS-test p-value between the two models' truth ratios (needs scipy).")
    batch_size: int = Field(16, ge=1, description="Question-answer pairs per forward pass.")
    resamples: int = Field(1000, ge=1, description="Bootstrap resamples of the intervals.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")

    @field_validator("where", mode="before")
    @classmethod
    def _where_list(cls, value: Any) -> Any:
        return [] if value is None else [value] if isinstance(value, str) else list(value)


def load_truth_facts(cfg: TruthRatioConfig) -> list[dict[str, Any]]:
    """Each fact as {question, answer, perturbed: [...]}; errors name the file, the column and the fact."""
    from spunge_merge.data.split import apply_filters
    from spunge_merge.data.where import parse_condition

    table = load_table(cfg.data)
    wrong_column = cfg.options_column or cfg.perturbed_column
    if wrong_column is None:
        raise SpungeError(f"{cfg.data}: give perturbed_column or options_column (where the wrong answers are)")
    for column in (cfg.question_column, cfg.answer_column, wrong_column):
        if column not in table.column_names:
            raise SpungeError(f"{cfg.data}: no column '{column}' (columns: {', '.join(table.column_names)})")
    table = apply_filters(table, [parse_condition(expr) for expr in cfg.where], str(cfg.data))
    facts = []
    for row in table:
        question, answer, wrong = str(row[cfg.question_column]), str(row[cfg.answer_column]), row[wrong_column]
        if not isinstance(wrong, list | tuple):
            raise SpungeError(f"{cfg.data}: column '{wrong_column}': '{question}': expected a list of answers, got {wrong!r}")
        perturbed = [str(w) for w in wrong if str(w).strip() and (not cfg.options_column or str(w) != answer)]
        if cfg.options_column and len(perturbed) == len(wrong):
            raise SpungeError(f"{cfg.data}: column '{wrong_column}': '{question}': the answer '{answer}' is not one of the options")
        if not perturbed:
            raise SpungeError(f"{cfg.data}: column '{wrong_column}': '{question}': no perturbed answer")
        facts.append({"question": question, "answer": answer, "perturbed": perturbed})
    if not facts:
        raise SpungeError(f"{cfg.data}: no facts left after the filters {' AND '.join(cfg.where)}")
    return facts[:cfg.max_facts] if cfg.max_facts is not None else facts


def truth_ratio(correct: tuple[float, int], perturbed: list[tuple[float, int]]) -> float:
    """R = exp(−mean_j NLL̄(perturbed_j)) / exp(−NLL̄(correct)); each (Σ log p, tokens) of one answer."""
    correct_mean = correct[0] / correct[1]
    perturbed_mean = float(np.mean([total / count for total, count in perturbed]))
    return math.exp(perturbed_mean - correct_mean)


def plan_truth_ratio(request: EvaluationRequest) -> Planned:
    """Load the facts (they decide the fingerprint); score the model only when asked."""
    from spunge_merge.evaluate.stats import hierarchical_bootstrap

    cfg: TruthRatioConfig = request.config
    resolved = request.model
    facts = load_truth_facts(cfg)
    reference = load_reference(cfg, sha256_json(facts))
    settings = cfg.model_dump(exclude={"data", "device", "reference"})
    key = make_fingerprint(kind="truth_ratio", model=resolved.fingerprint, facts=sha256_json(facts), settings=settings,
                           **({"reference": reference["fingerprint"]} if reference else {}))

    def compute() -> Computed:
        started = time.perf_counter()
        lm, tokenizer = load_scorer(resolved, cfg.device, cfg.dtype)
        pairs = [(f["question"], a) for f in facts for a in (f["answer"], *f["perturbed"])]
        scored = iter(continuation_logprobs(lm, tokenizer, pairs, batch_size=cfg.batch_size))
        rows = []
        for fact in facts:
            correct = next(scored)
            wrong = [next(scored) for _ in fact["perturbed"]]
            rows.append({**fact, "correct": correct, "perturbed_scores": wrong, "truth_ratio": truth_ratio(correct, wrong)})
        ratios = [r["truth_ratio"] for r in rows]

        def summary(values: list[float]) -> dict[str, float]:
            boot = hierarchical_bootstrap([values], n=cfg.resamples, seed=cfg.seed)
            return {"mean": float(np.mean(values)), "low": boot["low"], "high": boot["high"]}

        result = {"kind": "truth_ratio", "fingerprint": key, "model": resolved.describe(),
                  "data": {"path": cfg.data, "where": list(cfg.where), "sha256": source_sha256(cfg.data),
                           "facts_sha256": sha256_json(facts)},
                  "settings": cfg.model_dump(exclude={"data"}), "facts": len(rows),
                  "forget": summary([min(r, 1 / r) for r in ratios]), "retain": summary([max(0.0, 1 - r) for r in ratios]),
                  "mean_ratio": summary(ratios),
                  "definition": "R = geometric-mean normalised P(perturbed) / normalised P(correct); forget = mean min(R, 1/R), "
                                "retain = mean max(0, 1 − R)",
                  "seconds": round(time.perf_counter() - started, 2), "files": {"rows": ROWS_FILE}}
        if reference is not None:
            result["forget_quality"] = forget_quality(ratios, reference)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return Computed(result, {ROWS_FILE: lambda path: atomic_write_text(path, text),
                                 SUMMARY_FILE: lambda path: atomic_write_text(path, summary_markdown(result))})

    return Planned(key, compute)


def load_reference(cfg: TruthRatioConfig, facts_sha256: str) -> dict[str, Any] | None:
    """The per-fact R of `cfg.reference` (a truth_ratio result on the same facts), or None without one."""
    if cfg.reference is None:
        return None
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        raise SpungeError("forget quality (truth_ratio's reference) needs scipy: pip install scipy")
    folder = Path(cfg.reference)
    if not (folder / TRUTH_RATIO_FILE).is_file() or not (folder / ROWS_FILE).is_file():
        raise SpungeError(f"{folder}: not a truth_ratio result (no {TRUTH_RATIO_FILE} and {ROWS_FILE}); evaluate the "
                          "reference model with `spunge eval truth_ratio` first")
    stored = read_json(folder / TRUTH_RATIO_FILE)
    theirs = (stored.get("data") or {}).get("facts_sha256") if isinstance(stored, dict) else None
    if not isinstance(stored, dict) or stored.get("kind") != "truth_ratio":
        raise SpungeError(f"{folder / TRUTH_RATIO_FILE}: not a truth_ratio result")
    if theirs != facts_sha256:
        raise SpungeError(f"{folder}: scored other facts than {cfg.data} (facts sha256 {str(theirs)[:12]} vs {facts_sha256[:12]}); "
                          "forget quality compares two models on the same facts")
    ratios = [float(json.loads(line)["truth_ratio"]) for line in (folder / ROWS_FILE).read_text(encoding="utf-8").splitlines()
              if line.strip()]
    if len(ratios) != stored.get("facts"):
        raise SpungeError(f"{folder / ROWS_FILE}: {len(ratios)} rows, but {TRUTH_RATIO_FILE} counts {stored.get('facts')} facts")
    return {"ratios": ratios, "fingerprint": stored.get("fingerprint"), "path": str(folder), "model": stored.get("model")}


def forget_quality(ratios: list[float], reference: dict[str, Any]) -> dict[str, Any]:
    """TOFU's forget quality: the p-value of a two-sample KS test between this model's and the reference's R."""
    from scipy.stats import ks_2samp

    test = ks_2samp(ratios, reference["ratios"])
    return {"p_value": float(test.pvalue), "ks_statistic": float(test.statistic), "facts": len(ratios),
            "reference": {"path": reference["path"], "fingerprint": reference["fingerprint"], "model": reference["model"]},
            "definition": "p-value of the two-sample Kolmogorov-Smirnov test between the per-fact truth ratios R of this "
                          "model and of the reference (TOFU's forget quality; higher: closer to a model never trained on them)"}


def summary_markdown(result: dict[str, Any]) -> str:
    """The model card's view: the three aggregates with their intervals."""
    lines = ["# Truth ratio (TOFU)", "", f"{result['facts']} facts; R = perturbed answers' normalised probability over the "
             "correct answer's.", ""]
    labels = (("forget", "min(R, 1/R) (forget: higher is more forgotten)"), ("retain", "max(0, 1 − R) (retain)"), ("mean_ratio", "R"))
    lines += interval_table("aggregate", [(label, result[key]) for key, label in labels])
    if quality := result.get("forget_quality"):
        lines += ["", f"Forget quality (KS-test p-value against {quality['reference']['path']}): {quality['p_value']:.4g} "
                      f"(KS statistic {quality['ks_statistic']:.3f})"]
    return "\n".join(lines) + "\n"


def evaluate_truth_ratio(model: str | Path | ResolvedModel, data: str | Path, out: str | Path, *, force: bool = False,
                         **settings: Any) -> dict[str, Any]:
    """TOFU's truth ratio of `model` on the facts of `data`; writes truth_ratio.json/.jsonl into `out`."""
    cfg = build_config(TruthRatioConfig, overrides={"data": str(data), **settings})
    return run_evaluation(TRUTH_RATIO, model, out, cfg, force=force)


TRUTH_RATIO = register(Evaluation(
    name="truth_ratio",
    summary="TOFU's truth ratio: perturbed answers' normalised probability over the correct answer's, per fact.",
    config_class=TruthRatioConfig,
    plan=plan_truth_ratio,
    result_file=TRUTH_RATIO_FILE,
    headline=lambda result: round(result["forget"]["mean"], 4),
    columns=(Column("truth_ratio_forget", "truth ratio min(R,1/R)", lambda result: result["forget"]["mean"], rank=64, digits=3,
                    lower_is_better=False, utility=False),
             Column("forget_quality", "forget quality (KS p)", lambda result: (result.get("forget_quality") or {}).get("p_value"),
                    rank=65, digits=3, lower_is_better=False, utility=False)),
    path_settings=("data", "reference"),
    data_settings=("data",),
    row_settings=("data",),
))
