"""`baseline`: the same method on the un-split subsets at the same budget, and its model(s) per λ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spunge_merge.config import FrozenConfig
from spunge_merge.data.loading import Subset, load_subsets
from spunge_merge.fsutil import atomic_write_text, iter_jsonl, read_json
from spunge_merge.pipeline import runtime
from spunge_merge.pipeline.jobs import Job, resolved_model
from spunge_merge.pipeline.schema import baseline_corpora
from spunge_merge.pipeline.stages.common import FORMAT, Context, Work, lam_label, run_stage, run_works
from spunge_merge.pipeline.stages.training import retain_fp, settings_identity, subset_configs, train_job
from spunge_merge.provenance import fingerprint
from spunge_merge.unlearn import registry


def baseline_train_work(ctx: Context, subsets: list[Subset]) -> tuple[Work, dict[str, Any]]:
    """The un-split run: the method on the union of the subsets, or alternating over them (one data file each)
    where the method offers it; with `budget: matched` at the split runs' total steps (the method's `match_baseline`)."""
    section = ctx.pipeline.unlearn
    corpora = baseline_corpora(ctx.pipeline)
    config = runtime.method_settings(ctx.pipeline, ctx.pipeline.baseline.config)
    budget: dict[str, Any] = {"mode": ctx.pipeline.baseline.budget}
    if ctx.pipeline.baseline.budget == "matched":
        config, record = _matched(ctx, subsets, config, corpora)
        budget.update(record)
    union_run = corpora == "union"
    part = fingerprint(format=FORMAT, method=section.method, config=settings_identity(config), data=[s.sha256 for s in subsets],
                       model=ctx.model.fingerprint, retain=retain_fp(ctx), union=union_run)
    out = ctx.baseline_dir / "run"
    union = ctx.baseline_dir / "forget.jsonl"

    def build(force: dict[str, bool]) -> Job:
        if union_run:
            rows = _union_rows(subsets, config)
            atomic_write_text(union, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            forget = [str(union)]
        else:
            forget = [str(s.source.resolve()) for s in subsets]
        return train_job(ctx, "baseline/run", "un-split run", forget, out, config, force["run"])

    work = Work(stage="baseline", key="baseline/run", label="un-split run", parts={"run": part}, outputs=[out], build=build)
    return work, {"config": config, "budget": budget}


def _union_rows(subsets: list[Subset], config: FrozenConfig) -> list[dict[str, Any]]:
    """The un-split forget rows: each subset's texts, or (a loss method's question/answer form) its prompt and answer."""
    from spunge_merge.unlearn.lm_data import read_pairs

    prompt, answer = getattr(config, "prompt_column", None), getattr(config, "answer_column", None)
    if prompt and answer:
        return [{prompt: p, answer: a, subset.column or "subset": subset.value}
                for subset in subsets for p, a in read_pairs(subset.source, prompt, answer)]
    return [{"text": text, subset.column or "subset": subset.value} for subset in subsets for text in subset.texts]


def _matched(ctx: Context, subsets: list[Subset], config: FrozenConfig, corpora: str) -> tuple[FrozenConfig, dict[str, Any]]:
    """The un-split run's settings at the split runs' total steps (the method's `match_baseline`, which
    takes and gives the settings as mappings of the keys given), and the record of what changed."""
    method = registry.get_method(ctx.pipeline.unlearn.method)
    retain_texts = [row["text"] for _, row in iter_jsonl(ctx.retain_file)] if ctx.pipeline.unlearn.retain else None
    split = {name: settings_identity(c) for name, c in subset_configs(ctx, subsets).items()}
    matched = method.match_baseline(split, {s.name: list(s.texts) for s in subsets}, settings_identity(config),
                                    retain_texts, corpora)
    return type(config).model_validate(dict(matched.config)), matched.record


def baseline_lambdas(ctx: Context, config: FrozenConfig) -> list[float | None]:
    """The scales the baseline is built at: as given, else the method's default (None: the run as trained)."""
    method = registry.get_method(ctx.pipeline.unlearn.method)
    return list(ctx.pipeline.baseline.lambdas or [method.default_lambda(config)])


def stage_baseline(ctx: Context) -> dict[str, Any]:
    """The un-split run (unless the unlearn stage already trained it alongside the subsets), then its models."""
    subsets = load_subsets(ctx.split_dir)
    train, meta = baseline_train_work(ctx, subsets)
    lambdas = baseline_lambdas(ctx, meta["config"])
    model_works = []
    labels = {}
    for lam in lambdas:
        label = lam_label("baseline", lam, len(lambdas))
        out = ctx.baseline_dir / "models" / label
        labels[label] = out
        part = fingerprint(format=FORMAT, train=train.fingerprint, lam=lam)
        ctx.model_parts[label] = part

        def build(force: dict[str, bool], lam=lam, label=label, out=out) -> Job:
            return Job(key=f"baseline/{label}", label=label, function=build_baseline_model,
                       kwargs={"method": ctx.pipeline.unlearn.method, "model_ref": ctx.model.ref, "model_path": str(ctx.model.path),
                               "run": str(train.outputs[0]), "lam": lam, "out": str(out),
                               "scratch": str(ctx.baseline_dir / "scratch" / label)})

        model_works.append(Work(stage="baseline", key=f"baseline/{label}", label=f"model {label}", parts={"model": part},
                                outputs=[out], build=build, local=True))
    ctx.labels["baseline"] = labels
    fp = fingerprint(format=FORMAT, train=train.fingerprint, models=[w.fingerprint for w in model_works])

    def work() -> dict[str, Any]:
        run_works(ctx, [train])
        run_works(ctx, model_works)
        record = read_json(train.outputs[0] / "spunge.json")
        steps = (record.get("result") or {}).get("steps")
        budget = {**meta["budget"], "baseline_steps": steps}
        planned = budget.get("split_total")
        detail = f"{steps} steps" + (f" (split runs: {planned})" if planned is not None else "")
        return {"detail": detail, "budget": budget, "config": settings_identity(meta["config"])}

    return run_stage(ctx, "baseline", fp, [*labels.values(), train.outputs[0]], work)


def build_baseline_model(*, method: str, model_ref: str, model_path: str, run: str, lam: float | None, out: str,
                         scratch: str) -> dict[str, Any]:
    """A full model directory of the baseline at scale λ, without retraining: the method's `to_model`."""
    registry.get_method(method).to_model(resolved_model(model_ref, model_path), Path(run), lam, Path(out), Path(scratch))
    return {"path": out, "lambda": lam}
