"""RMU benchmarks on CPU (smollm2-135m by default).

speed    steps/s and peak RSS of spunge's RMU and of a reference-style implementation (the WMDP
         script's way: two full models, a forward hook on layer ℓ, three full forwards and a
         backward through everything below ℓ per step), same model, data, batch and lengths;
         each runs in its own process so peak RSS is its own. Prints the ratios.
quality  for RMU run directories: mean cosine similarity between the run's and the base model's
         layer-ℓ activations on held-out forget rows (each row alone, no padding), and WikiText
         perplexity of base and run on held-out text (non-overlapping windows), plus the retain
         cosine on those windows. Used for the smollm2 sweep (BENCHMARKS.md, RMU section).

    OMP_NUM_THREADS=1 .venv/bin/python bench/rmu.py speed --steps 4
    OMP_NUM_THREADS=1 .venv/bin/python bench/rmu.py quality RUN_DIR --heldout-forget F.jsonl --ppl-text T.txt
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_FORGET = SHARED / "toxigen" / "annotated" / "annotated_train.jsonl"
DEFAULT_RETAIN = SHARED / "retain" / "wikitext2_raw_test.txt"


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_texts(forget: Path, retain: Path, batch_size: int, batches: int) -> tuple[list[list[str]], list[list[str]]]:
    """Toxic ToxiGen rows (toxicity_human >= 3) and WikiText lines, in fixed batches."""
    rows = [json.loads(line) for line in forget.read_text(encoding="utf-8").splitlines() if line.strip()]
    toxic = [r["text"] for r in rows if r.get("toxicity_human", 5) >= 3]
    lines = [line for line in retain.read_text(encoding="utf-8").splitlines() if line.strip()]
    need = batch_size * batches
    return ([toxic[i:i + batch_size] for i in range(0, need, batch_size)],
            [lines[i:i + batch_size] for i in range(0, need, batch_size)])


# ------------------------------------------------------------------------------------------------
# speed


def worker(args) -> dict:
    import torch

    baseline = rss_mb()
    forget, retain = load_texts(args.forget, args.retain, args.batch_size, args.warmup + args.steps)
    started = time.perf_counter()
    step = build_spunge(args) if args.impl == "spunge" else build_reference(args)
    load_s = time.perf_counter() - started
    for i in range(args.warmup):
        step(forget[i], retain[i])
    started = time.perf_counter()
    losses = [step(forget[i], retain[i]) for i in range(args.warmup, args.warmup + args.steps)]
    elapsed = time.perf_counter() - started
    return {"impl": args.impl, "steps_per_s": args.steps / elapsed, "s_per_step": elapsed / args.steps, "load_s": load_s,
            "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline, "threads": torch.get_num_threads(), "losses": losses}


def build_spunge(args):
    """The library's own path: partial load (layers 0..ℓ), SplitDecoder, RMUTrainer.step."""
    import torch

    from spunge_merge.models import resolve_model
    from spunge_merge.unlearn.partial_model import load_partial_decoder
    from spunge_merge.unlearn.rmu import Batch, RMUTrainer, SplitDecoder, control_vectors, prepare_tokenizer

    resolved = resolve_model(args.model)
    partial = load_partial_decoder(resolved, args.layer, dtype=torch.float32, device="cpu")
    names = [f"layers.{i}.mlp.down_proj.weight" for i in args.update_layers]
    trainer = RMUTrainer(SplitDecoder(partial.model, layer=args.layer, first_layer=min(args.update_layers)), names, lr=args.lr)
    tokenizer = prepare_tokenizer(resolved)
    control = control_vectors(partial.model.config.hidden_size, [args.steering_coeff], args.seed)[0]

    def tokenize(texts, max_length):
        encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        return Batch(key=(), input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])

    def step(forget, retain):
        record = trainer.step(tokenize(forget, args.forget_max_length), tokenize(retain, args.retain_max_length), control, args.alpha)
        return [record.forget_loss, record.retain_loss]

    return step


