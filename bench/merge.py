"""Benchmark `spunge merge` against `mergekit-yaml` and the I/O floor, on smollm2-135m with five runs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/merge.py [--workdir DIR] [--runs 5] [--repeats 5] [--skip-mergekit]

The runs are synthetic, in the exact formats of the unlearn stages: RMU deltas (new values of
model.layers.{5,6,7}.mlp.down_proj.weight, base + Gaussian noise) and negated TVN adapters (peft LoRA,
r=16 on q_proj and v_proj of all 30 layers, random A and B, B scaled by -1). Merge timings depend on
the values only where a task vector's k-th largest magnitude is tied (mergekit's own sort then
decides: see spunge_merge/merge/pruning.py). Every measured command runs in its own process; wall
time and peak RSS come from os.wait4 on that process. For each kind of run it prints:

- spunge, cold: `spunge merge` with no views yet (builds the base pool and the five views, then merges);
- spunge: the same merge again with views built (a re-merge with other settings), --repeats times, end
  to end, and the time of `merge_runs` itself inside that process (after Python and library imports),
  best and median;
- mergekit-yaml on the very recipe spunge wrote (`OUT/mergekit_config.yml`), and whether every output
  tensor is bit-identical to spunge's;
- the I/O floor: reading the bytes a merge must read (the base, plus each run's changed tensors) and
  writing the output's bytes, timed inside a bare Python process (page cache warm, as for the others),
  --repeats times, best and median;
- peak RSS of spunge with 2 runs against 5;

and, last, one TIES `merge_group` call on an RMU tensor as mergekit ships it and with spunge's pruning.
To compare two versions of spunge on a noisy machine, use bench/merge_ab.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(sys.executable).parent
VALUES = ("asian", "black", "jewish", "latino", "women", "muslim", "lgbtq")
RMU_LAYERS = (5, 6, 7)


# --------------------------------------------------------------------------- measuring a process


# A minimal process (python -S, ~10 MB) forks and execs the command and reads its rusage: peak RSS taken
# straight from a fork of the (large) bench process would start at the bench's own RSS.
_LAUNCHER = r"""
import json, os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"wall": time.perf_counter() - started, "rss_kb": usage.ru_maxrss, "status": os.waitstatus_to_exitcode(status)}, out)
"""


def measure(cmd: list[str], *, env: dict | None = None) -> dict:
    """Run `cmd`; wall seconds, peak RSS (MB) of that process, and its stdout."""
    os.sync()  # dirty pages of the previous step must not slow this one down
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "rusage.json"
        out, err = Path(scratch) / "out", Path(scratch) / "err"
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            subprocess.run([PYTHON, "-S", "-c", _LAUNCHER, str(report), *cmd], stdout=stdout, stderr=stderr,
                           env={**os.environ, **(env or {})}, cwd=ROOT, check=False)
        usage = json.loads(report.read_text()) if report.is_file() else {"status": -1}
        if usage["status"] != 0:
            raise SystemExit(f"command failed ({usage['status']}): {' '.join(cmd)}\n{err.read_text()[-3000:]}")
        return {"wall": usage["wall"], "rss_mb": usage["rss_kb"] / 1024, "stdout": out.read_text()}


# Each tool's own command-line entry point, run in a child process that reports how long its imports took
# and how long the command itself took (the process's wall time and peak RSS are measured from outside).
_CLI_CHILD = r"""
import json, sys, time
started = time.perf_counter()
if sys.argv[1] == "spunge":
    from spunge_merge.cli import app as command
    import mergekit.merge, mergekit.plan  # noqa: F401  (imported lazily by the command: count them as imports)
else:
    from mergekit.scripts.run_yaml import main as command   # the `mergekit-yaml` console script
