"""GA, GradDiff, NPO and SimNPO on CPU (smollm2-135m by default): spunge's loop against a plain one.

speed    per method, time per optimizer step of spunge's shared loop (`loss_training.fit`) and of a
         plain transformers + peft loop written here that computes the same loss (the model's own
         `labels=` loss for the NLL terms, log_softmax/gather for NPO and SimNPO), same model, LoRA,
         batch, rows and thread count, in one process, in alternating rounds. Prints the median
         seconds per step of each and their ratio (target: spunge ≤ 1.1× plain).
memory   peak RSS of a GradDiff run and of an NPO run (α = 1, with retain) at the same batch, each
         in its own process so each peak is its own (target: NPO ≤ 1.15× GradDiff).

    OMP_NUM_THREADS=1 .venv/bin/python bench/methods.py speed --steps 4 --rounds 3
    OMP_NUM_THREADS=1 .venv/bin/python bench/methods.py memory --steps 4
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEFAULT_FORGET = SHARED / "toxigen" / "annotated" / "annotated_train.jsonl"
DEFAULT_RETAIN = SHARED / "retain" / "wikitext2_raw_test_rows.jsonl"
METHODS = ("ga", "graddiff", "npo", "simnpo")


def texts(forget: Path, retain: Path, batch_size: int) -> tuple[list[str], list[str]]:
    """One batch of toxic ToxiGen rows (toxicity_human >= 3) and one of WikiText paragraphs."""
    rows = [json.loads(line) for line in forget.read_text(encoding="utf-8").splitlines() if line.strip()]
    toxic = [r["text"] for r in rows if r.get("toxicity_human", 5) >= 3][:batch_size]
    paragraphs = [json.loads(line) for line in retain.read_text(encoding="utf-8").splitlines() if line.strip()]
    wiki = [r["text"] for r in paragraphs if r.get("kind") == "text"][:batch_size]
    return toxic, wiki


def setup(args, name: str):
    import torch

    from spunge_merge.models import load_causal_lm, load_tokenizer, resolve_model
    from spunge_merge.unlearn import lm_data
    from spunge_merge.unlearn.registry import get_method

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    method = get_method(name)
    values = {"batch_size": args.batch_size, "max_length": args.max_length, "device": "cpu", "dtype": "float32",
              "lr": 1e-5, "eval_samples": 0, "lora_dropout": 0.0}
    if "alpha" in method.config_class.model_fields:
        values["alpha"] = 1.0
    config = method.validate_config(values, "bench")
    resolved = resolve_model(args.model)
    tokenizer = load_tokenizer(resolved)
    lm = load_causal_lm(resolved, dtype=torch.float32, device="cpu")
    forget_texts, retain_texts = texts(Path(args.forget), Path(args.retain), args.batch_size)
    forget = lm_data.encode_texts(tokenizer, forget_texts, max_length=args.max_length)
    retain = lm_data.encode_texts(tokenizer, retain_texts, max_length=args.max_length)
    return method, config, lm, tokenizer.pad_token_id, forget, retain


def spunge_steps(name, config, lm, pad_id, forget, retain, steps: int) -> float:
    """Seconds per step of spunge's loop: `steps` epochs over one batch of forget rows (and retain rows)."""
    from peft import get_peft_model

    from spunge_merge.unlearn.loss_training import _lora_config, fit, reference_logprobs

    objective = importlib.import_module(f"spunge_merge.unlearn.{name}").OBJECTIVE
    model = get_peft_model(lm, _lora_config(config))
    params = [p for p in model.parameters() if p.requires_grad]
    reference = None
    if objective.reference:
        with model.disable_adapter():
            reference = reference_logprobs(model, forget, pad_id=pad_id, batch_size=config.batch_size, device="cpu")
    run = config.model_copy(update={"epochs": steps})
    started = time.perf_counter()
    fit(model, params, forget, retain if config.retain_weight() > 0 else None, objective=objective, config=run,
        pad_id=pad_id, device="cpu", reference=reference, progress=False)
    elapsed = time.perf_counter() - started
    model.unload()
    return elapsed / steps


