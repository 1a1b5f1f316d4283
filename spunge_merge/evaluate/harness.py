"""Utility and hazardous knowledge through the LM Evaluation Harness (`lm_eval`, the `eval` extra).

The model is loaded once with transformers and handed to lm_eval's `HFLM`, so any model
spunge can resolve (alias, merged directory, Hub id) is evaluated the same way. Tasks are lm_eval
names (`arc_easy`, `mmlu`, `wmdp_bio`, ...; list them with `lm_eval ls tasks`) or names defined
in a user's task directory (`include_path`): a local YAML with `dataset_path: json` and
`data_files` runs fully offline. Each task is built before any model work, so a task whose
data cannot be loaded (offline, gated) fails at once with a message naming it.

Output (into `out/`): `harness.json` (kind "harness": per-task metrics, the primary accuracy of
each task, `utility` = their mean, lm_eval version, settings) and `harness.md`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from spunge_merge.config import FrozenConfig, build_config
from spunge_merge.errors import SpungeError
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
from spunge_merge.fsutil import atomic_write_text, sha256_file
from spunge_merge.models import ResolvedModel, load_causal_lm, load_tokenizer
from spunge_merge.provenance import fingerprint as make_fingerprint

HARNESS_FILE = "harness.json"
HARNESS_SUMMARY = "harness.md"
PRIMARY_METRICS = ("acc", "acc_norm", "exact_match", "f1", "mcc")


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise SpungeError("`spunge eval harness` needs the LM Evaluation Harness: pip install 'spunge-merge[eval]' "
                          f"(or pip install lm_eval) ({exc})") from exc
    return lm_eval, HFLM, TaskManager


_MANAGERS: dict[tuple, object] = {}


def task_manager(include: Path | None):
    """lm_eval's TaskManager (indexing its ~15k task YAMLs takes ~15 s), kept per task directory state."""
    _, _, TaskManager = _import_lm_eval()
    key = (str(include) if include else None, tuple(sorted(_task_files(include).items())))
    if key not in _MANAGERS:
        _MANAGERS[key] = TaskManager(include_path=str(include) if include else None)
    return _MANAGERS[key]


