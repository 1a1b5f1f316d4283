"""RMU data order on the demo: one run, `reference` vs `shuffled`, then the knowledge probe.

Trains RMU with the demo's settings on the training facts of the forget domain(s) given, as one corpus
(`--domain capitals`: a split run; `--domain capitals,elements`: the un-split baseline on the union;
retain: the training facts of the kept domains), materialises each run and probes the held-out facts
of every domain, so the damage
to the kept domains can be compared between the WMDP reference order (retain = the top of the file: only
"languages") and the shuffled order (the whole retain set). Prints one table; writes under OUT.

    OMP_NUM_THREADS=1 python bench/data_order.py /tmp/data-order [--domain capitals[,elements]] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from spunge_merge.evaluate.knowledge import evaluate_knowledge
from spunge_merge.unlearn.rmu import RMUConfig, materialize, train_rmu

FACTS = Path(__file__).resolve().parents[1] / "spunge_merge" / "demo" / "facts.jsonl"
FORGET = ("capitals", "elements")
DEMO = {"layer": 7, "update_layers": [5, 6, 7], "steering_coeff": "auto", "alpha": 1200, "lr": 1e-3, "batch_size": 4,
        "epochs": 10, "device": "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--domain", default="capitals", help="Forget domain(s), comma-separated (one corpus).")
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds.")
    args = parser.parse_args()
    out: Path = args.out
    rows = [json.loads(line) for line in FACTS.read_text().splitlines()]
    out.mkdir(parents=True, exist_ok=True)
    forget_domains = args.domain.split(",")
    forget = out / "forget.jsonl"
    retain = out / "retain.jsonl"
    train = [r for r in rows if r["part"] == "train"]
    forget.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in train if r["domain"] in forget_domains))
    retain.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in train if r["domain"] not in FORGET))
    results = {"base": evaluate_knowledge("smollm2-135m", FACTS, out / "eval-base", where=["part == heldout"], device="cpu")}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for order in ("reference", "shuffled"):
            label = f"{order}-seed{seed}"
            started = time.perf_counter()
            outcome, = train_rmu("smollm2-135m", [forget], retain, out / f"run-{label}",
                                 RMUConfig(**DEMO, seed=seed, data_order=order), progress=False)
            materialize(None, outcome.path, out / f"model-{label}", force=True)
            results[label] = evaluate_knowledge(str(out / f"model-{label}"), FACTS, out / f"eval-{label}", where=["part == heldout"],
                                                device="cpu")
            data = json.loads((outcome.path / "spunge.json").read_text())["data"]
            print(f"{label}: retain rows used {data['retain'][0]['rows_used']}/{data['retain'][0]['rows_available']}, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    domains = list(results["base"]["domains"])
    print("| model | " + " | ".join(f"{d} ({'forget' if d in forget_domains else 'keep' if d not in FORGET else 'other'})"
                                   for d in domains) + " |")
    print("|---|" + "---:|" * len(domains))
    for label, result in results.items():
        cells = [f"{100 * result['domains'][d]['accuracy']:.0f} % ({result['domains'][d]['correct']}/{result['domains'][d]['n']})"
                 for d in domains]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
