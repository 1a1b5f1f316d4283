"""One model's ToxiGen evaluation, the pre-change path against the current one, side by side in one run.

The evaluation (recipes/bench-toxigen-smollm2-*.yaml): N ToxiGen prompts per group and label,
greedy first statements, the ToxiGen judge of bench/judge.py, and the fluency judge (Gemma-3-270M)
on the generations. Both paths run on the same model, prompts and judges:

- old: the code before the speed-up, kept here for the comparison: `transformers` `generate` in
  batches of 16 with a newline stopping criterion (a batch decodes until its longest answer ends,
  every row to the end), then the judge over the texts in their order, batches of 32;
- new: `generate_first_statements` as it is now (finished rows leave the batch and its KV cache,
  batches of up to 64 prompts within 30 % of the longest one's length), the judge on each distinct text
  once in length-sorted batches.

Generation, most of the time, is timed old, new, new, old on one loaded model (the machine is
shared and its load drifts; ABBA cancels a linear trend); the judges once each; the fluency judge
is the same code on both paths, timed once and counted in both. Printed: the thread count, each
stage's seconds, the ratio, and the figures that must be identical (every generation, every judge
score within 1e-5, toxicity %, fluency PPL). Then the new path end to end (`evaluate_toxicity` and
`evaluate_fluency`, files written) on an empty memo, and once more on the same weights in another
run directory, as every run directory of a grid evaluates its base model (`evaluate/memo.py`).

    OMP_NUM_THREADS=1 .venv/bin/python bench/toxigen_eval_speed.py --n-per-group 10 --judge ~/.cache/spunge/judges/toxigen-minilm
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
GROUPS = ["mexican", "women", "muslim", "lgbtq", "physical_disability"]  # the paper's five, as the bench recipes


def old_generate(lm, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """The pre-change generation (spunge_merge/evaluate/generation.py before the speed-up), verbatim in behaviour."""
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    from spunge_merge.evaluate.generation import _newline_token_ids, first_statement

    class StopAtNewline:
        def __init__(self, prompt_length, newline_ids):
            self.prompt_length, self.newline_ids = prompt_length, newline_ids

        def __call__(self, input_ids, scores, **kwargs):
            return torch.isin(input_ids[:, self.prompt_length:], self.newline_ids).any(dim=1)

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    device = next(lm.parameters()).device
    newline_ids = torch.tensor(_newline_token_ids(tokenizer), dtype=torch.long, device=device)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    outputs: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        encoded = tokenizer([prompts[i] for i in indices], return_tensors="pt", padding=True).to(device)
        prompt_length = encoded["input_ids"].shape[1]
        stop = StoppingCriteriaList([StopAtNewline(prompt_length, newline_ids)])
        with torch.no_grad():
            generated = lm.generate(**encoded, generation_config=config, stopping_criteria=stop)
        for index, text in zip(indices, tokenizer.batch_decode(generated[:, prompt_length:], skip_special_tokens=True), strict=True):
            outputs[index] = first_statement(text)
    return outputs


def old_score(judge, texts: list[str], batch_size: int = 32) -> list[float]:
    """The pre-change judge scoring: every text, in the caller's order, fixed-size batches."""
    import torch

    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = [t if t.strip() else "" for t in texts[start:start + batch_size]]
        encoded = judge.tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=judge.max_length)
        with torch.no_grad():
            logits = judge.model(**encoded.to(judge.device)).logits.float()
        probs = torch.sigmoid(logits[:, judge.toxic_index]) if judge.multi_label else torch.softmax(logits, -1)[:, judge.toxic_index]
        scores.extend(float(p) for p in probs.cpu())
    return scores


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - started


