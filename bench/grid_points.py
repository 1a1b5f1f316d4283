"""Models at many λ from one seeded pipeline run, without retraining: the shared part of the grid benchmarks.

`bench/knowledge_grid.py` (merges × λ over the demo) and `bench/frontiers.py` (the frontier grid over
methods, forget pairs and base models) both take a finished per-seed run directory (its split runs in
`unlearn/`, its un-split run in `baseline/run`), build Spunge merges at several λ through
`spunge_merge.merge.merge_runs` and the baseline at several λ through its method's registry record
(`to_model`), and score each model with the pipeline's own knowledge and perplexity settings.
Every finished model and evaluation is kept and skipped on the next call, so a killed run loses at
most the model in progress (models and evaluations are written to a temporary path, then renamed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

# Merges by name (density 1.0 where it applies: RMU changes three matrices and trimming them measures nothing)
MERGES = {
    "ties": {"method": "ties", "density": 1.0, "normalize": True},  # TIES as in the paper
    "ties-sum": {"method": "ties", "density": 1.0, "normalize": False},  # agreeing edits summed, not averaged
    "task_arithmetic": {"method": "task_arithmetic"},
    "dare_ties": {"method": "dare_ties", "density": 0.5, "normalize": True},
}


def label(arm: str, lam: float) -> str:
    """A grid model's name: `baseline-lam2`, `spunge-ties-lam0.5` (spunge_merge.evaluate.matched's naming)."""
    from spunge_merge.evaluate.matched import point_label

    return point_label(arm, lam)


def arm_and_lambda(name: str) -> tuple[str, float]:
    """The inverse of `label`; the base model is λ 0 of every arm (arm `base`)."""
    from spunge_merge.evaluate.matched import arm_and_lambda as parse

    return parse(name)


def evaluate_model(model_dir: Path, out: Path, eval_section: dict, files_dir: Path) -> None:
    """The pipeline's knowledge and perplexity evaluations of one model, each skipped when already there.

    `eval_section` is the pipeline file's `eval:` mapping; its relative paths start at `files_dir`.
    """
    from spunge_merge.data.loading import load_table
    from spunge_merge.data.split import apply_filters
    from spunge_merge.data.where import parse_condition
    from spunge_merge.evaluate.knowledge import KNOWLEDGE_FILE, evaluate_knowledge
    from spunge_merge.evaluate.perplexity import evaluate_perplexity
    from spunge_merge.fsutil import atomic_write_text
    from spunge_merge.models import ResolvedModel

    model = ResolvedModel(ref=str(model_dir), path=model_dir)
    knowledge = dict(eval_section["knowledge"])
    if not (out / KNOWLEDGE_FILE).is_file():
        evaluate_knowledge(model, files_dir / knowledge.pop("facts"), out, device="cpu", **knowledge)
    if not (out / "perplexity.json").is_file():
        ppl = dict(eval_section["perplexity"])
        data = ppl.pop("data")
        table = apply_filters(load_table(files_dir / data["path"]), [parse_condition(w) for w in data.get("where", [])],
                              data["path"])
        texts = out / "ppl-texts.jsonl"
        atomic_write_text(texts, "".join(json.dumps({"text": t}) + "\n" for t in table["text"]))
        evaluate_perplexity(model, texts, out, device="cpu", progress=False, **ppl)


def build_model(arm: str, lam: float, seed_dir: Path, model_dir: Path, *, base, method, merge_settings: dict[str, dict],
                views_dir: Path, scratch: Path) -> None:
    """One grid model: the baseline at λ through its method's record, or a merge of the seed's split runs at λ."""
    from spunge_merge.merge import merge_runs

    if arm == "baseline":
        method.to_model(base, seed_dir / "baseline" / "run", lam, model_dir, scratch)
    else:
        merge_runs(base, [seed_dir / "unlearn"], model_dir, lam=lam, views_dir=views_dir, progress=False, force=True,
                   **merge_settings[arm.removeprefix("spunge-")])


def build_seed_points(seed_dir: Path, work: Path, *, base, method, eval_section: dict, files_dir: Path,
                      lambdas: list[float], baseline_lambdas: list[float], merges: list[str],
                      merge_settings: dict[str, dict] | None = None, base_eval: Path | None = None,
                      views_dir: Path | None = None, keep_models: bool = True,
                      on_model: Callable[[str, float], None] | None = None) -> dict[str, Path]:
    """{label: eval dir} for one seed's run: base, baseline at every λ, every merge at every λ.

    `base` is the run's `ResolvedModel`, `method` its registry record. Models go to `work/models/<label>`,
    evaluations to `work/eval/<label>`; both are reused when present. `base_eval` is where the base
    model's evaluation is (default: the seed's own `eval/base`); `views_dir` where mergekit's per-run
    views go (default `work/.views`; share one across runs of the same base to keep one base view).
    `keep_models=False` deletes each model once evaluated (a full model per λ adds up to gigabytes;
    the evaluation is what a rerun skips on). `on_model(label, seconds)` is called after each model that
    had to be built or evaluated (for timing records).
    """
    from spunge_merge.evaluate.knowledge import KNOWLEDGE_FILE

    settings = merge_settings or MERGES
    import shutil

    points: dict[str, Path] = {"base": base_eval or seed_dir / "eval" / "base"}
    wanted = [("baseline", lam) for lam in baseline_lambdas] + [(f"spunge-{name}", lam) for name in merges for lam in lambdas]
    for arm, lam in wanted:
        name = label(arm, lam)
        model_dir, eval_dir = work / "models" / name, work / "eval" / name
        points[name] = eval_dir
        if (eval_dir / KNOWLEDGE_FILE).is_file() and (eval_dir / "perplexity.json").is_file():
            continue
        started = time.perf_counter()
        if not (model_dir / "config.json").is_file():
            build_model(arm, lam, seed_dir, model_dir, base=base, method=method, merge_settings=settings,
                        views_dir=views_dir or work / ".views", scratch=work / "scratch")
        evaluate_model(model_dir, eval_dir, eval_section, files_dir)
        if not keep_models:
            shutil.rmtree(model_dir)
        if on_model is not None:
            on_model(name, time.perf_counter() - started)
    return points