def parse_tasks(tasks: str | list[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise SpungeError("--tasks is empty: give lm_eval task names, e.g. --tasks arc_easy,wmdp_bio")
    return list(dict.fromkeys(names))


def _task_files(include_path: Path | None) -> dict[str, str]:
    """sha256 of every file in the user's task directory (its data and YAML decide the result)."""
    if include_path is None:
        return {}
    return {str(p.relative_to(include_path)): sha256_file(p) for p in sorted(include_path.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}  # Python's bytecode cache of a task's utils.py is not an input


def _metrics(entry: dict[str, Any]) -> dict[str, float]:
    """`{"acc": 0.5, "acc_norm": ...}` from lm_eval's `"acc,none"` keys (stderr and aliases dropped)."""
    metrics = {}
    for key, value in entry.items():
        name, _, filter_name = key.partition(",")
        if isinstance(value, int | float) and not isinstance(value, bool) and "_stderr" not in name and name != "sample_len":
            metrics[name if filter_name in ("", "none") else f"{name},{filter_name}"] = float(value)
    return metrics


def _primary(metrics: dict[str, float]) -> tuple[str, float] | None:
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name, metrics[name]
    return next(iter(metrics.items()), None)


def render_markdown(result: dict) -> str:
    lines = [f"# LM Evaluation Harness: {result['model']['ref']}", "",
             f"lm_eval {result['lm_eval_version']}; limit {result['config']['limit']}; "
             f"num_fewshot {result['config']['num_fewshot']}", "",
             "| task | metric | value | samples |", "|---|---|---|---|"]
    for task, entry in result["tasks"].items():
        lines.append(f"| {task} | {entry['primary_metric']} | {entry['primary']:.4f} | {entry.get('samples', '-')} |")
    utility = result.get("utility")
    lines += ["", f"**Utility (mean of the primary metrics): {utility:.4f}**" if utility is not None else "", ""]
    return "\n".join(lines)


class HarnessConfig(FrozenConfig):
    """Settings of a harness evaluation (defaults are the CLI's)."""

    tasks: str | list[str] = Field(..., description="lm_eval tasks/groups (comma-separated on the command line), e.g. "
                                   "arc_easy,arc_challenge,mmlu or wmdp_bio,wmdp_cyber (`lm_eval ls tasks` lists them).",
                                   json_schema_extra={"cli_flags": ["--tasks", "-t"]})
    include_path: PathText | None = Field(None, description="Directory of your own task YAML files; with `dataset_path: json` "
                                          "and `data_files` they run offline.")
    limit: int | float | None = Field(None, gt=0, description="Examples per task (a fraction if < 1); for quick checks only.")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples (default: each task's own).")
    batch_size: int = Field(8, ge=1, description="Batch size of lm_eval's HFLM.", json_schema_extra={"cli_flags": ["--batch-size", "-b"]})
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N.")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")
    seed: int = Field(0, description="Seed for lm_eval's samplers.")


def evaluate_harness(
    model: str | ResolvedModel,
    tasks: str | list[str],
    out: str | Path,
    *,
    include_path: str | Path | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Run lm_eval tasks on `model` (see module docstring); returns what `harness.json` holds."""
    if limit is not None and limit <= 0:
        raise SpungeError(f"--limit must be positive (got {limit})")
    cfg = build_config(HarnessConfig, overrides={"tasks": tasks, "include_path": include_path, "limit": limit,
                                                 "num_fewshot": num_fewshot, "batch_size": batch_size, "device": device,
                                                 "dtype": dtype, "seed": seed})
    return run_evaluation(HARNESS, model, out, cfg, force=force)


def plan_harness(request: EvaluationRequest) -> Planned:
    """Check the task list and fingerprint it with the task files and lm_eval's version; run lm_eval only when asked."""
    cfg: HarnessConfig = request.config
    names = parse_tasks(cfg.tasks)
    include = Path(cfg.include_path).expanduser().resolve() if cfg.include_path is not None else None
    if include is not None and not include.is_dir():
        raise SpungeError(f"--include-path {include}: no such directory of task YAML files")
    if cfg.limit is not None and cfg.limit <= 0:
        raise SpungeError(f"--limit must be positive (got {cfg.limit})")
    resolved = request.model
    _import_lm_eval()
    version = importlib.metadata.version("lm_eval")
    config = {"tasks": names, "include_path": str(include) if include else None, "limit": cfg.limit,
              "num_fewshot": cfg.num_fewshot, "batch_size": cfg.batch_size, "device": cfg.device, "dtype": cfg.dtype,
              "seed": cfg.seed}
    fingerprint = make_fingerprint(kind="harness", model=resolved.fingerprint, tasks=names, task_files=_task_files(include),
                                   limit=cfg.limit, num_fewshot=cfg.num_fewshot, dtype=cfg.dtype, seed=cfg.seed, lm_eval=version)

    def compute() -> Computed:
        started = time.perf_counter()
        raw = _run_lm_eval(resolved, names, include, cfg)
        per_task = _per_task(raw, names)
        requested = [per_task[n]["primary"] for n in names if n in per_task]
        result = {
            "kind": "harness",
            "fingerprint": fingerprint,
            "model": resolved.describe(),
            "lm_eval_version": version,
            "config": config,
            "tasks": {n: per_task[n] for n in names if n in per_task},
            "subtasks": {n: v for n, v in per_task.items() if n not in names},
            "utility": sum(requested) / len(requested) if requested else None,
            "timing": {"seconds": round(time.perf_counter() - started, 2)},
        }
        return Computed(result, {HARNESS_SUMMARY: lambda path: atomic_write_text(path, render_markdown(result))})

    return Planned(fingerprint, compute)


def load_tasks(names: list[str], include: Path | None) -> tuple[Any, list[Any]]:
    """(lm_eval's task manager, the loaded task of each name): every task is built before any model work, so
    a task whose data cannot be loaded (offline, gated) fails at once with a message naming it."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    manager = task_manager(include)
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SpungeError(f"unknown harness task(s) {', '.join(unknown)}: not an lm_eval task, group or tag"
                          f"{' nor defined in ' + str(include) if include else ''} (list them with `lm_eval ls tasks`; "
                          "for local data pass --include-path DIR with task YAML files)")
    loaded_tasks = []
    for name in names:
        try:
            loaded = manager.load([name])
        except Exception as exc:  # datasets raises many types for offline / gated / missing data
            reason = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
            raise SpungeError(f"harness task '{name}': its data could not be loaded ({type(exc).__name__}: {reason}); "
                              "offline, only tasks with local data run: pass --include-path DIR with a task YAML using "
                              "`dataset_path: json` and `data_files`") from exc
        loaded_tasks.append(loaded.get("groups", {}).get(name) or loaded["tasks"].get(name)
                            or next(iter(loaded["tasks"].values())))
    return manager, loaded_tasks


def _run_lm_eval(resolved: ResolvedModel, names: list[str], include: Path | None, cfg: HarnessConfig) -> dict[str, Any]:
    """lm_eval's raw results of the tasks on the model, loaded once with transformers and wrapped in HFLM."""
    from spunge_merge.runtime import pick_device, pick_dtype

    lm_eval, HFLM, _ = _import_lm_eval()
    manager, loaded_tasks = load_tasks(names, include)
    torch_device = pick_device(cfg.device)
    lm = load_causal_lm(resolved, dtype=pick_dtype(cfg.dtype, torch_device), device=torch_device)
    tokenizer = load_tokenizer(resolved)
    wrapped = HFLM(pretrained=lm, tokenizer=tokenizer, batch_size=cfg.batch_size, device=str(torch_device))
    seed = cfg.seed
    return lm_eval.simple_evaluate(model=wrapped, tasks=loaded_tasks, task_manager=manager, limit=cfg.limit,
                                   num_fewshot=cfg.num_fewshot, bootstrap_iters=0, log_samples=False, random_seed=seed,
                                   numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)


def _per_task(raw: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Each task's (and subtask's) metrics and primary figure from lm_eval's raw results."""
    per_task: dict[str, Any] = {}
    sources = {**raw.get("results", {}), **raw.get("groups", {})}
    for name in sorted(sources):
        metrics = _metrics(sources[name])
        primary = _primary(metrics)
        if primary is None:
            continue
        samples = raw.get("n-samples", {}).get(name, {})
        per_task[name] = {"metrics": metrics, "primary_metric": primary[0], "primary": primary[1],
                          "samples": samples.get("effective") if isinstance(samples, dict) else None,
                          "requested": name in names}
    return per_task


HARNESS = register(Evaluation(
    name="harness",
    summary="Utility (or WMDP accuracy) with the LM Evaluation Harness (the `eval` extra).",
    config_class=HarnessConfig,
    plan=plan_harness,
    result_file=HARNESS_FILE,
    headline=lambda result: result.get("utility"),
    columns=(Column("utility", "utility (mean acc)", lambda result: result.get("utility"), rank=40, lower_is_better=False,
                    digits=4),),
    path_settings=("include_path",),
))
