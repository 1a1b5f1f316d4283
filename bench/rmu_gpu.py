"""RMU at Mistral-7B shape on one GPU: spunge vs the reference-style implementation.

Random-initialised weights (no download), bf16, 4 forget + 4 retain sequences of 512 random tokens
per step, ℓ = 7, updating mlp.down_proj of layers 5-7. The reference style is the WMDP script's:
two full models, a forward hook on layer ℓ, three full forwards (all 32 layers and the LM head)
and a backward per step. Spunge builds only embeddings + layers 0..7 and runs its own
`RMUTrainer.step`. Each runs in its own process so `torch.cuda.max_memory_allocated` is its own.

With `--model DIR --forget F --retain R` (as bench/gpu_7b.py runs it), the model's shape is read
from DIR, and a third implementation, `cli`, runs the real command `spunge unlearn rmu` on DIR and
the two text files (tokenizing, loading only layers 0..ℓ from the checkpoint's shards, writing the
delta): its s/step is the time between optimizer steps after the warm-up ones, measured by a global
optimizer hook, and its peak memory that of the whole command.

Targets: spunge ≥ 5x the reference's steps/s and ≤ 1/6 of its peak memory (earlier: ≥ 4x, ≤ 1/5).
Measured on an H200 before this work: reference 0.201 s/step, 36.05 GiB; cut after ℓ 0.060 s/step, 10.21 GiB.

    python bench/rmu_gpu.py                      # ~2-4 min on one H100/H200
    python bench/rmu_gpu.py --model DIR --forget F --retain R --impls cli,reference --json rmu.json
    OMP_NUM_THREADS=1 python bench/rmu_gpu.py --tiny --device cpu --steps 2 --warmup 1   # smoke check anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def model_config(tiny: bool, model_dir: str | None = None):
    from transformers import AutoConfig, MistralConfig

    if model_dir:
        config = AutoConfig.from_pretrained(model_dir)
        config.use_cache = False
        return config
    if tiny:
        return MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=224, num_hidden_layers=12, num_attention_heads=8,
                             num_key_value_heads=2, max_position_embeddings=1024, sliding_window=4096, use_cache=False)
    # mistralai/Mistral-7B-v0.1 (the base of Zephyr-7B-beta, the WMDP paper's model)
    return MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=32768, rope_theta=10000.0, sliding_window=4096,
                         rms_norm_eps=1e-5, use_cache=False)


def step_clock(cuda: bool) -> list[float]:
    """Times at which every torch optimizer in this process finished a step (GPU work included)."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    times: list[float] = []

    def stamp(optimizer, args, kwargs):
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    register_optimizer_step_post_hook(stamp)
    return times


def per_step(times: list[float], warmup: int) -> float:
    """Seconds per optimizer step after the first `warmup` ones."""
    if len(times) <= warmup or warmup < 1:
        raise SystemExit(f"only {len(times)} optimizer steps were taken; need more than the {warmup} warm-up ones (>= 1)")
    return (times[-1] - times[warmup - 1]) / (len(times) - warmup)


