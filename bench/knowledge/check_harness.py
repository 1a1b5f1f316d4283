"""Independent check of a fact file: lm-eval's multiple_choice scoring against `evaluate_knowledge(form="choice")`.

For one model and some domains, the domain tasks written by `make_tasks.py` run through the LM
Evaluation Harness (lm_eval's own HFLM, samples logged) and the same facts through
`evaluate_knowledge(form="choice", seed=0)` (whose distractors are the file's stored options, see
make_facts.py); prints, per domain, both accuracies on the heldout facts and how many facts the
two verdicts agree on. Rerun:

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/knowledge/check_harness.py --model smollm2-135m --domains languages
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_tasks  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from spunge_merge.evaluate.harness import evaluate_harness, task_manager
    from spunge_merge.evaluate.knowledge import evaluate_knowledge
    from spunge_merge.models import load_causal_lm, load_tokenizer, resolve_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model alias; its facts file is bench/knowledge/facts-<model>.jsonl")
    parser.add_argument("--domains", required=True, help="comma-separated domains to check")
    parser.add_argument("--batch-size", type=int, default=16, help="lm-eval and log-likelihood batch size")
    args = parser.parse_args(argv)
    facts = HERE / f"facts-{args.model}.jsonl"
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    resolved = resolve_model(args.model)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        written = make_tasks.write_tasks(facts, Path(tmp) / "tasks")
        include = Path(written["include_path"])
        tasks = [written["tasks"][d] for d in domains]
        ours = evaluate_knowledge(resolved, facts, Path(tmp) / "choice", form="choice", seed=0, domains=domains,
                                  device="cpu", dtype="float32", batch_size=args.batch_size)
        records = [json.loads(line) for line in (Path(tmp) / "choice" / "knowledge.jsonl").read_text().splitlines()]
        stored = {json.loads(line)["prompt"]: json.loads(line) for line in facts.read_text().splitlines()}
        assert all(r["options"] == stored[r["prompt"]]["options"] for r in records), "options differ from the file's"
        verdicts = {r["prompt"]: r["correct"] for r in records if stored[r["prompt"]]["part"] == "heldout"}
        lm = HFLM(pretrained=load_causal_lm(resolved, dtype="float32", device="cpu"), tokenizer=load_tokenizer(resolved),
                  batch_size=args.batch_size, device="cpu")
        raw = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager(include), log_samples=True,
                                      bootstrap_iters=0)
        harness_verdicts = {s["doc"]["prompt"]: bool(s["acc"]) for samples in raw["samples"].values() for s in samples}
        via_cli = evaluate_harness(resolved, tasks, Path(tmp) / "harness", include_path=include,
                                   batch_size=args.batch_size, device="cpu", dtype="float32")
    for domain, task in zip(domains, tasks, strict=True):
        prompts = [p for p, r in stored.items() if r["domain"] == domain and r["part"] == "heldout"]
        agree = sum(verdicts[p] == harness_verdicts[p] for p in prompts)
        print(f"{args.model} {domain}: {len(prompts)} heldout facts; choice form acc "
              f"{sum(verdicts[p] for p in prompts) / len(prompts):.4f}, lm-eval acc "
              f"{sum(harness_verdicts[p] for p in prompts) / len(prompts):.4f} (evaluate_harness "
              f"{via_cli['tasks'][task]['primary']:.4f}); verdicts agree on {agree}/{len(prompts)}")
    print(f"all domains, train+heldout, choice form: {ours['overall']['correct']}/{ours['overall']['n']}; "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
