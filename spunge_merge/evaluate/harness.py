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

from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.results import existing_result, record_evaluation, staged_files
from spunge_merge.fsutil import atomic_write_text, sha256_file, write_json
from spunge_merge.models import ResolvedModel, load_causal_lm, load_tokenizer, resolve_model
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
    return {str(p.relative_to(include_path)): sha256_file(p) for p in sorted(include_path.rglob("*")) if p.is_file()}


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
    from spunge_merge.runtime import pick_device, pick_dtype

    names = parse_tasks(tasks)
    include = Path(include_path).expanduser().resolve() if include_path is not None else None
    if include is not None and not include.is_dir():
        raise SpungeError(f"--include-path {include}: no such directory of task YAML files")
    if limit is not None and limit <= 0:
        raise SpungeError(f"--limit must be positive (got {limit})")
    out = Path(out)
    resolved = model if isinstance(model, ResolvedModel) else resolve_model(model)
    lm_eval, HFLM, _ = _import_lm_eval()
    version = importlib.metadata.version("lm_eval")
    config = {"tasks": names, "include_path": str(include) if include else None, "limit": limit,
              "num_fewshot": num_fewshot, "batch_size": batch_size, "device": device, "dtype": dtype, "seed": seed}
    fingerprint = make_fingerprint(kind="harness", model=resolved.fingerprint, tasks=names, task_files=_task_files(include),
                                   limit=limit, num_fewshot=num_fewshot, dtype=dtype, seed=seed, lm_eval=version)
    if (stored := existing_result(out, HARNESS_FILE, fingerprint, force=force)) is not None:
        return stored

    started = time.perf_counter()
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

    torch_device = pick_device(device)
    lm = load_causal_lm(resolved, dtype=pick_dtype(dtype, torch_device), device=torch_device)
    tokenizer = load_tokenizer(resolved)
    wrapped = HFLM(pretrained=lm, tokenizer=tokenizer, batch_size=batch_size, device=str(torch_device))
    raw = lm_eval.simple_evaluate(model=wrapped, tasks=loaded_tasks, task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot, bootstrap_iters=0, log_samples=False, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
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
    with staged_files(out, "harness") as stage:
        atomic_write_text(stage / HARNESS_SUMMARY, render_markdown(result))
        write_json(stage / HARNESS_FILE, result)
    record_evaluation(out, name="harness", result=result, files=[HARNESS_FILE, HARNESS_SUMMARY])
    return result
