"""Discovered splits on ToxiGen: agreement with the true target groups, and the embedding step's cost.

agreement  The paper's unlearning rows (annotated train, toxicity_human >= 3, target_group in
           mexican, women, muslim, lgbtq, physical_dis: 1,305 rows) split by `--by cluster`,
           which reads only the text (target_group is hidden from it and used only to score):
           adjusted Rand index and purity against target_group for K = 5 and for K chosen by
           silhouette (K 2-8), over several k-means seeds; embeddings computed once (cached).
embed      Wall time, CPU time (fairer on a shared machine) and memory of embedding 1,000 of those rows with all-MiniLM-L6-v2 on CPU at
           one thread, in a fresh process (so its peak RSS is its own): model load, encoding,
           peak RSS, and the increase over the process after importing torch and transformers.

    OMP_NUM_THREADS=1 .venv/bin/python bench/discover.py agreement --seeds 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/discover.py embed --rows 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "toxigen" / "annotated" / "annotated_train.jsonl"
GROUPS = ("mexican", "women", "muslim", "lgbtq", "physical_dis")
WHERE = ["toxicity_human >= 3", f"target_group in {','.join(GROUPS)}"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def paper_texts(data: Path) -> list[str]:
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows if r["toxicity_human"] >= 3 and r["target_group"] in GROUPS]


def agreement(args) -> None:
    sys.path.insert(0, str(REPO))
    from spunge_merge.data.discovery import build_by
    from spunge_merge.data.split import split_dataset

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            for k in (5, None):
                by = build_by("cluster" if k is None else f"cluster:{k}", {"seed": seed, "truth": "target_group",
                                                                         "k_range": args.k_range})
                started = time.perf_counter()
                result = split_dataset(args.data, by=by, where=WHERE, out=Path(scratch) / f"s{seed}-k{k}", report=False,
                                       progress=False)
                record = result.discovery.record
                rows.append({"seed": seed, "k_given": k is not None, "k": record["k"], "ari": record["agreement"]["ari"],
                             "purity": record["agreement"]["purity"], "rows": record["agreement"]["rows"],
                             "silhouette": record["silhouette"], "cached": record["embeddings_cached"],
                             "seconds": round(time.perf_counter() - started, 1)})
                print(json.dumps(rows[-1]), flush=True)
    print()
    print("| K | seed | ARI | purity | rows | silhouette(K) |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        label = "5 (given)" if r["k_given"] else f"{r['k']} (silhouette, {args.k_range})"
        scores = ", ".join(f"{k}: {v}" for k, v in r["silhouette"].items())
        print(f"| {label} | {r['seed']} | {r['ari']} | {r['purity']} | {r['rows']} | {scores} |")


def embed(args) -> None:
    if not args.child:  # measure in a fresh process, so the peak RSS is the embedding step's own
        command = [sys.executable, __file__, "embed", "--rows", str(args.rows), "--batch-size", str(args.batch_size),
                   "--data", str(args.data), "--child"]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        return
    import torch
    import transformers  # noqa: F401

    from spunge_merge.data.discovery.embeddings import encode
    from spunge_merge.models import MINILM_ALIAS, resolve_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    texts = paper_texts(args.data)[: args.rows]
    before = peak_rss_mb()
    from transformers import AutoModel, AutoTokenizer

    model = resolve_model(MINILM_ALIAS)
    started = time.perf_counter()  # loading alone (first, from disk), then the whole encode call
    AutoTokenizer.from_pretrained(model.path)
    AutoModel.from_pretrained(model.path)
    load = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    vectors = encode(texts, model, batch_size=args.batch_size, progress=False)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = peak_rss_mb()
    print(json.dumps({"rows": len(texts), "threads": torch.get_num_threads(), "batch_size": args.batch_size,
                      "seconds_model_load": round(load, 2), "seconds_encode": round(seconds, 2),
                      "seconds_per_1000_rows": round(seconds * 1000 / len(texts), 2),
                      "cpu_seconds_per_1000_rows": round(cpu * 1000 / len(texts), 2), "load_average": os.getloadavg()[0],
                      "peak_rss_mb": round(peak), "rss_after_imports_mb": round(before),
                      "embedding_step_rss_mb": round(peak - before), "dim": int(vectors.shape[1])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("agreement")
    one.add_argument("--data", type=Path, default=DATA)
    one.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    one.add_argument("--k-range", default="2-8")
    two = sub.add_parser("embed")
    two.add_argument("--data", type=Path, default=DATA)
    two.add_argument("--rows", type=int, default=1000)
    two.add_argument("--batch-size", type=int, default=32)
    two.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    {"agreement": agreement, "embed": embed}[args.command](args)


if __name__ == "__main__":
    main()