imported = time.perf_counter()
command(sys.argv[2:], standalone_mode=False)
print(json.dumps({"imports": imported - started, "command": time.perf_counter() - imported}))
"""

_FLOOR_CHILD = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
buffer = bytearray(16 << 20)
view = memoryview(buffer)
started = time.perf_counter()
with open(args["out"], "wb") as out:
    for path in args["base"]:                               # every output tensor starts from a base tensor
        with open(path, "rb", buffering=0) as src:
            while n := src.readinto(buffer):
                out.write(view[:n])
    for path in args["changed"]:                            # plus what each run changed
        with open(path, "rb", buffering=0) as src:
            while src.readinto(buffer):
                pass
print(json.dumps({"seconds": time.perf_counter() - started}))
os.remove(args["out"])
"""


def run_cli(tool: str, args: list[str]) -> dict:
    """`spunge ...` or `mergekit-yaml ...` through its entry point in a child process."""
    result = measure([PYTHON, "-c", _CLI_CHILD, tool, *map(str, args)])
    return {**result, **json.loads(result["stdout"].strip().splitlines()[-1])}


def spunge_merge(base: str, runs: list[Path], out: Path, views: Path) -> dict:
    result = run_cli("spunge", ["merge", "--base", base, *runs, "--out", out, "--views-dir", views, "--no-progress"])
    return {**result, "record": json.loads((out / "spunge.json").read_text())["result"]}


def io_floor(base_files: list[Path], changed: list[Path], scratch: Path, repeats: int) -> dict:
    """The least any merge must do: read the base's shards and each run's changed tensors, write the base's bytes."""
    payload = json.dumps({"base": [str(p) for p in base_files], "changed": [str(p) for p in changed],
                          "out": str(scratch / "floor.bin")})
    times = sorted(json.loads(measure([PYTHON, "-c", _FLOOR_CHILD, payload])["stdout"])["seconds"] for _ in range(repeats))
    base_bytes = sum(p.stat().st_size for p in base_files)
    return {"seconds": times[0], "median": statistics.median(times), "times": times,
            "read_mb": (base_bytes + sum(p.stat().st_size for p in changed)) / 1e6, "write_mb": base_bytes / 1e6}


# --------------------------------------------------------------------------- synthetic runs


def _tensor(base_dir: Path, name: str):
    from safetensors import safe_open

    from spunge_merge.tensorfiles import weight_files

    with safe_open(str(weight_files(base_dir)[name]), framework="pt") as handle:
        return handle.get_tensor(name)