def build_reference(args):
    """The WMDP script's way (rmu/unlearn.py + rmu/utils.py), with torch's AdamW in place of transformers.AdamW."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spunge_merge.models import resolve_model

    path = resolve_model(args.model).path
    torch.manual_seed(args.seed)
    frozen = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    updated = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token_id = tokenizer.eos_token_id
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "right"
    params = [updated.model.layers[i].mlp.down_proj.weight for i in args.update_layers]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    random_vector = torch.rand(1, 1, updated.config.hidden_size)
    control = random_vector / torch.norm(random_vector) * args.steering_coeff

    def forward_with_cache(model, inputs, no_grad):
        cache = []
        hook = model.model.layers[args.layer].register_forward_hook(lambda m, i, o: cache.append(o[0] if isinstance(o, tuple) else o))
        with torch.set_grad_enabled(not no_grad):
            model(**inputs)
        hook.remove()
        return cache[0]

    def step(forget, retain):
        forget_inputs = tokenizer(forget, return_tensors="pt", padding=True, truncation=True, max_length=args.forget_max_length)
        forget_loss = torch.nn.functional.mse_loss(forward_with_cache(updated, forget_inputs, False),
                                                   control.expand(*forget_inputs["input_ids"].shape, -1))
        retain_inputs = tokenizer(retain, return_tensors="pt", padding=True, truncation=True, max_length=args.retain_max_length)
        updated_retain = forward_with_cache(updated, retain_inputs, False)
        frozen_retain = forward_with_cache(frozen, retain_inputs, True)
        retain_loss = torch.nn.functional.mse_loss(updated_retain, frozen_retain) * args.alpha
        optimizer.zero_grad()
        (forget_loss + retain_loss).backward()
        optimizer.step()
        return [forget_loss.item(), retain_loss.item()]

    return step


def speed(args) -> None:
    results = {}
    for impl in ("reference", "spunge"):
        command = [sys.executable, __file__, "_worker", "--impl", impl, *sys.argv[2:]]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            sys.exit(f"{impl} worker failed:\n{done.stderr[-3000:]}")
        results[impl] = json.loads(done.stdout.strip().splitlines()[-1])
    ref, ours = results["reference"], results["spunge"]
    print(f"model {args.model}, layer {args.layer}, update layers {args.update_layers}, batch {args.batch_size}+{args.batch_size}, "
          f"forget max {args.forget_max_length} / retain max {args.retain_max_length} tokens, {args.steps} timed steps after "
          f"{args.warmup} warm-up, fp32 CPU, torch threads {ours['threads']} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    print(f"{'impl':<10} {'steps/s':>9} {'s/step':>8} {'load s':>7} {'peak RSS MB':>12} {'above import MB':>16}")
    for name, r in (("reference", ref), ("spunge", ours)):
        print(f"{name:<10} {r['steps_per_s']:>9.3f} {r['s_per_step']:>8.2f} {r['load_s']:>7.1f} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_rss_mb'] - r['baseline_rss_mb']:>16.0f}")
    print(f"speed-up (steps/s): {ours['steps_per_s'] / ref['steps_per_s']:.2f}x   "
          f"peak RSS ratio spunge/reference: {ours['peak_rss_mb'] / ref['peak_rss_mb']:.2f} "
          f"(above import: {(ours['peak_rss_mb'] - ours['baseline_rss_mb']) / (ref['peak_rss_mb'] - ref['baseline_rss_mb']):.2f})")
    same = all(abs(a - b) <= 1e-3 * max(1.0, abs(b)) for x, y in zip(ours["losses"], ref["losses"], strict=True)
               for a, b in zip(x, y, strict=True))
    print(f"per-step losses agree (rel 1e-3): {same}  spunge {ours['losses'][-1]}  reference {ref['losses'][-1]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


# ------------------------------------------------------------------------------------------------
# quality


def _apply_delta(model, run_dir: Path) -> None:
    from safetensors.torch import load_file

    delta = load_file(str(run_dir / "delta.safetensors"))
    missing = set(delta) - set(model.state_dict())
    if missing:
        sys.exit(f"{run_dir}: delta tensors not in the model: {sorted(missing)[:3]}")
    model.load_state_dict(delta, strict=False)


def _layer_outputs(model, layer: int, inputs, labels=None):
    import torch

    captured = []
    hook = model.model.layers[layer].register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    hook.remove()
    return captured[0][0], out


def measure(model, tokenizer, layer: int, forget_rows: list[str], windows) -> dict:
    import torch

    forget_acts = []
    for text in forget_rows:
        ids = tokenizer(text, return_tensors="pt")
        forget_acts.append(_layer_outputs(model, layer, ids)[0])
    nll, tokens, retain_acts = 0.0, 0, []
    for window in windows:
        acts, out = _layer_outputs(model, layer, {"input_ids": window}, labels=window)
        count = window.shape[1] - 1
        nll += out.loss.item() * count
        tokens += count
        retain_acts.append(acts)
    return {"forget_acts": forget_acts, "retain_acts": retain_acts, "ppl": float(torch.exp(torch.tensor(nll / tokens)))}


def _mean_cosine(a_list, b_list) -> float:
    import torch

    per_row = [torch.nn.functional.cosine_similarity(a, b, dim=-1).mean().item() for a, b in zip(a_list, b_list, strict=True)]
    return sum(per_row) / len(per_row)


def quality(args) -> None:
    import torch

    from spunge_merge.models import load_causal_lm, load_tokenizer, resolve_model
    from spunge_merge.provenance import read_provenance

    runs = [Path(r) for r in args.runs]
    first = read_provenance(runs[0]) or {}
    base_ref = args.model or first.get("base_model", {}).get("ref")
    layer = args.layer if args.layer is not None else first.get("config", {}).get("layer", 7)
    resolved = resolve_model(base_ref)
    tokenizer = load_tokenizer(resolved)
    rows = [json.loads(line)["text"] for line in Path(args.heldout_forget).read_text().splitlines() if line.strip()][: args.forget_rows]
    text = "\n".join(line for line in Path(args.ppl_text).read_text().splitlines() if line.strip())
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    windows = [ids[i:i + args.window].unsqueeze(0) for i in range(0, len(ids) - args.window + 1, args.window)][: args.windows]
    base = load_causal_lm(resolved)
    reference = measure(base, tokenizer, layer, rows, windows)
    print(f"base {base_ref}: WikiText ppl {reference['ppl']:.3f} on {len(windows)} x {args.window} tokens; "
          f"{len(rows)} held-out forget rows; layer {layer}; threads {torch.get_num_threads()}")
    print(f"{'run':<28} {'steps':>5} {'forget cos':>10} {'retain cos':>10} {'ppl':>8} {'ppl rise':>8}")
    table = []
    for run in runs:
        model = load_causal_lm(resolved)
        _apply_delta(model, run)
        got = measure(model, tokenizer, layer, rows, windows)
        record = read_provenance(run) or {}
        row = {"run": str(run), "steps": record.get("result", {}).get("steps"),
               "forget_cosine": _mean_cosine(got["forget_acts"], reference["forget_acts"]),
               "retain_cosine": _mean_cosine(got["retain_acts"], reference["retain_acts"]),
               "ppl": got["ppl"], "base_ppl": reference["ppl"], "ppl_rise": got["ppl"] / reference["ppl"] - 1}
        table.append(row)
        print(f"{run.name:<28} {row['steps']!s:>5} {row['forget_cosine']:>10.3f} {row['retain_cosine']:>10.3f} {row['ppl']:>8.3f} "
              f"{100 * row['ppl_rise']:>7.1f}%", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("speed", "_worker"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="smollm2-135m")
        p.add_argument("--forget", type=Path, default=DEFAULT_FORGET)
        p.add_argument("--retain", type=Path, default=DEFAULT_RETAIN)
        p.add_argument("--layer", type=int, default=7)
        p.add_argument("--update-layers", type=lambda s: [int(x) for x in s.split(",")], default=[5, 6, 7])
        p.add_argument("--batch-size", type=int, default=4)
        p.add_argument("--forget-max-length", type=int, default=512)
        p.add_argument("--retain-max-length", type=int, default=512)
        p.add_argument("--steps", type=int, default=4)
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("--lr", type=float, default=5e-5)
        p.add_argument("--alpha", type=float, default=1200.0)
        p.add_argument("--steering-coeff", type=float, default=6.5)
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--json", help="also write the raw figures here")
        if name == "_worker":
            p.add_argument("--impl", choices=["spunge", "reference"], required=True)
    q = sub.add_parser("quality")
    q.add_argument("runs", nargs="+")
    q.add_argument("--heldout-forget", required=True, help="jsonl with a text column: forget rows not used in training")
    q.add_argument("--ppl-text", required=True, help="text file (one paragraph per line) not used in training")
    q.add_argument("--model", help="base model (default: from the first run's spunge.json)")
    q.add_argument("--layer", type=int, help="layer ℓ (default: from the first run's spunge.json)")
    q.add_argument("--forget-rows", type=int, default=71)
    q.add_argument("--window", type=int, default=512)
    q.add_argument("--windows", type=int, default=16)
    q.add_argument("--json")
    args = parser.parse_args()
    if args.command == "_worker":
        print(json.dumps(worker(args)))
    elif args.command == "speed":
        speed(args)
    else:
        quality(args)


if __name__ == "__main__":
    main()