def plain_steps(name, config, lm, pad_id, forget, retain, steps: int) -> float:
    """Seconds per step of a plain peft loop computing the same loss on the same batch."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from spunge_merge.unlearn.lm_data import collate

    model = get_peft_model(lm, LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                          target_modules=config.target_modules, task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    f, r = collate(forget, pad_id), collate(retain, pad_id)

    def seq_logp(batch):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        labels = batch.labels[:, 1:]
        mask = labels != -100
        logp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (logp * mask).sum(-1), mask.sum(-1)

    reference = None
    if name == "npo":  # once, as spunge does: the comparison is of the loops
        with torch.no_grad(), model.disable_adapter():
            reference = seq_logp(f)[0]
    started = time.perf_counter()
    for _ in range(steps):
        model.train()
        if name in ("ga", "graddiff"):
            loss = -config.forget_weight() * model(input_ids=f.input_ids, attention_mask=f.attention_mask, labels=f.labels).loss
        elif name == "npo":
            logp, _ = seq_logp(f)
            loss = config.gamma * (-(2 / config.beta) * F.logsigmoid(-config.beta * (logp - reference))).mean()
        else:
            logp, count = seq_logp(f)
            loss = config.gamma * (-(2 / config.beta) * F.logsigmoid(config.beta * (-logp / count - config.delta))).mean()
        if config.retain_weight() > 0:
            loss = loss + config.alpha * model(input_ids=r.input_ids, attention_mask=r.attention_mask, labels=r.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - started
    model.unload()
    return elapsed / steps


def speed(args) -> None:
    rows = []
    for name in args.methods:
        method, config, lm, pad_id, forget, retain = setup(args, name)
        spunge_steps(name, config, lm, pad_id, forget, retain, 1)  # warm-up (allocator, kernels)
        plain_steps(name, config, lm, pad_id, forget, retain, 1)
        times: dict[str, list[float]] = {"spunge": [], "plain": []}
        for round_ in range(args.rounds):
            order = ("spunge", "plain") if round_ % 2 == 0 else ("plain", "spunge")
            for which in order:
                run = spunge_steps if which == "spunge" else plain_steps
                times[which].append(run(name, config, lm, pad_id, forget, retain, args.steps))
        s, p = statistics.median(times["spunge"]), statistics.median(times["plain"])
        rows.append({"method": name, "spunge_s_per_step": round(s, 3), "plain_s_per_step": round(p, 3),
                     "ratio": round(s / p, 3), "rounds": {k: [round(x, 3) for x in v] for k, v in times.items()}})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| method | spunge s/step | plain s/step | ratio |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['spunge_s_per_step']} | {row['plain_s_per_step']} | {row['ratio']} |")


def memory_worker(args) -> None:
    name = args.methods[0]
    method, config, lm, pad_id, forget, retain = setup(args, name)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    spunge_steps(name, config, lm, pad_id, forget, retain, args.steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"method": name, "peak_rss_mb": round(peak, 1), "after_load_mb": round(loaded, 1),
                      "training_mb": round(peak - loaded, 1)}))


def memory(args) -> None:
    results = {}
    for name in ("graddiff", "npo"):
        command = [sys.executable, __file__, "memory-worker", "--methods", name, "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--model", args.model,
                   "--forget", args.forget, "--retain", args.retain]
        out = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results[name]), flush=True)
    ratio = results["npo"]["peak_rss_mb"] / results["graddiff"]["peak_rss_mb"]
    print(f"NPO / GradDiff peak RSS: {ratio:.3f} (training part: "
          f"{results['npo']['training_mb'] / max(results['graddiff']['training_mb'], 1e-9):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["speed", "memory", "memory-worker"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--forget", default=str(DEFAULT_FORGET))
    parser.add_argument("--retain", default=str(DEFAULT_RETAIN))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    {"speed": speed, "memory": memory, "memory-worker": memory_worker}[args.command](args)


if __name__ == "__main__":
    main()
