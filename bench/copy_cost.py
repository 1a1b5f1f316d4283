"""What it costs that outputs no longer hard-link the base model: `spunge materialize` of smollm2-135m
with hard links (the old behaviour), reflinks (where the filesystem has them) and plain copies.

    OMP_NUM_THREADS=1 .venv/bin/python bench/copy_cost.py [--repeats 5] [--workdir DIR]

An RMU run is fabricated (three mlp.down_proj tensors changed, as RMU does) and materialized
`--repeats` times per strategy into a fresh folder; printed: the median wall time, and the new disk
blocks the output took. smollm2-135m has a single shard, which RMU changes, so materialize rewrites it
whatever the strategy: only config, tokenizer and generation files differ. A model with several
shards keeps most of them unchanged, so the second table times one unchanged shard (the 540 MB
model.safetensors) linked, reflinked and copied: the cost per unchanged GB.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spunge_merge import fsutil  # noqa: E402
from spunge_merge.models import resolve_model  # noqa: E402
from spunge_merge.unlearn import rmu  # noqa: E402


def fabricate_run(base, run: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    from spunge_merge.provenance import write_provenance

    weights = load_file(base.path / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    delta = {name: weights[name] + 0.01 * torch.randn(weights[name].shape, generator=generator)
             for name in (f"model.layers.{i}.mlp.down_proj.weight" for i in (5, 6, 7))}
    run.mkdir(parents=True)
    save_file(delta, run / "delta.safetensors", metadata={"format": "pt"})
    write_provenance(run, kind="rmu-delta", fingerprint="bench", method="rmu", base_model=base.describe(),
                     config={}, data={}, attribute=None, result={})
    return run


def hard_link(src, dst, **_):
    os.link(src, dst)
    return "link"


def plain_copy(src, dst, **_):
    return fsutil.copy_file(src, dst, allow_reflink=False)


STRATEGIES = {"hard link (before)": hard_link, "reflink, else copy (now)": fsutil.copy_file, "copy": plain_copy}


def new_blocks(out: Path) -> int:
    """Bytes of disk the output took that no other file holds (hard-linked files count nothing)."""
    return sum(p.stat().st_blocks * 512 for p in out.rglob("*") if p.is_file() and p.stat().st_nlink == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="spunge-copy-cost-", dir=str(ROOT.parent)))
    base = resolve_model("smollm2-135m")
    run = fabricate_run(base, work / "run")
    probe = work / "probe"
    reflinks = fsutil.reflink(base.path / "config.json", probe)
    probe.unlink(missing_ok=True)
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True).stdout.strip()
    fs = "ext2/ext3/ext4" if fs == "ext2/ext3" else fs  # one magic number for the three
    print(f"smollm2-135m materialize, {args.repeats} repeats, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"filesystem {fs or '?'} (reflink {'supported' if reflinks else 'not supported: falls back to a copy'}), "
          f"python {platform.python_version()}")
    print(f"{'strategy':28} {'median s':>9} {'min s':>7} {'new disk MB':>12}")
    rmu.materialize(base, run, work / "warm", force=True)  # warm the page cache and the digest memo
    seconds: dict[str, list[float]] = {label: [] for label in STRATEGIES}
    blocks: dict[str, int] = {}
    for attempt in range(args.repeats):  # the strategies in turns, so drift on a shared machine hits them alike
        for label, strategy in STRATEGIES.items():
            out = work / f"out-{attempt}-{label.split()[0]}"
            began = time.perf_counter()
            with mock.patch.object(rmu, "copy_file", strategy):
                rmu.materialize(base, run, out, force=True)
            seconds[label].append(time.perf_counter() - began)
            blocks[label] = new_blocks(out)
            shutil.rmtree(out)
    for label in STRATEGIES:
        print(f"{label:28} {statistics.median(seconds[label]):9.3f} {min(seconds[label]):7.3f} {blocks[label] / 1e6:12.1f}")
    shard = base.path / "model.safetensors"
    size = shard.stat().st_size
    print(f"\none unchanged shard ({size / 1e6:.0f} MB), {args.repeats} repeats")
    print(f"{'strategy':28} {'median s':>9} {'s per GB':>9}")
    shard_seconds: dict[str, list[float]] = {label: [] for label in STRATEGIES}
    target = work / "shard-copy"
    for _ in range(args.repeats):
        for label, strategy in STRATEGIES.items():
            target.unlink(missing_ok=True)
            began = time.perf_counter()
            strategy(shard, target)
            shard_seconds[label].append(time.perf_counter() - began)
    target.unlink(missing_ok=True)
    for label, values in shard_seconds.items():
        print(f"{label:28} {statistics.median(values):9.3f} {statistics.median(values) / (size / 1e9):9.3f}")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
