"""`spunge eval relearn`: the attack reads the evaluated files only, its curve is what a plain fine-tuning loop
written here gives (peft LoRA, a torch optimizer, the same seed and data order, accuracies scored here),
the same seed gives the same figures, and it runs from the CLI and from a pipeline.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spunge_merge.cli import app
from spunge_merge.errors import SpungeError
from spunge_merge.evaluate.relearn import evaluate_relearn

runner = CliRunner()
WORDS = ["fox", "dog", "cat", "sun", "water", "bread", "house", "market"]
DOMAINS = ("alpha", "beta")


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory) -> dict[str, Path]:
    from conftest import build_tiny_llama

    root = tmp_path_factory.mktemp("relearn")
    rows = []
    for d, domain in enumerate(DOMAINS):
        for i in range(12):
            answer = WORDS[(i + d) % len(WORDS)]
            options = [answer, *[w for w in WORDS if w != answer][i % 3:i % 3 + 3]]
            rows.append({"domain": domain, "prompt": f"the {domain} thing number {i} is", "answer": answer,
                         "text": f"the {domain} thing number {i} is {answer}.", "part": "train" if i < 6 else "heldout",
                         "options": options})
    facts = root / "facts.jsonl"
    facts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"model": tiny_model, "base": build_tiny_llama(root / "base", seed=1), "facts": facts, "rows": rows}


def _settings(world, **extra):
    return {"where": ["part == train", "domain == alpha"], "k": 4, "steps": 6, "batch_size": 2, "rank": 4, "alpha": 8.0,
            "lr": 1e-2, "warmup_ratio": 0.25, "base": str(world["base"]), "device": "cpu", "eval_at_steps": [0, 3, 6],
            "measure_settings": {"facts": str(world["facts"]), "where": ["part == heldout"], "form": "choice",
                                 "options_column": "options"}, **extra}


def _tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def _choice_accuracy(lm, tokenizer, rows) -> dict[str, float]:
    """Per domain: the share of facts whose answer has the highest summed log-probability of its options."""
    import torch

    hits: dict[str, list[bool]] = {}
    for row in rows:
        context = tokenizer(row["prompt"])["input_ids"]
        scores = []
        for option in row["options"]:
            continuation = tokenizer(" " + option, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(lm(input_ids=ids).logits[0].float(), -1)
            scores.append(sum(float(logprobs[len(context) - 1 + j, t]) for j, t in enumerate(continuation)))
        answer = scores[row["options"].index(row["answer"])]
        others = [s for o, s in zip(row["options"], scores, strict=True) if o != row["answer"]]
        hits.setdefault(row["domain"], []).append(all(answer > s for s in others))
    return {d: sum(v) / len(v) for d, v in hits.items()}


def _plain_loop(model_dir: Path, base_dir: Path, world, seed: int):
    """The attack written out by hand: (base accuracy, {step: accuracy}, losses)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    heldout = [r for r in world["rows"] if r["part"] == "heldout"]
    train = [r["text"] for r in world["rows"] if r["part"] == "train" and r["domain"] == "alpha"]
    texts = [train[i] for i in sorted(random.Random(f"{seed}/rows").sample(range(len(train)), 4))]
    stream = []
    for epoch in range(3):
        order = list(range(len(texts)))
        random.Random(f"{seed}/epoch/{epoch}").shuffle(order)
        stream += order
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = _choice_accuracy(AutoModelForCausalLM.from_pretrained(base_dir).eval(), tokenizer, heldout)
    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(seed)
    lm = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    params = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=6)  # ceil(0.25 × 6)
    accuracy = {0: _choice_accuracy(lm.eval(), tokenizer, heldout)}
    losses = []
    for step in range(1, 7):
        lm.train()
        batch = [tokenizer(texts[i])["input_ids"] for i in stream[2 * (step - 1):2 * step]]
        width = max(map(len, batch))
        ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
        mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
        loss = lm(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(float(loss))
        if step in (3, 6):
            accuracy[step] = _choice_accuracy(lm.eval(), tokenizer, heldout)
    return base, accuracy, losses


def test_the_curve_is_a_plain_lora_loop_and_the_model_files_stay_as_they_were(world, tmp_path):
    before = {"model": _tree(world["model"]), "base": _tree(world["base"])}
    result = evaluate_relearn(world["model"], world["facts"], tmp_path / "eval", **_settings(world))
    assert {"model": _tree(world["model"]), "base": _tree(world["base"])} == before

    base, accuracy, losses = _plain_loop(world["model"], world["base"], world, seed=0)
    assert result["losses"] == pytest.approx(losses, rel=1e-5)
    assert [p["step"] for p in result["curve"]] == [0, 3, 6]
    for point in result["curve"]:
        assert {d: e["accuracy"] for d, e in point["domains"].items()} == pytest.approx(accuracy[point["step"]], abs=1e-12)
        assert point["loss"] == (None if point["step"] == 0 else pytest.approx(losses[point["step"] - 1], rel=1e-5))
        for domain, entry in point["domains"].items():
            assert len(entry["verdicts"]) == entry["n"] and sum(entry["verdicts"]) == entry["correct"]
            gap = base[domain] - accuracy[0][domain]
            expected = None if gap == 0 else (accuracy[point["step"]][domain] - accuracy[0][domain]) / gap
            assert entry["recovery"] == (None if expected is None else pytest.approx(expected))
    assert result["base"]["domains"] == pytest.approx(base)
    assert result["domains"]["alpha"]["unlearned"] == accuracy[0]["alpha"]
    assert len(result["attack"]["data"]["texts"]) == 4 and result["attack"]["settings"]["steps"] == 6
    written = json.loads((tmp_path / "eval" / "relearn.json").read_text(encoding="utf-8"))
    assert written["fingerprint"] == result["fingerprint"] and written["losses"] == result["losses"]
    assert "| 6 |" in (tmp_path / "eval" / "relearn.md").read_text(encoding="utf-8")
    assert "relearn.json" in json.loads((tmp_path / "eval" / "spunge.json").read_text(encoding="utf-8"))["evaluations"]["relearn"]["files"]


def test_same_seed_same_figures_another_seed_other_texts(world, tmp_path):
    settings = _settings(world, steps=2, eval_at_steps=[0, 2])
    first = evaluate_relearn(world["model"], world["facts"], tmp_path / "a", **settings)
    again = evaluate_relearn(world["model"], world["facts"], tmp_path / "b", **settings)
    other = evaluate_relearn(world["model"], world["facts"], tmp_path / "c", **{**settings, "seed": 1})
    assert first["curve"] == again["curve"] and first["losses"] == again["losses"] and first["fingerprint"] == again["fingerprint"]
    assert other["losses"] != first["losses"] and other["fingerprint"] != first["fingerprint"]
    stored = evaluate_relearn(world["model"], world["facts"], tmp_path / "a", **settings)  # read back, not recomputed
    assert stored == first


def test_full_fine_tuning_with_a_base_result_and_the_preset_schedule(world, tmp_path):
    from spunge_merge.evaluate.knowledge import evaluate_knowledge

    measure = _settings(world)["measure_settings"]
    evaluate_knowledge(world["base"], measure["facts"], tmp_path / "base", where=measure["where"], form="choice",
                       options_column="options", device="cpu")
    result = evaluate_relearn(world["model"], world["facts"], tmp_path / "eval", where=["part == train"], k=5,
                              preset="deeb2024", epochs=1, base_result=str(tmp_path / "base"), measure_settings=measure, device="cpu")
    settings = result["attack"]["settings"]
    assert settings["mode"] == "full" and settings["batch_size"] == 4 and settings["steps"] == math.ceil(5 / 4)
    assert settings["eval_at_steps"] == [0, 1, 2]
    base = json.loads((tmp_path / "base" / "knowledge.json").read_text(encoding="utf-8"))
    assert result["base"]["domains"] == {d: e["accuracy"] for d, e in base["domains"].items()}
    assert set(result["domains"]) == set(DOMAINS)  # cross-subset: every measured domain has its row

    evaluate_knowledge(world["base"], measure["facts"], tmp_path / "base-completion", where=measure["where"], device="cpu")
    with pytest.raises(SpungeError, match="measured with form completion, the measure here uses form choice"):
        evaluate_relearn(world["model"], world["facts"], tmp_path / "mismatch", where=["part == train"], k=5, steps=1,
                         base_result=str(tmp_path / "base-completion"), measure_settings=measure, device="cpu")
    assert not (tmp_path / "mismatch" / "relearn.json").exists()


def test_cli_and_pipeline(world, tmp_path):
    config = tmp_path / "relearn.yaml"
    config.write_text(yaml.safe_dump({"rank": 4, "alpha": 8.0}), encoding="utf-8")
    measure = f"{{facts: {world['facts']}, where: [part == heldout], form: choice, options_column: options}}"
    argv = ["eval", "relearn", "--model", str(world["model"]), "--data", str(world["facts"]), "--config", str(config),
            "--where", "part == train", "--where", "domain in alpha,beta", "--k", "3", "--steps", "2", "--eval-at-steps", "0,1,2",
            "--measure-settings", measure, "--base", str(world["base"]), "--device", "cpu", "--out", str(tmp_path / "cli")]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "cli" / "relearn.json").read_text(encoding="utf-8"))
    assert [p["step"] for p in written["curve"]] == [0, 1, 2] and written["attack"]["data"]["k"] == 3
    assert written["attack"]["data"]["where"] == ["part == train", "domain in alpha,beta"]
    assert written["attack"]["settings"]["rank"] == 4 and written["measure"]["settings"]["form"] == "choice"
    assert set(written["attack"]["data"]["texts"]) <= {r["text"] for r in world["rows"] if r["part"] == "train"}

    from conftest import TINY_CORPUS

    rows = [{"text": f"{t} {i}", "group": DOMAINS[i % 2]} for i, t in enumerate(TINY_CORPUS * 2)]
    (tmp_path / "forget.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "facts.jsonl").write_text(world["facts"].read_text(encoding="utf-8"), encoding="utf-8")
    pipeline = {"name": "tiny-relearn", "model": str(world["model"]), "run_dir": str(tmp_path / "run"),
                "split": {"data": {"path": "forget.jsonl"}, "by": "group"},
                "unlearn": {"method": "tvn", "config": {"max_steps": 2, "batch_size": 4, "lr": 0.05}},
                "baseline": {"enabled": False},
                "eval": {"models": ["spunge"], "device": "cpu",
                         "relearn": {"data": "facts.jsonl", "where": ["part == train"], "k": 2, "steps": 1, "rank": 4,
                                     "base": str(world["model"]),
                                     "measure_settings": {"facts": "facts.jsonl", "where": ["part == heldout"]}}}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False), encoding="utf-8")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    found = sorted((tmp_path / "run").rglob("relearn.json"))
    assert found
    for file in found:
        written = json.loads(file.read_text(encoding="utf-8"))
        assert [p["step"] for p in written["curve"]] == [0, 1]
        assert written["measure"]["settings"]["facts"] == str(tmp_path / "facts.jsonl")