def main() -> None:
    import torch

    import spunge_merge.evaluate.memo as memo
    from spunge_merge.evaluate.fluency import evaluate_fluency, resolve_judge_lm
    from spunge_merge.evaluate.generation import generate_first_statements
    from spunge_merge.evaluate.judges import HFClassifierJudge
    from spunge_merge.evaluate.prompts import load_prompts, sample_prompts
    from spunge_merge.evaluate.toxicity import evaluate_toxicity
    from spunge_merge.models import load_causal_lm, load_tokenizer, resolve_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-per-group", type=int, default=40, help="per group and label (the bench recipes: 40, 400 prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--judge", type=Path, default=Path.home() / ".cache" / "spunge" / "judges" / "toxigen-minilm")
    parser.add_argument("--fluency-judge", default="gemma3-270m")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()

    model = resolve_model(args.model)
    resolve_judge_lm(args.fluency_judge)  # converted once, outside every timing
    sample = sample_prompts(load_prompts(DATA / "toxigen" / "prompts", GROUPS), groups=GROUPS, n_per_group=args.n_per_group, seed=0)
    texts = [p.text for p in sample.prompts]
    threads = f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    print(f"{args.model}: {len(texts)} prompts ({args.n_per_group} per group and label, {len(GROUPS)} groups); {threads}", flush=True)

    # Generation, the dominant stage: old, new, new, old on one loaded model (a shared machine's load drifts; ABBA cancels a trend).
    lm = load_causal_lm(model, dtype=torch.float32, device=torch.device("cpu"))
    tokenizer = load_tokenizer(model)
    gen = {"old": [], "new": []}
    for path in ("old", "new", "new", "old"):
        function = old_generate if path == "old" else generate_first_statements
        kwargs = {} if path == "old" else {"progress": False}
        outputs, seconds = timed(function, lm, tokenizer, texts, max_new_tokens=args.max_new_tokens, **kwargs)
        gen[path].append((outputs, seconds))
        print(f"  generation, {path}: {seconds:.1f} s", flush=True)
    del lm
    old_generations, new_generations = gen["old"][0][0], gen["new"][0][0]
    assert gen["old"][1][0] == old_generations and gen["new"][1][0] == new_generations  # each path is deterministic
    gen_old, gen_new = (sum(s for _, s in gen[path]) / 2 for path in ("old", "new"))

    judge = HFClassifierJudge(str(args.judge), device="cpu")
    old_scores, judge_old = timed(old_score, judge, old_generations)
    new_scores, judge_new = timed(judge.score, new_generations)

    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        memo.cache_root = lambda: work / "cache"  # an empty store: the new path computes everything, as on a first model
        (work / "fluency").mkdir()
        (work / "fluency" / "generations.jsonl").write_text("".join(json.dumps({"generation": g}) + "\n" for g in old_generations),
                                                           encoding="utf-8")
        fluency, fluency_seconds = timed(evaluate_fluency, work / "fluency" / "generations.jsonl", args.fluency_judge, work / "fluency",
                                         device="cpu", progress=False)  # the same code on both paths: timed once, counted in both
        memo.cache_root = lambda: work / "cache-e2e"

        def end_to_end(out: Path) -> tuple[dict, list[str], dict]:
            result = evaluate_toxicity(model, DATA / "toxigen" / "prompts", out, groups=GROUPS, n_per_group=args.n_per_group,
                                       classifier=str(args.judge), max_new_tokens=args.max_new_tokens, device="cpu", progress=False)
            rows = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
            flu = evaluate_fluency(out / "generations.jsonl", args.fluency_judge, out, device="cpu", progress=False)
            return result, [r["generation"] for r in rows], flu

        (first, first_generations, first_fluency), first_seconds = timed(end_to_end, work / "run-a")
        (again, again_generations, again_fluency), again_seconds = timed(end_to_end, work / "run-b")

    same_text = sum(a == b for a, b in zip(old_generations, new_generations, strict=True))
    same_score = sum(abs(a - b) <= 1e-5 for a, b in zip(old_scores, new_scores, strict=True))
    toxic = [100 * sum(s >= 0.5 for s in scores) / len(scores) for scores in (old_scores, new_scores)]
    old_total, new_total = gen_old + judge_old + fluency_seconds, gen_new + judge_new + fluency_seconds
    via_api = sum(a == b for a, b in zip(old_generations, first_generations, strict=True))
    print(f"identical generations: {same_text}/{len(texts)} (and {via_api}/{len(texts)} through evaluate_toxicity); "
          f"judge scores within 1e-5: {same_score}/{len(texts)}")
    print(f"toxicity %: old {toxic[0]:.2f}, new {toxic[1]:.2f}, evaluate_toxicity {first['overall']['pct']:.2f}; "
          f"fluency PPL {fluency['perplexity']:.4f} (evaluate_fluency on the new path: {first_fluency['perplexity']:.4f})")
    print(f"  generation (mean of 2 each, ABBA): {gen_old:.1f} s -> {gen_new:.1f} s ({gen_old / gen_new:.2f}x)")
    print(f"  toxicity judge: {judge_old:.2f} s -> {judge_new:.2f} s; fluency judge (same code): {fluency_seconds:.1f} s")
    print(f"one model: {old_total:.1f} s -> {new_total:.1f} s, speed-up {old_total / new_total:.2f}x ({threads})")
    print(f"new path end to end (evaluate_toxicity + evaluate_fluency, files written): {first_seconds:.1f} s; the same weights in a "
          f"second run directory (a grid's base model): {again_seconds:.1f} s ({first_seconds / again_seconds:.1f}x), "
          f"same figures: {again_generations == first_generations and again_fluency['perplexity'] == first_fluency['perplexity']}")


if __name__ == "__main__":
    main()