def cli_worker(args) -> dict:
    """`spunge unlearn rmu` itself, as a user runs it, timed between optimizer steps."""
    import shutil

    import torch

    from spunge_merge.cli import app

    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = Path(args.workdir) / "rmu-cli"
    shutil.rmtree(out, ignore_errors=True)
    times = step_clock(cuda)
    started = time.perf_counter()
    app(["unlearn", "rmu", "--model", args.model, "--forget", args.forget, "--retain", args.retain, "--out", str(out),
         "--layer", str(args.layer), "--update-layers", ",".join(map(str, args.update_layers)),
         "--steering-coeff", str(args.steering_coeff),
         "--alpha", str(args.alpha), "--lr", "5e-5", "--batch-size", str(args.batch), "--forget-max-length", str(args.seq),
         "--retain-max-length", str(args.seq), "--max-num-batches", str(args.warmup + args.steps), "--epochs", "1",
         "--device", args.device, "--dtype", args.dtype, "--quiet"], standalone_mode=False)
    total = time.perf_counter() - started
    seconds = per_step(times, args.warmup)
    record = json.loads((out / "spunge.json").read_text())["result"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None  # not measured on the CPU
    return {"impl": "cli", "s_per_step": seconds, "steps_per_s": 1 / seconds, "peak_gib": peak, "command_s": total,
            "build_s": times[0] - started, "steps_taken": len(times), "loop_elapsed_s": record["elapsed_s"],
            "dtype": record["dtype"], "last_losses": [record["final"]["forget_loss"], record["final"]["retain_loss"]],
            "device_name": torch.cuda.get_device_name() if cuda else "cpu"}


def worker(args) -> dict:
    import torch

    if args.impl == "cli":
        return cli_worker(args)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    config = model_config(args.tiny, args.model)
    config._attn_implementation = "sdpa"
    started = time.perf_counter()
    step = (build_spunge if args.impl == "spunge" else build_reference)(config, args, device, dtype)
    if cuda:
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - started
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=generator).to(device),
                torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=generator).to(device))
               for _ in range(args.warmup + args.steps)]
    mask = torch.ones(args.batch, args.seq, dtype=torch.long, device=device)
    for forget, retain in batches[: args.warmup]:
        step(forget, retain, mask)
    if cuda:
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    losses = [step(forget, retain, mask) for forget, retain in batches[args.warmup:]]
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None  # not measured on the CPU
    return {"impl": args.impl, "s_per_step": elapsed / args.steps, "steps_per_s": args.steps / elapsed, "peak_gib": peak,
            "build_s": build_s, "last_losses": losses[-1],
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu"}


def build_spunge(config, args, device, dtype):
    import torch
    from transformers import AutoModel

    from spunge_merge.unlearn.partial_model import truncated_config
    from spunge_merge.unlearn.rmu import Batch, RMUTrainer, SplitDecoder, control_vectors

    with torch.device(device):
        decoder = AutoModel.from_config(truncated_config(config, args.layer), dtype=dtype).eval()
    names = [f"layers.{i}.mlp.down_proj.weight" for i in args.update_layers]
    trainer = RMUTrainer(SplitDecoder(decoder, layer=args.layer, first_layer=min(args.update_layers)), names, lr=5e-5)
    control = control_vectors(config.hidden_size, [args.steering_coeff], 42)[0].to(device=device, dtype=dtype)

    def step(forget, retain, mask):
        record = trainer.step(Batch((), forget, mask), Batch((), retain, mask), control, args.alpha)
        return [record.forget_loss, record.retain_loss]

    return step


def build_reference(config, args, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        frozen = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        updated = AutoModelForCausalLM.from_config(config, dtype=dtype).train()
    updated.load_state_dict(frozen.state_dict())
    params = [updated.model.layers[i].mlp.down_proj.weight for i in args.update_layers]
    optimizer = torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    random_vector = torch.rand(1, 1, config.hidden_size, generator=torch.Generator().manual_seed(42))
    control = (random_vector / torch.norm(random_vector) * args.steering_coeff).to(device=device, dtype=dtype)

    def forward_with_cache(model, inputs, no_grad):
        cache = []
        hook = model.model.layers[args.layer].register_forward_hook(lambda m, i, o: cache.append(o[0] if isinstance(o, tuple) else o))
        with torch.set_grad_enabled(not no_grad):
            model(**inputs)
        hook.remove()
        return cache[0]

    def step(forget, retain, mask):
        forget_acts = forward_with_cache(updated, {"input_ids": forget, "attention_mask": mask}, False)
        forget_loss = torch.nn.functional.mse_loss(forget_acts, control.expand_as(forget_acts))
        retain_inputs = {"input_ids": retain, "attention_mask": mask}
        retain_loss = torch.nn.functional.mse_loss(forward_with_cache(updated, retain_inputs, False),
                                                   forward_with_cache(frozen, retain_inputs, True)) * args.alpha
        optimizer.zero_grad()
        (forget_loss + retain_loss).backward()
        optimizer.step()
        return [forget_loss.item(), retain_loss.item()]

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny Mistral (hidden 64, 12 layers) for a smoke check on any machine")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--layer", type=int, default=7)
    parser.add_argument("--update-layers", type=lambda s: [int(x) for x in s.split(",")], default=[5, 6, 7])
    parser.add_argument("--steering-coeff", type=float, default=6.5)
    parser.add_argument("--alpha", type=float, default=1200.0)
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--model", help="read the shape from this model directory (and run `spunge unlearn rmu` on it: impl cli)")
    parser.add_argument("--forget", help="forget texts (jsonl) for impl cli; each at least --seq tokens long")
    parser.add_argument("--retain", help="retain texts (jsonl) for impl cli")
    parser.add_argument("--workdir", default="/tmp/spunge-rmu-gpu", help="where impl cli writes its run")
    parser.add_argument("--impls", default="spunge,reference",
                        help="comma-separated: spunge (RMUTrainer on a truncated random model), reference, cli (needs --model)")
    parser.add_argument("--impl", choices=["spunge", "reference", "cli"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(worker(args)))
        return
    impls = [name.strip() for name in args.impls.split(",") if name.strip()]
    if "cli" in impls and not (args.model and args.forget and args.retain):
        parser.error("impl cli needs --model, --forget and --retain")
    results, failed = {}, {}
    for impl in impls:  # each in its own process; the figures so far are written after each
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--impl", impl], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            failed[impl] = done.stderr[-3000:]
            print(f"{impl} worker failed:\n{failed[impl]}", file=sys.stderr)
        else:
            results[impl] = json.loads(done.stdout.strip().splitlines()[-1])
        if args.json:
            Path(args.json).write_text(json.dumps({**results, **({"failed": failed} if failed else {})}, indent=2))
    report(results, args)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def report(results: dict, args) -> None:
    ref = results.get("reference")
    ours = results.get("cli") or results.get("spunge")
    if ref is None or ours is None:
        print(json.dumps(results, indent=2))
        return
    shape = args.model or ("tiny Mistral" if args.tiny else "Mistral-7B shape")
    print(f"{shape}, {args.dtype}, {args.batch}+{args.batch} x {args.seq} tokens, "
          f"layer {args.layer}, update {args.update_layers}, {args.steps} steps after {args.warmup} warm-up, on {ours['device_name']}")
    print(f"{'impl':<10} {'s/step':>8} {'steps/s':>8} {'peak GiB':>9} {'build s':>8}")
    for name, r in results.items():
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}"
        print(f"{name:<10} {r['s_per_step']:>8.3f} {r['steps_per_s']:>8.2f} {peak:>9} {r['build_s']:>8.1f}")
    for name, r in results.items():
        if name != "reference":
            memory = (f"{r['peak_gib'] / ref['peak_gib']:.3f}" if r["peak_gib"] and ref["peak_gib"] else "not measured (CPU)")
            print(f"{name}: speed-up {r['steps_per_s'] / ref['steps_per_s']:.2f}x (target >= 5), peak memory ratio {memory} "
                  "(target <= 1/6 = 0.167)")


if __name__ == "__main__":
    main()
