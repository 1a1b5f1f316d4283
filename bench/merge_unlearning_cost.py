"""Cost of the merges made for unlearning (anchored_ls, tsv_m, iso_cts) against TIES on the same runs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/merge_unlearning_cost.py [--model smollm2-135m] [--workdir DIR]

The runs are synthetic RMU deltas (new values of model.layers.{5,6,7}.mlp.down_proj.weight, base + Gaussian
noise), one per domain of the demo's facts (capitals, elements, languages), each recording its forget rows
(the domain's train facts) and the retain rows (the other domains' train facts) as `spunge unlearn rmu`
does. Every merge runs in its own process (`spunge merge`); wall time (imports included: 10-15 s of it on a
busy 2-core machine) and peak RSS come from os.wait4, the merge's own time (planning, copying, computing,
writing; not the statistics pass) from the output's spunge.json.
anchored_ls is timed cold (its statistics pass: forward passes over each run's forget rows and the retain
rows, at most 256 rows of 128 tokens each) and again with the statistics cached (what every further λ or ρ costs); the
statistics pass's own time and bytes are read from the files' spunge.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ("capitals", "elements", "languages")


def make_runs(model: str, root: Path) -> list[Path]:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from spunge_merge.models import resolve_model
    from spunge_merge.provenance import write_provenance
    from spunge_merge.tensorfiles import model_slots

    base = resolve_model(model)
    slots = model_slots(base.path)
    facts = [json.loads(line) for line in (REPO / "spunge_merge/demo/facts.jsonl").read_text().splitlines()]
    facts = [f for f in facts if f["part"] == "train"]
    retain = root / "retain.jsonl"
    retain.write_text("".join(json.dumps({"text": f["text"]}) + "\n" for f in facts if f["domain"] not in DOMAINS))
    runs = []
    for seed, domain in enumerate(DOMAINS):
        forget = root / f"{domain}.jsonl"
        forget.write_text("".join(json.dumps({"text": f["text"]}) + "\n" for f in facts if f["domain"] == domain))
        generator = torch.Generator().manual_seed(seed)
        delta = {}
        for layer in (5, 6, 7):
            name = f"model.layers.{layer}.mlp.down_proj.weight"
            with safe_open(str(slots[name].file), framework="pt") as handle:
                weight = handle.get_tensor(name).float()
            delta[name] = (weight + 0.02 * weight.std() * torch.randn(weight.shape, generator=generator)).to(weight.dtype)
        run = root / "runs" / domain
        run.mkdir(parents=True, exist_ok=True)
        save_file(delta, run / "delta.safetensors", metadata={"format": "pt"})
        write_provenance(run, kind="rmu-delta", fingerprint=f"bench-{seed}", method="rmu", base_model=base.describe(), config={},
                         data={"forget": [{"path": str(forget)}], "retain": [{"path": str(retain)}]},
                         attribute={"column": "domain", "value": domain})
        runs.append(run)
    return runs


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one command in its own process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="spunge-merge-unlearning-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPUNGE_CACHE": os.environ.get("SPUNGE_CACHE", str(Path.home() / ".cache/spunge"))}
    stats_dir = root / "stats"
    runs = make_runs(args.model, root)
    spunge = [sys.executable, "-c", "from spunge_merge.cli import app; app()", "merge", *map(str, runs), "--base", args.model,
              "--views-dir", str(root / "views"), "--no-progress", "--force"]
    timed([*spunge, "--out", str(root / "warm")], env)  # builds the views and the base pool once
    cases = [("ties", ["--method", "ties", "--density", "1"]),
             ("anchored_ls (statistics pass + merge)", ["--method", "anchored_ls", "--stats-dir", str(stats_dir)]),
             ("anchored_ls (statistics cached)", ["--method", "anchored_ls", "--stats-dir", str(stats_dir), "--lambda", "0.5"]),
             ("tsv_m", ["--method", "tsv_m"]),
             ("iso_cts", ["--method", "iso_cts"]),
             ("knots_ties (density 1)", ["--method", "knots_ties", "--density", "1"])]
    print(f"{args.model}, {len(runs)} RMU-format runs (3 down_proj matrices each), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; each merge in its own process")
    print("| merge | wall s (process) | merge s (spunge.json) | peak RSS MiB |\n|---|---|---|---|")
    for label, extra in cases:
        seconds, peak = timed([*spunge, *extra, "--out", str(root / "out")], env)
        merged = json.loads((root / "out" / "spunge.json").read_text())["result"]["seconds"]
        print(f"| {label} | {seconds:.1f} | {merged:.1f} | {peak:.0f} |", flush=True)
    records = [json.loads((d / "spunge.json").read_text()) for d in sorted(stats_dir.iterdir()) if (d / "spunge.json").is_file()]
    print(f"statistics pass: {len(records)} files, {sum(r['result']['seconds'] for r in records):.1f} s of forward passes, "
          f"{sum(r['result']['bytes'] for r in records) / 2**20:.1f} MiB ({', '.join(str(r['result']['tokens']) for r in records)} tokens)")


if __name__ == "__main__":
    main()
