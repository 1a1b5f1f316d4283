"""mia, privleak, extraction and truth_ratio against computations written here: a plain loop over the tiny
model's token log-probabilities (Python math over each position's vocabulary), the AUC from a sorted list,
greedy decoding one argmax at a time, and a memoised recursive LCS."""

from __future__ import annotations

import json
import math
import zlib
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CORPUS, build_tiny_llama
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.evaluate import registry, stats
from spunge_merge.evaluate.extraction import extraction_strength, rouge_l

runner = CliRunner()
MEMBERS = TINY_CORPUS[:4] + ["the lazy dog sleeps in the sun all day", "berlin and paris are cities in europe"]
NONMEMBERS = TINY_CORPUS[4:] + ["seven people live in the house by the market", "the fox and the cats walked east"]
K = 0.4


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mia")
    return (write_jsonl(root / "members.jsonl", [{"text": t} for t in MEMBERS]),
            write_jsonl(root / "nonmembers.jsonl", [{"text": t} for t in NONMEMBERS]))


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(model_dir)


def position_stats(model, ids: list[int]) -> list[tuple[float, float, float, int]]:
    """Per predicted token t ≥ 1: (log p(x_t), μ_t, σ_t, argmax) from the vocabulary at t − 1, in plain Python."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double().tolist()
    out = []
    for t in range(1, len(ids)):
        row = logits[t - 1]
        top = max(row)
        log_norm = top + math.log(sum(math.exp(v - top) for v in row))
        logp = [v - log_norm for v in row]
        mu = sum(math.exp(lp) * lp for lp in logp)
        sigma = math.sqrt(sum(math.exp(lp) * (lp - mu) ** 2 for lp in logp))
        out.append((logp[ids[t]], mu, sigma, max(range(len(row)), key=row.__getitem__)))
    return out


def hand_scores(model, tokenizer, text: str) -> dict[str, float]:
    ids = tokenizer(text)["input_ids"]
    per = position_stats(model, ids)
    logps = [p[0] for p in per]
    normalised = [(lp - mu) / sigma for lp, mu, sigma, _ in per]
    count = max(1, int(len(per) * K))
    mean_nll = -sum(logps) / len(logps)
    return {"loss": -mean_nll, "zlib": -mean_nll / len(zlib.compress(text.encode())),
            "min_k": sum(sorted(logps)[:count]) / count, "min_k_plus_plus": sum(sorted(normalised)[:count]) / count}


def sorted_list_auc(members: list[float], nonmembers: list[float]) -> float:
    """Walk the scores from lowest to highest: each member counts the non-members strictly below it, ties half."""
    labelled = sorted([(s, 1) for s in members] + [(s, 0) for s in nonmembers])
    wins, below, i = 0.0, 0, 0
    while i < len(labelled):
        j = i
        while j < len(labelled) and labelled[j][0] == labelled[i][0]:
            j += 1
        group = [label for _, label in labelled[i:j]]
        ties_neg = group.count(0)
        wins += group.count(1) * (below + 0.5 * ties_neg)
        below += ties_neg
        i = j
    return wins / (len(members) * len(nonmembers))


def test_auc_matches_the_sorted_list_walk_with_ties():
    generator = torch.Generator().manual_seed(1)
    members = torch.randint(0, 6, (23,), generator=generator).tolist()
    nonmembers = torch.randint(0, 5, (17,), generator=generator).tolist()
    assert stats.auc(members, nonmembers) == pytest.approx(sorted_list_auc(members, nonmembers), abs=1e-12)
    assert stats.auc([1.0, 2.0], [3.0, 4.0]) == 0.0 and stats.auc([3.0], [1.0, 2.0]) == 1.0
    boot = stats.auc_bootstrap(members, nonmembers, n=300, seed=4)
    assert boot == stats.auc_bootstrap(members, nonmembers, n=300, seed=4)
    assert boot["low"] <= boot["auc"] <= boot["high"] and boot["high"] - boot["low"] > 0


def test_mia_from_the_cli_matches_a_plain_loop(tiny_model, texts, tmp_path):
    members, nonmembers = texts
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "mia", "--model", str(tiny_model), "--members", str(members), "--nonmembers",
                                 str(nonmembers), "--out", str(out), "--device", "cpu", "--resamples", "200"])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "mia.json").read_text())
    assert written["kind"] == "mia"
    model, tokenizer = load(tiny_model)
    mine = [hand_scores(model, tokenizer, t) for t in MEMBERS]
    theirs = [hand_scores(model, tokenizer, t) for t in NONMEMBERS]
    rows = [json.loads(line) for line in (out / "mia.jsonl").read_text().splitlines()]
    for row, expected in zip(rows, mine + theirs, strict=True):
        for attack, value in expected.items():
            assert row[attack] == pytest.approx(value, rel=1e-4, abs=1e-6), attack
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        expected = sorted_list_auc([s[attack] for s in mine], [s[attack] for s in theirs])
        entry = written["attacks"][attack]
        assert entry["auc"] == pytest.approx(expected, abs=1e-9)
        assert entry["low"] <= entry["auc"] <= entry["high"]


def test_mia_refuses_a_text_on_both_sides(tiny_model, texts, tmp_path):
    members, _ = texts
    result = runner.invoke(app, ["eval", "mia", "--model", str(tiny_model), "--members", str(members), "--nonmembers",
                                 str(members), "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert result.exit_code == 2 and "also in" in result.output and not (tmp_path / "eval" / "mia.json").exists()


def test_privleak_is_relative_to_the_reference_auc(tiny_model, texts, tmp_path):
    members, nonmembers = texts
    reference = build_tiny_llama(tmp_path / "reference", seed=7)
    out = tmp_path / "eval"
    result = registry.run_evaluation(registry.get("privleak"), str(tiny_model), out,
                                     {"members": str(members), "nonmembers": str(nonmembers), "reference": str(reference),
                                      "device": "cpu", "resamples": 200, "attack": "min_k"})
    aucs = []
    for model_dir in (tiny_model, reference):
        model, tokenizer = load(model_dir)
        aucs.append(sorted_list_auc([hand_scores(model, tokenizer, t)["min_k"] for t in MEMBERS],
                                    [hand_scores(model, tokenizer, t)["min_k"] for t in NONMEMBERS]))
    assert result["auc"] == pytest.approx(aucs[0], abs=1e-9) and result["reference_auc"] == pytest.approx(aucs[1], abs=1e-9)
    assert result["privleak"] == pytest.approx((aucs[0] - aucs[1]) / aucs[1] * 100, abs=1e-6)
    assert result["ci95"][0] <= result["privleak"] <= result["ci95"][1]
    assert json.loads((out / "privleak.json").read_text())["privleak"] == result["privleak"]


@cache
def _lcs(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    if not a or not b:
        return 0
    if a[0] == b[0]:
        return 1 + _lcs(a[1:], b[1:])
    return max(_lcs(a[1:], b), _lcs(a, b[1:]))


def test_rouge_l_and_extraction_strength_by_their_definitions():
    truth, generated = "The cat sat on the mat, quietly!", "a cat on a mat sat quietly"
    common = _lcs(tuple("the cat sat on the mat quietly".split()), tuple("a cat on a mat sat quietly".split()))
    got = rouge_l(truth, generated)
    assert got["recall"] == pytest.approx(common / 7) and got["precision"] == pytest.approx(common / 7)
    assert rouge_l("same words here", "same words here")["f1"] == 1.0 and rouge_l("a b", "c d")["f1"] == 0.0
    assert extraction_strength([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert extraction_strength([9, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(0.75)
    assert extraction_strength([1, 2, 3, 9], [1, 2, 3, 4]) == 0.0


def test_extraction_matches_one_argmax_at_a_time(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "forget.jsonl", [{"text": t} for t in TINY_CORPUS])
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "extraction", "--model", str(tiny_model), "--data", str(data), "--out", str(out),
                                 "--prefix-tokens", "3", "--continuation-tokens", "6", "--device", "cpu", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    written = json.loads((out / "extraction.json").read_text())
    model, tokenizer = load(tiny_model)
    recalls, strengths = [], []
    for text in TINY_CORPUS:
        ids = tokenizer(text)["input_ids"][:9]
        prefix, truth = ids[:3], ids[3:]
        generated = list(prefix)
        for _ in truth:
            with torch.no_grad():
                generated.append(int(model(input_ids=torch.tensor([generated])).logits[0, -1].argmax()))
        forced = [p[3] for p in position_stats(model, ids)][2:]  # predictions of tokens 3..
        k = min(k for k in range(len(truth) + 1) if forced[k:] == truth[k:])
        strengths.append(1 - k / len(truth))
        truth_words = tokenizer.decode(truth, skip_special_tokens=True).lower().split()
        new_words = tokenizer.decode(generated[3:], skip_special_tokens=True).lower().split()
        recalls.append(_lcs(tuple(truth_words), tuple(new_words)) / len(truth_words))
    assert written["texts"] == len(TINY_CORPUS)
    assert written["extraction_strength"]["mean"] == pytest.approx(sum(strengths) / len(strengths), abs=1e-12)
    assert written["rouge_l_recall"]["mean"] == pytest.approx(sum(recalls) / len(recalls), abs=1e-12)


def answer_logprob(model, tokenizer, question: str, answer: str) -> tuple[float, int]:
    context = tokenizer(question)["input_ids"]
    reply = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    per = position_stats(model, context + reply)
    return sum(p[0] for p in per[len(context) - 1:]), len(reply)


@pytest.mark.parametrize("form", ["tofu", "options"])
def test_truth_ratio_matches_the_normalised_probabilities(form, tiny_model, tmp_path):
    facts = [("where is paris", "in france", ["in germany", "in the east"]),
             ("what do dogs do", "they live in the house", ["they jump over the fox", "they buy bread", "they boil water"]),
             ("when does the sun set", "in the west", ["at sea level"])]
    if form == "tofu":
        rows = [{"question": q, "paraphrased_answer": a, "perturbed_answer": p} for q, a, p in facts]
        settings = {}
    else:
        facts = [(q, a, p[:3] + ["x"] * (3 - len(p[:3]))) for q, a, p in facts][:2]
        rows = [{"prompt": q, "answer": a, "options": [p[0], a, *p[1:]]} for q, a, p in facts]
        settings = {"question_column": "prompt", "answer_column": "answer", "options_column": "options"}
    data = write_jsonl(tmp_path / "facts.jsonl", rows)
    result = registry.run_evaluation(registry.get("truth_ratio"), str(tiny_model), tmp_path / "eval",
                                     {"data": str(data), "device": "cpu", "resamples": 100, **settings})
    model, tokenizer = load(tiny_model)
    ratios = []
    for question, answer, perturbed in facts:
        total, count = answer_logprob(model, tokenizer, question, answer)
        wrong = [answer_logprob(model, tokenizer, question, p) for p in perturbed]
        wrong_prob = math.exp(sum(t / c for t, c in wrong) / len(wrong))  # geometric mean of per-token probabilities
        ratios.append(wrong_prob / math.exp(total / count))
    assert result["facts"] == len(facts)
    assert result["mean_ratio"]["mean"] == pytest.approx(sum(ratios) / len(ratios), rel=1e-5)
    assert result["forget"]["mean"] == pytest.approx(sum(min(r, 1 / r) for r in ratios) / len(ratios), rel=1e-5)
    assert result["retain"]["mean"] == pytest.approx(sum(max(0, 1 - r) for r in ratios) / len(ratios), rel=1e-5, abs=1e-9)


def ks_by_counting(a: list[float], b: list[float]) -> tuple[float, float]:
    """The two-sample KS statistic d (largest gap between the empirical CDFs, values distinct) and its exact two-sided
    p-value P(D >= d) = 1 - (monotone lattice paths (0,0) -> (n,m) keeping |i/n - j/m| < d) / C(n+m, n)."""
    from fractions import Fraction

    n, m = len(a), len(b)
    i = j = 0
    d = Fraction(0)
    for _, side in sorted([(v, 0) for v in a] + [(v, 1) for v in b]):
        i, j = (i + 1, j) if side == 0 else (i, j + 1)
        d = max(d, abs(Fraction(i, n) - Fraction(j, m)))
    paths = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if abs(Fraction(i, n) - Fraction(j, m)) < d:
                paths[i][j] = 1 if i == j == 0 else (paths[i - 1][j] if i else 0) + (paths[i][j - 1] if j else 0)
    return float(d), 1 - paths[n][m] / math.comb(n + m, n)


def test_forget_quality_is_the_ks_test_against_the_reference_ratios(tiny_model, tmp_path):
    """TOFU's forget quality: a retain model's truth_ratio result as the reference; the p-value and the statistic are
    checked against an exact lattice-path count over the two models' per-fact R (read from their rows files)."""
    pytest.importorskip("scipy")
    from spunge_merge.errors import SpungeError

    words = ["the sea", "the market", "bread", "cats", "the east", "the west", "france", "the fox"]
    rows = [{"question": f"what did author {i} write about", "paraphrased_answer": f"author {i} wrote about {words[i]}",
             "perturbed_answer": [f"author {i} wrote about {w}" for w in words if w != words[i]][:3]} for i in range(8)]
    data = write_jsonl(tmp_path / "facts.jsonl", rows)
    truth = registry.get("truth_ratio")
    retain = build_tiny_llama(tmp_path / "retain-model", seed=7)
    settings = {"data": str(data), "device": "cpu", "resamples": 20}
    registry.run_evaluation(truth, str(retain), tmp_path / "retain", settings)
    result = registry.run_evaluation(truth, str(tiny_model), tmp_path / "unlearned", {**settings, "reference": str(tmp_path / "retain")})

    def ratios(folder: Path) -> list[float]:
        return [json.loads(line)["truth_ratio"] for line in (folder / "truth_ratio.jsonl").read_text().splitlines()]

    ours, theirs = ratios(tmp_path / "unlearned"), ratios(tmp_path / "retain")
    statistic, p_value = ks_by_counting(ours, theirs)
    quality = result["forget_quality"]
    assert 0 < statistic and quality["ks_statistic"] == pytest.approx(statistic) and quality["p_value"] == pytest.approx(p_value)
    assert quality["reference"]["path"] == str(tmp_path / "retain") and quality["facts"] == 8
    assert "Forget quality (KS-test p-value" in (tmp_path / "unlearned" / "truth_ratio.md").read_text()
    itself = registry.run_evaluation(truth, str(retain), tmp_path / "itself", {**settings, "reference": str(tmp_path / "retain")})
    assert (itself["forget_quality"]["ks_statistic"], itself["forget_quality"]["p_value"]) == (0.0, 1.0)
    with pytest.raises(SpungeError, match="scored other facts than"):  # the first 5 facts only: not the same facts
        registry.run_evaluation(truth, str(tiny_model), tmp_path / "fewer",
                                {**settings, "max_facts": 5, "reference": str(tmp_path / "retain")})
    with pytest.raises(SpungeError, match="not a truth_ratio result"):
        registry.run_evaluation(truth, str(tiny_model), tmp_path / "none", {**settings, "reference": str(tmp_path)})


