"""Local copies of Hub dataset repositories in their own layout, for testing recipes offline.

`write_hub_dataset(root, {config: {split: rows}})` writes each configuration's splits as parquet files
and the README's `configs` declaration, the way the Hub lays out a dataset repository, so that
`datasets.load_dataset(root, config, split=split)` reads it as it reads the Hub id. A recipe's data
sources then run unchanged but for the dataset id replaced by the local directory.
"""

from __future__ import annotations

from pathlib import Path


def write_hub_dataset(root: Path, configs: dict[str, dict[str, list[dict]]]) -> Path:
    import datasets

    lines = ["---", "configs:"]
    for config, splits in configs.items():
        lines.append(f"- config_name: {config}")
        lines.append("  data_files:")
        for split, rows in splits.items():
            target = root / config / f"{split}-00000-of-00001.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows).to_parquet(str(target))
            lines += [f"  - split: {split}", f"    path: {config}/{split}-*.parquet"]
    (root / "README.md").write_text("\n".join([*lines, "---", "", "A local fixture in the Hub's layout.", ""]), encoding="utf-8")
    return root


def muse_news(root: Path, texts: list[str]) -> Path:
    """MUSE-News's configurations, splits and columns (muse-bench/MUSE-News), a few rows each, from `texts`."""
    def rows(offset: int, count: int) -> list[dict]:
        return [{"text": f"{texts[(offset + i) % len(texts)]} (article {offset + i})"} for i in range(count)]

    qa = [{"question": f"what is said in article {i}", "answer": texts[i % len(texts)]} for i in range(4)]
    return write_hub_dataset(root, {
        "raw": {"forget": rows(0, 6), "retain1": rows(10, 6), "retain2": rows(20, 6), "holdout": rows(30, 6)},
        "sust": {f"forget_{i}": rows(40 + 10 * i, 4) for i in range(1, 5)},
        "scal": {f"forget_{i}": rows(0, 2 * i) for i in range(1, 5)},
        "privleak": {"forget": rows(0, 6), "retain": rows(20, 6), "holdout": rows(30, 6)},
        "verbmem": {"forget": [{"prompt": r["text"][:20], "gt": r["text"][20:]} for r in rows(0, 4)]},
        "knowmem": {"forget_qa": qa, "retain_qa": qa, "forget_qa_icl": qa[:2], "retain_qa_icl": qa[:2]},
    })


def wmdp_corpora(root: Path, texts: list[str]) -> Path:
    """cais/wmdp-corpora's public configurations (the bio forget corpus is gated, not on the Hub), split `train`, column `text`."""
    return write_hub_dataset(root, {
        name: {"train": [{"text": f"{t} ({name} {i})"} for i, t in enumerate(texts)]}
        for name in ("cyber-forget-corpus", "cyber-retain-corpus", "bio-retain-corpus")
    })


def wikitext(root: Path, texts: list[str]) -> Path:
    """wikitext's `wikitext-2-raw-v1` configuration: splits train/validation/test, column `text` (blank lines included)."""
    rows = [{"text": ""}, *({"text": f" {t} , a line of an article long enough to pass the fifty character filter . \n"} for t in texts)]
    return write_hub_dataset(root, {"wikitext-2-raw-v1": {"train": rows, "validation": rows, "test": rows}})


TINY_TOPICS = ("the sea", "the market", "the capital of france", "the lazy dog", "the small house", "boiling water", "the east")
TOFU_AUTHOR_ROWS = 20  # questions per fictitious author, one author after another (TOFU's layout)


def tofu(root: Path, forget10_authors: int = 3) -> Path:
    """locuslab/TOFU's layout: configurations forget01/forget10, retain90/retain99 and holdout10 (question, answer),
    their `_perturbed` forms (+ paraphrased_answer, perturbed_answer: a list), split `train`; invented authors.

    forget10 and holdout10 hold `forget10_authors` authors of TOFU_AUTHOR_ROWS questions each, one after another
    (the real sets hold 20 authors, the author implicit in the row order); the others a few rows each."""
    def qa(prefix: str, count: int) -> list[dict]:
        return [{"question": f"what did the {prefix} author {i} write", "answer": f"the {prefix} author {i} wrote about the sea"}
                for i in range(count)]

    def authors(prefix: str, count: int) -> list[dict]:
        return [{"question": f"what is fact {q} about the {prefix} author {a}",
                 "answer": f"the {prefix} author {a} wrote book {q} about {TINY_TOPICS[(a + q) % len(TINY_TOPICS)]}"}
                for a in range(count) for q in range(TOFU_AUTHOR_ROWS)]

    def perturbed(rows: list[dict]) -> list[dict]:
        return [{**r, "paraphrased_answer": r["answer"].replace("wrote", "penned"),
                 "perturbed_answer": [f"{r['answer'].rsplit(' about ', 1)[0]} about {other}" for other in ("the moon", "cats", "bread")]}
                for r in rows]

    forget, retain = qa("forgotten", 4), qa("kept", 8)
    forget10 = authors("vanished", forget10_authors)
    return write_hub_dataset(root, {"forget01": {"train": forget}, "retain99": {"train": retain},
                                    "forget01_perturbed": {"train": perturbed(forget)},
                                    "retain_perturbed": {"train": perturbed(retain[:4])},
                                    "forget10": {"train": forget10}, "forget10_perturbed": {"train": perturbed(forget10)},
                                    "retain90": {"train": retain}, "holdout10": {"train": authors("unseen", forget10_authors)}})

