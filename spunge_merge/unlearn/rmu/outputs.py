"""What an RMU run directory holds, and turning one into a full model (`spunge materialize`)."""

from __future__ import annotations

from pathlib import Path

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import guard_output
from spunge_merge.models import ResolvedModel, resolve_model
from spunge_merge.provenance import read_provenance
from spunge_merge.unlearn.outputs import delta_to_model

DELTA_FILE = "delta.safetensors"
RUN_KIND = "rmu-delta"


def materialize(base: str | Path | ResolvedModel | None, run_dir: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """A full HF model directory: `base` with the tensors of `run_dir/delta.safetensors` replaced.

    Shards holding no updated tensor are reflinked where the filesystem can (else copied), the others
    rewritten, config and tokenizer files copied: no output file shares an inode with the base, so
    a `save_pretrained` into the output never edits the base model.
    `base` None means the base model named in the run's spunge.json.
    """
    run_dir = Path(run_dir)
    record = read_provenance(run_dir)
    if record is None or not (run_dir / DELTA_FILE).is_file():
        if (run_dir / "manifest.json").is_file():
            raise SpungeError(f"{run_dir} holds several runs; give one of them, e.g. {run_dir}/<name>")
        raise SpungeError(f"{run_dir} is not an RMU run (no spunge.json and {DELTA_FILE})")
    if record.get("kind") != RUN_KIND:
        raise SpungeError(f"{run_dir}/spunge.json has kind '{record.get('kind')}', not '{RUN_KIND}'")
    if base is None:
        described = record.get("base_model") or {}
        base = described.get("ref") or described.get("path")
        if not base:
            raise SpungeError(f"{run_dir}/spunge.json names no base model; pass --model")
    resolved = base if isinstance(base, ResolvedModel) else resolve_model(base)
    guard_output(out, inputs=[resolved.path, run_dir], force=force)
    return delta_to_model(resolved, run_dir, None, Path(out), force=force)
