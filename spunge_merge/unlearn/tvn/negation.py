"""Negation: a pure rewrite of the adapter weights (lora_B × −λ), for one run or every run of an output."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spunge_merge.config import check_lambda
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, atomic_write_bytes, copy_file, guard_output, write_json
from spunge_merge.models import check_safetensors
from spunge_merge.provenance import PROVENANCE_FILE, read_provenance
from spunge_merge.runs import RUNS_MANIFEST, list_runs
from spunge_merge.tensorfiles import safetensors_bytes
from spunge_merge.unlearn.tvn.settings import _LORA_B, ADAPTER_WEIGHTS, KIND, UNNEGATED


def negated_tensors(unnegated: Mapping[str, Any], lam: float) -> dict[str, Any]:
    """The adapter's tensors with every lora_B (and lora_embedding_B) multiplied by −λ."""
    import torch

    lam = check_lambda(lam)
    out, scaled = {}, 0
    for key, tensor in unnegated.items():
        if _LORA_B.search(key):
            out[key] = (tensor.to(torch.float32) * -float(lam)).to(tensor.dtype).contiguous()
            scaled += 1
        else:
            out[key] = tensor
    if not scaled:
        raise SpungeError("the adapter holds no lora_B tensors: not a LoRA adapter")
    return out


def _write_negated(unnegated_dir: Path, target_dir: Path, lam: float) -> None:
    from safetensors.torch import load_file

    source = unnegated_dir / ADAPTER_WEIGHTS
    if not source.is_file():
        raise SpungeError(f"{source}: missing; the un-negated adapter is needed to negate again")
    check_safetensors(source)
    # Bytes through atomic_write_bytes: safetensors' save_file creates files with mode 0600.
    atomic_write_bytes(target_dir / ADAPTER_WEIGHTS, safetensors_bytes(negated_tensors(load_file(source), lam), {"format": "pt"},
                                                                       cause=f"negation with lambda {lam}"))


def _copy_tree_except(src: Path, dst: Path, skip: set[Path]) -> None:
    """Copy (a reflink where possible) every file of `src` into `dst`, except the relative paths in `skip`:
    never a hard link, so rewriting the new run cannot change the one it came from."""
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if relative in skip:
            continue
        if path.is_dir():
            (dst / relative).mkdir(parents=True, exist_ok=True)
        else:
            (dst / relative).parent.mkdir(parents=True, exist_ok=True)
            copy_file(path, dst / relative)


def negate_run(run_dir: str | Path, lam: float, out: str | Path | None = None, *, force: bool = False) -> Path:
    """Re-negate one TVN run with a new λ from its `unnegated/` adapter (in place, or into `out`).

    The new directory is assembled beside the target and renamed over it, so a reader never
    sees an adapter whose weights and `spunge.json` disagree on λ.
    """
    run_dir = Path(run_dir)
    record = read_provenance(run_dir)
    if record is None or record.get("kind") != KIND:
        raise SpungeError(f"{run_dir} is not a TVN run (no spunge.json of kind '{KIND}')")
    lam = check_lambda(lam)
    if not (run_dir / UNNEGATED / ADAPTER_WEIGHTS).is_file():
        raise SpungeError(f"{run_dir / UNNEGATED / ADAPTER_WEIGHTS}: missing; cannot negate again without it")
    target = Path(out) if out is not None else run_dir
    in_place = target.resolve() == run_dir.resolve()
    with atomic_output_dir(target, force=in_place or force) as tmp:
        _copy_tree_except(run_dir, tmp, {Path(ADAPTER_WEIGHTS), Path(PROVENANCE_FILE)})
        _write_negated(run_dir / UNNEGATED, tmp, lam)
        record["result"] = {**record.get("result", {}), "lambda": float(lam)}
        record["config"] = {**record.get("config", {}), "lam": float(lam)}
        if not in_place:
            record["negated_from"] = str(run_dir)
        write_json(tmp / PROVENANCE_FILE, record)
    return target


def negate_output(path: str | Path, lam: float, out: str | Path | None = None, *, force: bool = False) -> list[Path]:
    """`negate_run` on a single run, or on every run of an unlearn output (keeping its manifest)."""
    path = Path(path)
    if not path.is_dir():
        raise SpungeError(f"{path}: no such run directory")
    lam = check_lambda(lam)
    if out is not None:
        guard_output(out, inputs=[path], force=force)
    runs = list_runs(path)
    if runs == [path]:
        return [negate_run(path, lam, out, force=force)]
    for run in runs:  # check them all before rewriting any
        record = read_provenance(run)
        if record is None or record.get("kind") != KIND:
            raise SpungeError(f"{run} is not a TVN run (no spunge.json of kind '{KIND}')")
    if out is None:
        return [negate_run(run, lam) for run in runs]
    out = Path(out)
    with atomic_output_dir(out, force=force) as tmp:
        for run in runs:
            negate_run(run, lam, tmp / run.name)
        copy_file(path / RUNS_MANIFEST, tmp / RUNS_MANIFEST)
    return [out / run.name for run in runs]
