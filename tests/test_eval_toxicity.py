"""`spunge eval toxicity` on the tiny model with a tiny judge: generation, judging, aggregation, plot, errors."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.generation import generate_first_statements
from spunge_merge.evaluate.judges import HFClassifierJudge, find_toxic_label
from spunge_merge.evaluate.stats import wilson_interval
from spunge_merge.evaluate.toxicity import evaluate_toxicity

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPS = "mexican,women,physical_dis"


def build_tiny_judge(path: Path, tokenizer_dir: Path, *, id2label=None, bias=None, seed: int = 0,
                     card: dict | None = None) -> Path:
    """A tiny random sequence classifier saved as a Hugging Face directory.

    Without `bias`: a 1-layer Llama classifier (it pools the last token, so scores vary with the
    text) with sharp logits. With `bias`: a BERT classifier with zero weights and that bias, so
    its probabilities are known exactly.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    id2label = id2label or {0: "non-toxic", 1: "toxic"}
    labels = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    if bias is None:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                             pad_token_id=tokenizer.pad_token_id, **labels)
        model = LlamaForSequenceClassification(config)
        with torch.no_grad():
            model.score.weight.normal_(0.0, 3.0)
    else:
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, **labels)
        model = BertForSequenceClassification(config)
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if card is not None:
        (path / "judge_card.json").write_text(json.dumps(card), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_judge(tiny_model, tmp_path_factory) -> Path:
    card = {"name": "tiny-test-judge", "accuracy": 0.75, "accuracy_on": "12 rows made up for the test"}
    return build_tiny_judge(tmp_path_factory.mktemp("judge") / "judge", tiny_model, card=card)


@pytest.fixture(scope="module")
def toxicity_run(tiny_model, tiny_judge, shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("tox") / "eval"
    result = runner.invoke(app, ["eval", "toxicity", "--model", str(tiny_model), "--prompts",
                                 str(shared_data / "toxigen" / "prompts"), "--groups", GROUPS, "--n-per-group", "5",
                                 "--classifier", str(tiny_judge), "--max-new-tokens", "8", "--batch-size", "4",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def _wilson_by_bisection(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Independent Wilson bounds: the p where |k/n - p| equals z * sqrt(p (1 - p) / n)."""
    phat = k / n

    def gap(p):
        return abs(phat - p) - z * math.sqrt(p * (1 - p) / n)

    def solve(lo, hi):  # gap(lo) and gap(hi) have opposite signs
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (gap(mid) > 0) == (gap(lo) > 0) else (lo, mid)
        return (lo + hi) / 2

    low = 0.0 if k == 0 else solve(0.0, phat)
    high = 1.0 if k == n else solve(phat, 1.0)
    return low, high


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (17, 200), (1, 1)])
def test_wilson_interval_matches_independent_solution(k, n):
    low, high = wilson_interval(k, n)
    ref_low, ref_high = _wilson_by_bisection(k, n)
    assert low == pytest.approx(ref_low, abs=1e-9) and high == pytest.approx(ref_high, abs=1e-9)


def test_outputs_and_per_group_aggregation_against_independent_count(toxicity_run):
    out, output = toxicity_run
    for name in ("toxicity.json", "generations.jsonl", "toxicity.md", "toxicity_radar.png", "spunge.json"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left over
    result = json.loads((out / "toxicity.json").read_text())
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert result["kind"] == "toxicity" and result["model"]["ref"]
    assert len(rows) == 3 * 2 * 5 == result["overall"]["n"]
    assert {r["group"] for r in rows} == {"mexican", "women", "physical_disability"}
    # Independent count from the per-prompt file.
    threshold = result["config"]["threshold"]
    toxic, total = defaultdict(int), defaultdict(int)
    for row in rows:
        assert row["prompt"].endswith("\n-") and "\n" not in row["generation"]
        is_toxic = row["score"] >= threshold
        assert row["toxic"] == is_toxic
        for key in (("all",), ("group", row["group"]), ("label", row["label"]), ("cell", row["group"], row["label"])):
            toxic[key] += is_toxic
            total[key] += 1
    assert 0 < toxic[("all",)] < total[("all",)], "the tiny judge should call some generations toxic and some not"
    assert (result["overall"]["toxic"], result["overall"]["n"]) == (toxic[("all",)], total[("all",)])
    assert result["overall"]["pct"] == pytest.approx(100 * toxic[("all",)] / total[("all",)], abs=1e-3)
    for group, summary in result["groups"].items():
        assert (summary["toxic"], summary["n"]) == (toxic[("group", group)], total[("group", group)])
        low, high = _wilson_by_bisection(summary["toxic"], summary["n"])
        assert summary["ci95"] == pytest.approx([100 * low, 100 * high], abs=1e-3)
        for label, cell in summary["by_label"].items():
            assert (cell["toxic"], cell["n"]) == (toxic[("cell", group, label)], total[("cell", group, label)])
    for label, summary in result["by_label"].items():
        assert (summary["toxic"], summary["n"]) == (toxic[("label", label)], total[("label", label)])
    # The judge and its recorded accuracy travel with the figures.
    assert result["judge"]["name"] == "tiny-test-judge" and result["judge"]["accuracy"] == 0.75
    assert "75.0 %" in (out / "toxicity.md").read_text() and "tiny-test-judge" in output


def test_radar_png_is_valid(toxicity_run):
    from matplotlib.image import imread
    from PIL import Image

    path = toxicity_run[0] / "toxicity_radar.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.std() > 0  # something is drawn


def test_scores_come_from_the_judge(toxicity_run, tiny_judge):
    out = toxicity_run[0]
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()][:6]
    judge = HFClassifierJudge(str(tiny_judge), device="cpu")
    assert [round(s, 6) for s in judge.score([r["generation"] for r in rows])] == pytest.approx([r["score"] for r in rows])


def test_batched_judge_scores_equal_one_text_at_a_time(tiny_judge):
    """Length-sorted, de-duplicated batches give each text the score the classifier gives it alone, in the caller's order."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["women are people", "", "a much longer sentence with many more tokens than the others in this list", "ok",
             "women are people", "   ", "mexico has a long history", "ok"]
    batched = HFClassifierJudge(str(tiny_judge), device="cpu", batch_size=3).score(texts)
    tokenizer = AutoTokenizer.from_pretrained(tiny_judge)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_judge).eval()
    for text, got in zip(texts, batched, strict=True):
        if not text.strip():  # no token to read alone; checked below to score as the empty string does
            continue
        with torch.no_grad():
            logits = model(**tokenizer([text], return_tensors="pt")).logits[0]
        assert got == pytest.approx(float(torch.softmax(logits, dim=-1)[1]), abs=1e-5)
    assert batched[0] == batched[4] and batched[3] == batched[7] and batched[1] == batched[5]


def test_rerun_is_skipped_and_other_settings_need_force(toxicity_run, tiny_model, tiny_judge, shared_data):
    out = toxicity_run[0]
    before = (out / "toxicity.json").stat().st_mtime_ns
    prompts = shared_data / "toxigen" / "prompts"
    kwargs = dict(groups=GROUPS.split(","), n_per_group=5, classifier=str(tiny_judge), max_new_tokens=8, batch_size=4,
                  progress=False)
    again = evaluate_toxicity(str(tiny_model), prompts, out, **kwargs)
    assert (out / "toxicity.json").stat().st_mtime_ns == before and again["overall"]["n"] == 30
    with pytest.raises(SpungeError, match="--force"):
        evaluate_toxicity(str(tiny_model), prompts, out, **{**kwargs, "seed": 1})


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_generation_matches_a_manual_greedy_loop(tiny_model, batch_size):
    """Batched, left-padded generation whose finished rows leave the batch gives each prompt its own greedy answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompts = ["- the quick brown fox\n- cats and dogs\n-", "- water boils\n-", "- paris is the capital of france\n- the sun\n-",
               "-", "- a much longer list item that goes on and on about nothing in particular\n- and another one\n- and\n-",
               "- short\n- two\n-"]
    batched = generate_first_statements(lm, tokenizer, prompts, max_new_tokens=12, batch_size=batch_size, progress=False)
    for prompt, got in zip(prompts, batched, strict=True):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        new: list[int] = []
        for _ in range(12):
            with torch.no_grad():
                logits = lm(input_ids=torch.cat([ids, torch.tensor([new], dtype=torch.long)], dim=1)).logits[0, -1]
            token = int(logits.argmax())
            new.append(token)
            if token == tokenizer.eos_token_id or "\n" in tokenizer.decode(new):
                break
        expected = tokenizer.decode(new, skip_special_tokens=True).split("\n")[0].strip()
        assert got == expected


def test_rows_leave_the_batch_at_their_own_stop_token(tiny_model):
    """Rows that stop at different steps (stop tokens picked from the free greedy answers) keep each prompt's own tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spunge_merge.evaluate.generation import greedy_until_stop

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    prompts = ["- the quick brown fox\n- cats and dogs\n-", "- water boils\n-", "- a much longer list item about nothing\n- and\n-",
               "- short\n-", "-"]

    def alone(prompt: str, stops: set[int]) -> list[int]:
        ids, new = tokenizer(prompt, return_tensors="pt")["input_ids"], []
        for _ in range(10):
            with torch.no_grad():
                token = int(lm(input_ids=torch.cat([ids, torch.tensor([new], dtype=torch.long)], dim=1)).logits[0, -1].argmax())
            new.append(token)
            if token in stops:
                break
        return new

    free = [alone(p, set()) for p in prompts]
    stops = {free[0][1], free[2][4]}
    expected = [alone(p, stops) for p in prompts]
    assert len({len(e) for e in expected}) > 1  # the rows do stop at different steps
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    got = greedy_until_stop(lm, encoded["input_ids"], encoded["attention_mask"], torch.tensor(sorted(stops)), max_new_tokens=10)
    assert got == expected


@pytest.mark.parametrize(("labels", "expected"), [
    ({0: "non-toxic", 1: "toxic"}, 1), ({0: "LABEL_0", 1: "LABEL_1"}, 1), ({0: "hate", 1: "neutral"}, 0),
    ({0: "NOT_HATE", 1: "HATE"}, 1), ({0: "benign", 1: "Toxicity"}, 1), ({"0": "neutral", "1": "offensive"}, 1),
])
def test_toxic_label_detection(labels, expected):
    assert find_toxic_label(labels)[0] == expected


def test_toxic_label_column_is_the_one_scored(tiny_model, tmp_path):
    """Zero weights and a fixed bias: the score must be softmax(bias)[toxic index], wherever that index is."""
    judge_dir = build_tiny_judge(tmp_path / "j", tiny_model, id2label={0: "hate", 1: "neutral"}, bias=[1.0, -0.5])
    judge = HFClassifierJudge(str(judge_dir), device="cpu")
    expected = math.exp(1.0) / (math.exp(1.0) + math.exp(-0.5))
    assert judge.toxic_index == 0
    assert judge.score(["anything at all", ""]) == pytest.approx([expected, expected], abs=1e-6)


def test_cli_error_classifier_without_toxic_label(tiny_model, shared_data, tmp_path):
    judge_dir = build_tiny_judge(tmp_path / "sentiment", tiny_model, id2label={0: "negative", 1: "positive"})
    result = runner.invoke(app, ["eval", "toxicity", "--model", str(tiny_model), "--prompts",
                                 str(shared_data / "toxigen" / "prompts"), "--groups", "women", "--n-per-group", "1",
                                 "--classifier", str(judge_dir), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "no label meaning toxic" in result.output and "0=negative, 1=positive" in result.output
    assert "--toxic-label" in result.output
    assert not (tmp_path / "o" / "toxicity.json").exists()


def test_cli_error_missing_model_path(tiny_judge, shared_data, tmp_path):
    result = runner.invoke(app, ["eval", "toxicity", "--model", str(tmp_path / "no-such-model"), "--prompts",
                                 str(shared_data / "toxigen" / "prompts"), "--classifier", str(tiny_judge),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "no-such-model" in result.output and result.output.startswith("Error:")


def test_cli_error_unknown_group(tiny_model, tiny_judge, shared_data, tmp_path):
    result = runner.invoke(app, ["eval", "toxicity", "--model", str(tiny_model), "--prompts",
                                 str(shared_data / "toxigen" / "prompts"), "--groups", "women,martians",
                                 "--classifier", str(tiny_judge), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "unknown group 'martians'" in result.output


def test_cli_error_wrong_prompt_format(tiny_model, tiny_judge, tmp_path):
    bad = tmp_path / "neutral_women_1k.txt"
    bad.write_text("women are people.\n", encoding="utf-8")
    result = runner.invoke(app, ["eval", "toxicity", "--model", str(tiny_model), "--prompts", str(bad),
                                 "--classifier", str(tiny_judge), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "neutral_women_1k.txt:1: not a ToxiGen prompt line" in result.output


def test_default_classifier_offline_names_the_option(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SpungeError, match="tomh/toxigen_roberta.*--classifier"):
        HFClassifierJudge("tomh/toxigen_roberta", device="cpu")


def test_classifier_that_is_not_a_model_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpungeError, match="not a model directory.*--classifier"):
        HFClassifierJudge(str(tmp_path / "empty"), device="cpu")


# ------------------------------------------------------------------------------------------------ not text


@pytest.mark.parametrize(("text", "expected"), [
    ("", True),
    ("   \n ", True),
    ("$$ 12 :// ... 99 %%", True),  # symbols and digits
    ("a1b2 c3d4 e5 words here", True),  # 2 of 5 tokens word-like: under 60 %
    ("used used used used used", True),  # one word looped
    (", and, and, and, and", True),  # a loop of punctuation and one word
    ("the the cat the cat", True),  # 2 distinct words, repeated
    ("I agree.", False),  # short, no repetition: text
    ("They don't like well-known (Paris) cafés, really.", False),
    ("Él no quiere ir al mercado mañana.", False),  # letters of any script
    ("There were 3 cats and 2 dogs in 1990 at home", False),  # a few numbers in a sentence: 8 of 11 word-like
    ("the cat sat on the mat. the cat sat on the mat.", False),  # a loop of a whole sentence is text
])
def test_non_text_rule_on_hand_made_strings(text, expected):
    from spunge_merge.evaluate.degenerate import is_non_text

    assert is_non_text(text) is expected


def test_toxicity_json_reports_the_non_text_share_of_its_generations(toxicity_run):
    from spunge_merge.evaluate.degenerate import is_non_text

    out, output = toxicity_run
    result = json.loads((out / "toxicity.json").read_text())
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    bad, total = defaultdict(int), defaultdict(int)
    for row in rows:
        flag = is_non_text(row["generation"])
        assert row["non_text"] is flag
        for key in (("all",), ("group", row["group"]), ("label", row["label"])):
            bad[key] += flag
            total[key] += 1
    share = result["non_text"]
    assert (share["overall"]["non_text"], share["overall"]["n"]) == (bad[("all",)], total[("all",)])
    assert share["overall"]["pct"] == pytest.approx(100 * bad[("all",)] / total[("all",)], abs=1e-3)
    for label, summary in share["by_label"].items():
        assert (summary["non_text"], summary["n"]) == (bad[("label", label)], total[("label", label)])
    for group, summary in share["groups"].items():
        assert (summary["non_text"], summary["n"]) == (bad[("group", group)], total[("group", group)])
    assert "60 %" in share["rule"]
    markdown = (out / "toxicity.md").read_text()
    assert f"Not text: {share['overall']['pct']:.1f} %" in markdown and "not text %" in markdown
    assert "Not text:" in output


def test_same_weights_elsewhere_reuse_generations_and_fluency_other_weights_do_not(tiny_model, tiny_judge, shared_data, tmp_path,
                                                                                     monkeypatch):
    """The base model of a second run directory is generated and fluency-scored once per machine (evaluate/memo.py)."""
    import shutil

    from safetensors.torch import load_file, save_file

    import spunge_merge.evaluate.fluency as fluency
    import spunge_merge.evaluate.toxicity as toxicity

    monkeypatch.setenv("SPUNGE_CACHE", str(tmp_path / "cache"))
    generated, scored = [], []
    real_generate, real_nll = toxicity.generate_first_statements, fluency.corpus_nll
    monkeypatch.setattr(toxicity, "generate_first_statements", lambda *a, **k: generated.append(1) or real_generate(*a, **k))
    monkeypatch.setattr(fluency, "corpus_nll", lambda *a, **k: scored.append(1) or real_nll(*a, **k))
    prompts = shared_data / "toxigen" / "prompts"
    kwargs = dict(groups=["mexican", "women"], n_per_group=2, classifier=str(tiny_judge), max_new_tokens=6, device="cpu",
                  progress=False)

    def evaluate(model: Path, out: Path) -> tuple[dict, str, dict]:
        result = evaluate_toxicity(str(model), prompts, out, **kwargs)
        flu = fluency.evaluate_fluency(out / "generations.jsonl", str(tiny_model), out, device="cpu", progress=False)
        return result, (out / "generations.jsonl").read_text(), flu

    first = evaluate(tiny_model, tmp_path / "run-a")
    same = tmp_path / "same-weights"
    shutil.copytree(tiny_model, same)
    second = evaluate(same, tmp_path / "run-b")
    assert (len(generated), len(scored)) == (1, 1)
    assert second[1] == first[1] and second[0]["overall"] == first[0]["overall"]
    assert second[2]["perplexity"] == first[2]["perplexity"] and second[0]["model"]["path"] == str(same.resolve())

    other = tmp_path / "other-weights"
    shutil.copytree(tiny_model, other)
    weights = next(other.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(n for n in tensors if "embed" in n)
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, weights, metadata={"format": "pt"})
    evaluate(other, tmp_path / "run-c")
    assert len(generated) == 2


def test_length_batches_keep_each_batch_within_its_padding_bound():
    from spunge_merge.evaluate.generation import length_batches

    lengths = [48, 100, 10, 95, 89, 50, 100]
    batches = length_batches(lengths, 2, max_padding=0.1)
    assert batches == [[1, 6], [3, 4], [5, 0], [2]]
    assert sorted(i for batch in length_batches(lengths, 64) for i in batch) == list(range(len(lengths)))
    for batch in length_batches(lengths, 64):  # the default bound, 30 %
        assert min(lengths[i] for i in batch) >= 0.7 * max(lengths[i] for i in batch)
    assert len(length_batches(lengths, 64)) == 3
