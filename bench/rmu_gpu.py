"""RMU at Mistral-7B shape on one GPU: spunge vs the reference-style implementation.

Random-initialised weights (no download), bf16, 4 forget + 4 retain sequences of 512 random tokens
per step, ℓ = 7, updating mlp.down_proj of layers 5-7. The reference style is the WMDP script's:
two full models, a forward hook on layer ℓ, three full forwards (all 32 layers and the LM head)
and a backward per step. Spunge builds only embeddings + layers 0..7 and runs its own
`RMUTrainer.step`. Each runs in its own process so `torch.cuda.max_memory_allocated` is its own.

Targets: spunge ≥ 4x the reference's steps/s and ≤ 1/5 of its peak memory.
Measured on an H200 before this work: reference 0.201 s/step, 36.05 GiB; cut after ℓ 0.060 s/step, 10.21 GiB.

    python bench/rmu_gpu.py                      # ~2-4 min on one H100/H200
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


def model_config(tiny: bool):
    from transformers import MistralConfig

    if tiny:
        return MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=224, num_hidden_layers=12, num_attention_heads=8,
                             num_key_value_heads=2, max_position_embeddings=1024, sliding_window=4096, use_cache=False)
    # mistralai/Mistral-7B-v0.1 (the base of Zephyr-7B-beta, the WMDP paper's model)
    return MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, max_position_embeddings=32768, rope_theta=10000.0, sliding_window=4096,
                         rms_norm_eps=1e-5, use_cache=False)


def worker(args) -> dict:
    import torch

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    config = model_config(args.tiny)
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
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
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
    parser.add_argument("--impl", choices=["spunge", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        print(json.dumps(worker(args)))
        return
    results = {}
    for impl in ("spunge", "reference"):
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--impl", impl], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            sys.exit(f"{impl} worker failed:\n{done.stderr[-3000:]}")
        results[impl] = json.loads(done.stdout.strip().splitlines()[-1])
    ours, ref = results["spunge"], results["reference"]
    print(f"{'Mistral-7B shape' if not args.tiny else 'tiny Mistral'}, {args.dtype}, {args.batch}+{args.batch} x {args.seq} tokens, "
          f"layer {args.layer}, update {args.update_layers}, {args.steps} steps after {args.warmup} warm-up, on {ours['device_name']}")
    print(f"{'impl':<10} {'s/step':>8} {'steps/s':>8} {'peak GiB':>9} {'build s':>8}")
    for name, r in (("reference", ref), ("spunge", ours)):
        print(f"{name:<10} {r['s_per_step']:>8.3f} {r['steps_per_s']:>8.2f} {r['peak_gib']:>9.2f} {r['build_s']:>8.1f}")
    print(f"speed-up {ours['steps_per_s'] / ref['steps_per_s']:.2f}x (target >= 4), peak memory ratio "
          f"{ours['peak_gib'] / ref['peak_gib']:.3f} (target <= 0.2)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