def make_runs(base, workdir: Path, count: int) -> dict[str, list[Path]]:
    """RMU deltas and negated TVN adapters in the formats the unlearn stages write, for a base of any shape
    (smollm2-135m here, the 7B shape in bench/gpu_7b.py); runs already written are kept."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from spunge_merge.fsutil import write_json
    from spunge_merge.provenance import write_provenance

    config = AutoConfig.from_pretrained(base.path)
    head = config.hidden_size // config.num_attention_heads
    outputs = {"q_proj": config.num_attention_heads * head, "v_proj": config.num_key_value_heads * head}
    runs: dict[str, list[Path]] = {"rmu": [], "tvn": []}
    for i, value in enumerate(VALUES[:count]):
        generator = torch.Generator().manual_seed(i)
        common = {"base_model": base.describe(), "data": {"rows": 100 + i, "value": value, "synthetic": True},
                  "attribute": {"column": "target_group", "value": value}}
        run = workdir / "runs" / "rmu" / value
        runs["rmu"].append(run)
        runs["tvn"].append(workdir / "runs" / "tvn" / value)
        if (run / "spunge.json").is_file() and (runs["tvn"][-1] / "spunge.json").is_file():
            continue
        run.mkdir(parents=True, exist_ok=True)
        delta = {}
        for layer in RMU_LAYERS:
            name = f"model.layers.{layer}.mlp.down_proj.weight"
            weight = _tensor(base.path, name)
            noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
            delta[name] = (weight.float() + 0.1 * weight.float().std() * noise).to(weight.dtype)
        save_file(delta, run / "delta.safetensors", metadata={"format": "pt"})
        write_provenance(run, kind="rmu-delta", fingerprint=f"bench-rmu-{i}", method="rmu",
                         config={"layers": list(RMU_LAYERS), "synthetic": True}, result={}, **common)
        run = runs["tvn"][-1]
        run.mkdir(parents=True, exist_ok=True)
        LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM").save_pretrained(run)
        tensors = {}
        for layer in range(config.num_hidden_layers):
            for module, out_features in outputs.items():
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
                tensors[f"{prefix}.lora_A.weight"] = 0.02 * torch.randn(16, config.hidden_size, generator=generator)
                tensors[f"{prefix}.lora_B.weight"] = -0.01 * torch.randn(out_features, 16, generator=generator)
        save_file(tensors, run / "adapter_model.safetensors", metadata={"format": "pt"})
        write_provenance(run, kind="tvn-adapter", fingerprint=f"bench-tvn-{i}", method="tvn",
                         config={"rank": 16, "lora_alpha": 16, "synthetic": True}, result={"lambda": 1.0}, **common)
    for kind, found in runs.items():
        write_json(workdir / "runs" / kind / "manifest.json", {"kind": "unlearn-runs", "method": kind, "attribute": "target_group",
                   "runs": [{"name": r.name, "value": r.name, "rows": 100, "path": r.name} for r in found]})
    return runs


def ties_step(base, runs: list[Path], repeats: int) -> dict:
    """mergekit's TIES `merge_group` on one RMU tensor (layer 5 down_proj, every run), as mergekit ships it
    and within spunge's `linear_time_pruning`, in this process: milliseconds per call (median) and
    whether the two give the same bits."""
    import time

    import torch
    from mergekit.merge_methods import get
    from mergekit.merge_methods.base import TensorGroup
    from safetensors import safe_open

    from spunge_merge.merge.pruning import linear_time_pruning

    name = f"model.layers.{RMU_LAYERS[0]}.mlp.down_proj.weight"
    with safe_open(str(base.path / "model.safetensors"), framework="pt") as handle:
        tensors = [handle.get_tensor(name)]
    for run in runs:
        with safe_open(str(run / "delta.safetensors"), framework="pt") as handle:
            tensors.append(handle.get_tensor(name))
    group = TensorGroup.from_tensors(tensors, base_index=0)
    ids = range(1, len(tensors))
    params = {"weight": dict.fromkeys(ids, 1.0), "density": dict.fromkeys(ids, 0.2), "normalize": True, "lambda": 1.0,
              "int8_mask": False, "rescale": False}
    merge = get("ties")
    timings = {}
    outputs = {}
    for label, context in (("mergekit", contextlib.nullcontext), ("spunge", linear_time_pruning)):
        with context():
            outputs[label] = merge.merge_group(group, **params)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                merge.merge_group(group, **params)
                times.append(time.perf_counter() - started)
        timings[label] = statistics.median(times) * 1000
    same = torch.equal(outputs["mergekit"].view(torch.int32), outputs["spunge"].view(torch.int32))
    return {"tensor": name, "numel": tensors[0].numel(), "runs": len(runs), "ms": timings, "identical": same,
            "torch_threads": torch.get_num_threads()}


def identical(a: Path, b: Path) -> tuple[int, int]:
    """(bit-identical tensors, all tensors) between two model directories."""
    from safetensors import safe_open

    def tensors(directory: Path) -> dict:
        found = {}
        for file in directory.glob("*.safetensors"):
            handle = safe_open(str(file), framework="pt")
            found.update({name: (handle, name) for name in handle.keys()})
        return found

    ours, theirs = tensors(a), tensors(b)
    same = 0
    for name, (handle, key) in ours.items():
        if name in theirs:
            x, y = handle.get_tensor(key), theirs[name][0].get_tensor(name)
            same += int(x.dtype == y.dtype and x.shape == y.shape and x.contiguous().view(-1).view(dtype=_u8()).equal(
                y.contiguous().view(-1).view(dtype=_u8())))
    return same, max(len(ours), len(theirs))


def _u8():
    import torch

    return torch.uint8


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "spunge-bench-merge")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-mergekit", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="merges with views built, and I/O floor measurements, per kind")
    args = parser.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads is None:
        os.environ["OMP_NUM_THREADS"] = threads = "1"

    from spunge_merge.models import resolve_model
    from spunge_merge.tensorfiles import model_slots

    base = resolve_model("smollm2-135m")
    workdir = args.workdir
    for stale in ("out", "views-cold-rmu", "views-cold-tvn"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    (workdir / "out").mkdir(parents=True, exist_ok=True)
    runs = make_runs(base, workdir, args.runs)
    startup = measure([PYTHON, "-c", "import mergekit.merge, mergekit.plan, spunge_merge.cli"])
    print(f"# spunge merge benchmark: smollm2-135m ({sum(s.nbytes for s in model_slots(base.path).values()) / 1e6:.0f} MB fp32), "
          f"{args.runs} synthetic runs per kind, OMP_NUM_THREADS={threads}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"# python + imports alone (torch, transformers, peft, mergekit, spunge): {startup['wall']:.2f} s, "
          f"peak RSS {startup['rss_mb']:.0f} MB (part of every end-to-end figure below)\n")
    rows = []
    for kind in ("rmu", "tvn"):
        views = workdir / f"views-cold-{kind}"
        cold = spunge_merge(str(base.path), runs[kind], workdir / "out" / f"{kind}-cold", views)
        # views built: --repeats times, each merge and the floor measured as often, best and median reported
        # (the machine is shared: the minimum is what it can do, the median what it usually does)
        tries = []
        for attempt in range(args.repeats):
            target = workdir / "out" / f"{kind}-spunge{'-again' if attempt else ''}"
            shutil.rmtree(target, ignore_errors=True)
            tries.append(spunge_merge(str(base.path), runs[kind], target, views))
        warm = min(tries, key=lambda r: r["command"])
        warm = {**warm, "rss_mb": max(t["rss_mb"] for t in tries),
                "tries": [{"command": t["command"], "wall": t["wall"], "rss_mb": t["rss_mb"], **t["record"]} for t in tries]}
        two = spunge_merge(str(base.path), runs[kind][:2], workdir / "out" / f"{kind}-two", views)
        out = workdir / "out" / f"{kind}-spunge"
        view_dirs = [Path(m["model"]) for m in json.loads((out / "spunge.json").read_text())["runs"]]
        changed = [v / "changed.safetensors" for v in view_dirs]
        floor = io_floor([base.path / "model.safetensors"], changed, workdir / "out", args.repeats)
        own_mb = sum(p.stat().st_size for v in view_dirs for p in v.iterdir() if p.is_file() and not p.is_symlink()) / 1e6 / len(view_dirs)
        row = {"kind": kind, "runs": len(runs[kind]), "cold": cold, "warm": warm, "two": two, "floor": floor,
               "record": warm["record"], "view_mb": own_mb}
        if not args.skip_mergekit:
            mk = run_cli("mergekit", [out / "mergekit_config.yml", workdir / "out" / f"{kind}-mergekit"])
            row["mergekit"] = mk
            row["identical"] = identical(out, workdir / "out" / f"{kind}-mergekit")
        rows.append(row)
        _print(row)
    step = ties_step(base, runs["rmu"], repeats=max(5, 4 * args.repeats))
    print(f"## mergekit's TIES on one tensor ({step['tensor']}, {step['numel']:,} values, {step['runs']} runs, "
          f"{step['torch_threads']} torch thread): as shipped {step['ms']['mergekit']:.1f} ms, within spunge's "
          f"linear_time_pruning {step['ms']['spunge']:.1f} ms ({step['ms']['mergekit'] / step['ms']['spunge']:.2f}x), "
          f"bit-identical: {step['identical']}")
    rows.append({"kind": "ties-step", **step})
    (workdir / "results.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"\nraw figures: {workdir / 'results.json'}")


def _print(row: dict) -> None:
    kind, cold, warm, floor, two = row["kind"].upper(), row["cold"], row["warm"], row["floor"], row["two"]
    tries, n = warm["tries"], len(warm["tries"])

    def best_median(key: str) -> str:
        values = [t[key] for t in tries]
        return f"{min(values):.2f} | {statistics.median(values):.2f}"

    print(f"## {kind}: {row['record']['computed']} tensors merged by mergekit, {row['record']['copied_from_base']} copied from the base; "
          f"view on disk per run: {row['view_mb']:.1f} MB")
    print(f"| measure | wall (s), best of {n} | median of {n} | peak RSS (MB) |")
    print("|---|---:|---:|---:|")
    print(f"| spunge merge, cold (builds base pool + views), end to end | {cold['wall']:.2f} | | {cold['rss_mb']:.0f} |")
    print(f"| spunge merge, views built, end to end | {best_median('wall')} | {warm['rss_mb']:.0f} |")
    print(f"| spunge merge, views built: the command after imports | {best_median('command')} | |")
    print(f"| ... of which planning (mergekit's planner, copy checks) | {best_median('seconds_planning')} | |")
    print(f"| ... of which tensors (copy + mergekit TIES + write) | {best_median('seconds_tensors')} | |")
    print(f"| ...... copying the unchanged tensors (main thread) | {best_median('seconds_copying')} | |")
    print(f"| ...... mergekit computing the changed ones (worker threads, meanwhile) | {best_median('seconds_computing')} | |")
    if "mergekit" in row:
        mk = row["mergekit"]
        print(f"| mergekit-yaml on spunge's recipe, end to end | {mk['wall']:.2f} | | {mk['rss_mb']:.0f} |")
        print(f"| mergekit-yaml, the command after imports | {mk['command']:.2f} | | |")
    io = f"read {floor['read_mb']:.0f} MB + write {floor['write_mb']:.0f} MB"
    print(f"| I/O floor: {io} | {floor['seconds']:.2f} | {floor['median']:.2f} | |")
    print(f"| spunge merge, 2 runs instead of {row['runs']}, views built, end to end | {two['wall']:.2f} | | {two['rss_mb']:.0f} |")
    print()

    def ratio(key: str) -> str:
        values = [t[key] for t in tries]
        return f"{min(values) / floor['seconds']:.2f}x best, {statistics.median(values) / floor['median']:.2f}x median"

    print(f"- against the I/O floor (best against best, median against median): copying the unchanged tensors "
          f"{ratio('seconds_copying')}; tensor phase {ratio('seconds_tensors')}; command after imports {ratio('command')}")
    print(f"- tensor phase / I/O floor, each of the {n} merges against the floor's median: "
          + ", ".join(f"{t['seconds_tensors'] / floor['median']:.2f}x" for t in tries))
    load = os.getloadavg()
    print(f"- load average (1, 5, 15 min) after this kind: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}")
    if "mergekit" in row:
        mk = row["mergekit"]
        same, total = row["identical"]
        print(f"- spunge is faster than mergekit-yaml: {mk['command'] / warm['command']:.1f}x after imports, "
              f"{mk['wall'] / warm['wall']:.1f}x end to end ({mk['wall'] / cold['wall']:.1f}x when spunge also builds its views); "
              f"peak RSS spunge / mergekit: {warm['rss_mb'] / mk['rss_mb']:.2f}")
        print(f"- output tensors bit-identical to mergekit-yaml's: {same}/{total}")
    print(f"- peak RSS 2 runs -> {row['runs']} runs: {two['rss_mb']:.0f} -> {warm['rss_mb']:.0f} MB (the most of the {n} merges; "
          f"their median {statistics.median(t['rss_mb'] for t in tries):.0f} MB)\n")


if __name__ == "__main__":
    main()