def test_probes_without_training_score_the_rewritten_prompts(world, tmp_path):
    from spunge_merge.evaluate.knowledge import answer_in_prompt

    templates = tmp_path / "paraphrases.yaml"
    templates.write_text(yaml.safe_dump({d: {"pattern": r"^the (?P<d>\w+) thing number (?P<n>\d+) is$",
                                             "template": "thing {n} of the {d} kind is"} for d in DOMAINS}), encoding="utf-8")
    result = evaluate_relearn(world["model"], world["facts"], tmp_path / "eval", **_settings(
        world, steps=1, eval_at_steps=[0, 1], probes=["paraphrase", "fewshot"], paraphrases=str(templates),
        fewshot_domains=["beta"], fewshot_k=2))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world["model"])
    heldout = [r for r in world["rows"] if r["part"] == "heldout"]
    paraphrased = [{**r, "prompt": f"thing {r['prompt'].split()[4]} of the {r['domain']} kind is"} for r in heldout]
    shots = []
    for r in heldout:
        pool = [f for f in heldout if f["domain"] == "beta" and f["prompt"] != r["prompt"]]
        context = "".join(f"{s['prompt']} {s['answer']}.\n" for s in random.Random(f"0/fewshot/{r['prompt']}").sample(pool, 2))
        shots.append({**r, "prompt": context + r["prompt"]})
    shots = [r for r in shots if not answer_in_prompt(r["prompt"], r["answer"])]
    for name, rows in (("paraphrase", paraphrased), ("fewshot", shots)):
        for role, path in (("unlearned", world["model"]), ("base", world["base"])):
            expected = _choice_accuracy(AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer, rows)
            got = {d: e[role] for d, e in result["probes"][name]["domains"].items()}
            assert got == pytest.approx(expected), (name, role)
        step0 = result["domains"]
        for d, entry in result["probes"][name]["domains"].items():
            gap = step0[d]["base"] - step0[d]["unlearned"]
            assert entry["recovery"] == (None if gap == 0 else pytest.approx((entry["unlearned"] - step0[d]["unlearned"]) / gap))
    assert "| probe fewshot |" in (tmp_path / "eval" / "relearn.md").read_text(encoding="utf-8")
