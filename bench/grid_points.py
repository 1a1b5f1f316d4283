"""Models at many λ from one seeded pipeline run, without retraining: the shared part of the grid benchmarks.

`bench/knowledge_grid.py` (merges × λ over the demo) and `bench/frontiers.py` (the frontier grid over
methods, forget pairs and base models) both take a finished per-seed run directory (its split runs in
`unlearn/`, its un-split run in `baseline/run`), build Spunge merges at several λ through
`spunge_merge.merge.merge_runs` and the baseline at several λ through its method's registry record
(`to_model`), and score each model with the pipeline's own knowledge and perplexity settings. A merge that
reads data statistics (`anchored_ls`) also gets an anchored baseline arm, `baseline-<merge>`: the baseline's one
run merged alone with the same settings, over the baseline's λ sweep (Spunge + anchor against baseline + anchor).
Every finished model and evaluation is kept and skipped on the next call, so a killed run loses at
most the model in progress (models and evaluations are written to a temporary path, then renamed).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        texts = out.parent.parent / "ppl-texts" / f"{out.name}.jsonl"  # outside the evaluations, never inside one (an input)
        atomic_write_text(texts, "".join(json.dumps({"text": t}) + "\n" for t in table["text"]))
        evaluate_perplexity(model, texts, out, device="cpu", progress=False, **ppl)


def anchored_merges(merges: list[str], merge_settings: dict[str, dict] | None = None) -> list[str]:
    """The merges that also get a baseline arm: those whose method reads data statistics (`anchored_ls`). The
    un-split baseline's one edit merged alone with the same settings (same retain data, ρ, ridge) is the fair
    comparison for them (arm `baseline-<merge>`); a weights-only merge of one edit is the plain baseline again."""
    from spunge_merge.merge.methods import takes_statistics

    settings = merge_settings or MERGES
    return [name for name in merges if takes_statistics(settings[name]["method"])]


def seed_arms(lambdas: list[float], baseline_lambdas: list[float], merges: list[str],
              merge_settings: dict[str, dict] | None = None) -> list[tuple[str, float]]:
    """Every (arm, λ) of one seed's grid: the baseline and each anchored baseline (`anchored_merges`) over the
    baseline's sweep, every Spunge merge over the merges' sweep."""
    anchored = anchored_merges(merges, merge_settings)
    return ([("baseline", lam) for lam in baseline_lambdas] + [(f"baseline-{name}", lam) for name in anchored for lam in baseline_lambdas]
            + [(f"spunge-{name}", lam) for name in merges for lam in lambdas])


def build_model(arm: str, lam: float, model_dir: Path, seed_dir: Path, work: Path, *, base, method,
                merge_settings: dict[str, dict], views_dir: Path) -> None:
    """One grid model: the baseline at λ (its method's `to_model`), the baseline's one run merged alone
    (`baseline-<merge>`), or the split runs merged (`spunge-<merge>`), both through `merge_runs`."""
    from spunge_merge.merge import merge_runs

    if arm == "baseline":
        method.to_model(base, seed_dir / "baseline" / "run", lam, model_dir, work / "scratch")
        return
    kind, _, merge = arm.partition("-")
    runs = [seed_dir / "baseline" / "run"] if kind == "baseline" else [seed_dir / "unlearn"]
    merge_runs(base, runs, model_dir, lam=lam, views_dir=views_dir, progress=False, force=True, **merge_settings[merge])


@contextmanager
def grid_model(plan: dict, cell, sweep, root: Path, seed: int, name: str, *, base, method) -> Iterator[Path]:
    """A frontier cell's grid model `name` of `seed` (`grid/<seed>/models/<name>`) for the hooks that score models at
    their operating points (relearn, MIA, probes): built (`build_model`) when it is not there, deleted after the
    `with` block when it was built here, so each hook keeps at most one model on disk."""
    work = root / "grid" / str(seed)
    model_dir = work / "models" / name
    built = not (model_dir / "config.json").is_file()
    if built:
        arm, lam = arm_and_lambda(name)
        build_model(arm, lam, model_dir, root / "seeds" / str(seed), work, base=base, method=method,
                    merge_settings={m: plan["merges"][m] for m in sweep.merges}, views_dir=plan["runs"] / ".views" / cell.model)
    try:
        yield model_dir
    finally:
        if built:
            shutil.rmtree(model_dir, ignore_errors=True)


def build_seed_points(seed_dir: Path, work: Path, *, base, method, eval_section: dict, files_dir: Path,
                      lambdas: list[float], baseline_lambdas: list[float], merges: list[str],
                      merge_settings: dict[str, dict] | None = None, base_eval: Path | None = None,
                      views_dir: Path | None = None, keep_models: bool = True,
                      on_model: Callable[[str, float], None] | None = None,
                      arms: list[tuple[str, float]] | None = None) -> dict[str, Path]:
    """{label: eval dir} for one seed's run: base, baseline (and each anchored baseline) at every λ, every merge at every λ.

    `base` is the run's `ResolvedModel`, `method` its registry record. Models go to `work/models/<label>`,
    evaluations to `work/eval/<label>`; both are reused when present. `base_eval` is where the base
    model's evaluation is (default: the seed's own `eval/base`); `views_dir` where mergekit's per-run
    views go (default `work/.views`; share one across runs of the same base to keep one base view).
    `keep_models=False` deletes each model once evaluated (a full model per λ adds up to gigabytes;
    the evaluation is what a rerun skips on). `on_model(label, seconds)` is called after each model that
    had to be built or evaluated (for timing records). `arms` builds exactly those (arm, λ) instead of
    `seed_arms(...)` (the driver's adaptive λ).
    """
    from spunge_merge.evaluate.knowledge import KNOWLEDGE_FILE

    settings = merge_settings or MERGES
    points: dict[str, Path] = {"base": base_eval or seed_dir / "eval" / "base"}
    for arm, lam in arms if arms is not None else seed_arms(lambdas, baseline_lambdas, merges, settings):
        name = label(arm, lam)
        model_dir, eval_dir = work / "models" / name, work / "eval" / name
        points[name] = eval_dir
        if (eval_dir / KNOWLEDGE_FILE).is_file() and (eval_dir / "perplexity.json").is_file():
            continue
        started = time.perf_counter()
        if not (model_dir / "config.json").is_file():
            build_model(arm, lam, model_dir, seed_dir, work, base=base, method=method, merge_settings=settings,
                        views_dir=views_dir or work / ".views")
        evaluate_model(model_dir, eval_dir, eval_section, files_dir)
        if not keep_models:
            shutil.rmtree(model_dir)
        if on_model is not None:
            on_model(name, time.perf_counter() - started)
    return points