def test_the_four_run_in_a_pipeline(tiny_model, tmp_path):
    rows = [{"text": f"{t} {i}", "group": ("alpha", "beta")[i % 2]} for i, t in enumerate(TINY_CORPUS * 2)]
    write_jsonl(tmp_path / "forget.jsonl", rows)
    # one table holding both sides (MUSE's layout keeps them in splits of one dataset), given as filtered data sources
    write_jsonl(tmp_path / "muse.jsonl",
                [{"text": t, "part": "forget"} for t in MEMBERS] + [{"text": t, "part": "holdout"} for t in NONMEMBERS])
    members, nonmembers = {"path": "muse.jsonl", "where": "part == forget"}, {"path": "muse.jsonl", "where": "part == holdout"}
    write_jsonl(tmp_path / "facts.jsonl", [{"question": "where is paris", "paraphrased_answer": "in france",
                                            "perturbed_answer": ["in germany", "in the east"]}])
    pipeline = {
        "name": "tiny-mia", "model": str(tiny_model), "run_dir": str(tmp_path / "run"),
        "split": {"data": {"path": "forget.jsonl"}, "by": "group"},
        "unlearn": {"method": "ga", "config": {"batch_size": 4, "max_length": 32, "lr": 1e-3, "eval_samples": 0, "max_steps": 1,
                                               "target_modules": "q_proj,v_proj"}},
        "merge": {"method": "ties", "density": 1.0, "lambda": [1.0]},
        "baseline": {"enabled": False},
        "eval": {"models": ["base", "spunge"], "device": "cpu",
                 "mia": {"members": members, "nonmembers": nonmembers, "resamples": 50},
                 "privleak": {"members": members, "nonmembers": nonmembers, "reference": str(tiny_model), "resamples": 50},
                 "extraction": {"data": "forget.jsonl", "prefix_tokens": 3, "continuation_tokens": 4, "resamples": 50},
                 "truth_ratio": {"data": "facts.jsonl", "resamples": 50}},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    result = runner.invoke(app, ["run", str(tmp_path / "pipeline.yaml")])
    assert result.exit_code == 0, result.output
    base = json.loads((tmp_path / "run" / "eval" / "base" / "privleak.json").read_text())
    assert base["privleak"] == 0.0  # the base against itself
    for name in ("mia", "extraction", "truth_ratio"):
        assert json.loads((tmp_path / "run" / "eval" / "spunge" / f"{name}.json").read_text())["kind"] == name
    mia = json.loads((tmp_path / "run" / "eval" / "base" / "mia.json").read_text())
    assert (mia["members"]["texts"], mia["nonmembers"]["texts"]) == (len(MEMBERS), len(NONMEMBERS))
    # the model card shows each measurement's summary, figures as in its JSON
    from spunge_merge.card import build_model_card

    spunge = tmp_path / "run" / "eval" / "spunge"
    card = str(build_model_card(tmp_path / "run" / "merge" / "spunge", extra_eval={"eval/spunge": spunge}))
    mia = json.loads((spunge / "mia.json").read_text())["attacks"]["min_k_plus_plus"]
    assert f"| Min-K %++ | {mia['auc']:.3f} | [{mia['low']:.3f}, {mia['high']:.3f}] |" in card
    for title in ("# Privacy leakage", "# Verbatim extraction", "# Truth ratio"):
        assert title.lstrip("# ") in card
