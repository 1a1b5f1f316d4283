"""The knowledge benchmark (bench/knowledge): its committed fact files keep their contract, and its
lm-eval tasks score the same facts and options exactly as `evaluate_knowledge(form="choice")` does."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from spunge_merge.evaluate.knowledge import CHOICES, add_distractors, answer_in_prompt, evaluate_knowledge

BENCH = Path(__file__).resolve().parents[1] / "bench" / "knowledge"
MODELS = ("smollm2-135m", "gemma3-270m")
COLUMNS = ["domain", "prompt", "answer", "text", "part", "options", "label"]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"knowledge_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_tasks = _load("make_tasks")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- the committed files -------------------------------------------------------------------

@pytest.fixture(params=MODELS)
def committed(request) -> tuple[str, list[dict]]:
    return request.param, _rows(BENCH / f"facts-{request.param}.jsonl")


def test_fact_files_keep_the_contract(committed):
    model, rows = committed
    assert rows and all(list(r) == COLUMNS for r in rows)
    parts = Counter((r["domain"], r["part"]) for r in rows)
    domains = sorted({r["domain"] for r in rows})
    assert len(domains) >= 6, f"{model}: {domains}"
    for domain in domains:
        assert parts[(domain, "heldout")] >= 40 and parts[(domain, "train")] >= 20, (model, domain, parts)
    assert set(parts) == {(d, p) for d in domains for p in ("heldout", "train")}
    assert len({r["prompt"] for r in rows}) == len(rows)
    for r in rows:
        assert not answer_in_prompt(r["prompt"], r["answer"]), r
        assert len(r["options"]) == CHOICES and len({o.strip().lower() for o in r["options"]}) == CHOICES, r
        assert r["options"][r["label"]] == r["answer"], r
        assert r["text"] == f"{r['prompt']} {r['answer']}."
        assert not any(answer_in_prompt(r["prompt"], o) for o in r["options"]), r


def test_fact_file_options_are_the_ones_choice_form_draws(committed):
    """The stored options are what `evaluate_knowledge(form="choice", seed=0)` draws from the file itself."""
    _, rows = committed
    plain = [{"domain": r["domain"], "prompt": r["prompt"], "answer": r["answer"]} for r in rows]
    assert [r["options"] for r in add_distractors(plain, seed=0)] == [r["options"] for r in rows]


def test_task_dirs_are_reproduced_from_the_facts_file(committed, tmp_path):
    """Two generations give the same files; each domain's task data is exactly its heldout facts."""
    model, rows = committed
    first = make_tasks.write_tasks(BENCH / f"facts-{model}.jsonl", tmp_path / "a")
    second = make_tasks.write_tasks(BENCH / f"facts-{model}.jsonl", tmp_path / "b")
    a, b = Path(first["include_path"]), Path(second["include_path"])
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for path in a.iterdir():
        assert path.read_text().replace(str(a), "") == (b / path.name).read_text().replace(str(b), ""), path.name
    assert set(first["tasks"]) == {r["domain"] for r in rows}
    for domain in first["tasks"]:
        heldout = [{k: r[k] for k in ("prompt", "answer", "options", "label")} for r in rows
                   if r["domain"] == domain and r["part"] == "heldout"]
        assert _rows(a / f"{domain}.jsonl") == heldout


# ---- harness versus our log-likelihood ranking ----------------------------------------------

FACTS = [
    ("capitals", "The capital of France is", "Paris"), ("capitals", "The capital of Italy is", "Rome"),
    ("capitals", "The capital of Japan is", "Tokyo"), ("capitals", "The capital of Egypt is", "Cairo"),
    ("capitals", "The capital of Peru is", "Lima"), ("capitals", "The capital of Kenya is", "Nairobi"),
    ("capitals", "The capital of Norway is", "Oslo"),
    ("past_tense", "The past tense of go is", "went"), ("past_tense", "The past tense of see is", "saw"),
    ("past_tense", "The past tense of eat is", "ate"), ("past_tense", "The past tense of buy is", "bought"),
    ("past_tense", "The past tense of swim is", "swam"), ("past_tense", "The past tense of think is", "thought"),
    ("past_tense", "The past tense of fly is", "flew"), ("past_tense", "The past tense of sell is", "sold"),
]


@pytest.fixture
def tiny_facts(tmp_path) -> Path:
    """A facts file in the bench's format; options drawn as the choice form draws them from this file."""
    rows = add_distractors([{"domain": d, "prompt": p, "answer": a} for d, p, a in FACTS], seed=0)
    path = tmp_path / "facts-tiny.jsonl"
    path.write_text("".join(json.dumps({
        "domain": r["domain"], "prompt": r["prompt"], "answer": r["answer"], "text": f"{r['prompt']} {r['answer']}.",
        "part": "heldout", "options": r["options"], "label": r["options"].index(r["answer"])}) + "\n" for r in rows),
        encoding="utf-8")
    return path


def test_harness_tasks_agree_with_choice_form_fact_by_fact(tiny_model, tiny_facts, tmp_path):
    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spunge_merge.evaluate.harness import evaluate_harness, task_manager

    written = make_tasks.write_tasks(tiny_facts, tmp_path / "tasks")
    include = Path(written["include_path"])
    assert written["group"] == "spunge_knowledge_tiny" and set(written["tasks"]) == {"capitals", "past_tense"}

    ours = evaluate_knowledge(str(tiny_model), tiny_facts, tmp_path / "choice", form="choice", seed=0, device="cpu",
                              batch_size=8)
    records = {r["prompt"]: r for r in _rows(tmp_path / "choice" / "knowledge.jsonl")}
    stored = {r["prompt"]: r for r in _rows(tiny_facts)}
    assert all(records[p]["options"] == stored[p]["options"] for p in stored)  # the same options were ranked
    verdicts = [r["correct"] for r in records.values()]
    assert any(verdicts) and not all(verdicts)  # a random model: the check has both outcomes to agree on

    # lm-eval itself, per sample
    lm = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(tiny_model), tokenizer=AutoTokenizer.from_pretrained(tiny_model),
              batch_size=4, device="cpu")
    raw = lm_eval.simple_evaluate(model=lm, tasks=list(written["tasks"].values()), task_manager=task_manager(include),
                                  log_samples=True, bootstrap_iters=0)
    harness_verdicts = {}
    for samples in raw["samples"].values():
        for sample in samples:
            harness_verdicts[sample["doc"]["prompt"]] = bool(sample["acc"])
    assert harness_verdicts == {p: r["correct"] for p, r in records.items()}

    # and through `spunge eval harness`'s function: the same accuracy per domain and for the group
    result = evaluate_harness(str(tiny_model), written["group"], tmp_path / "harness",
                              include_path=include, batch_size=4, device="cpu")
    for domain, task in written["tasks"].items():
        assert result["subtasks"][task]["primary"] == pytest.approx(
            ours["domains"][domain]["accuracy"])
    assert result["tasks"][written["group"]]["primary"] == pytest.approx(ours["overall"]["accuracy"])
    # a second run reads the stored result back (the task directory's files did not change by running)
    assert evaluate_harness(str(tiny_model), written["group"], tmp_path / "harness",
                            include_path=include, batch_size=4, device="cpu")["fingerprint"] == result["fingerprint"]


def test_fixed_options_from_a_column_survive_a_filter(tiny_model, tiny_facts, tmp_path):
    """`options_column`: the stored options are ranked as they are, even when a filter leaves out the facts
    they were drawn from (drawing again from the filtered facts would give other options)."""
    rows = _rows(tiny_facts)
    for i, row in enumerate(rows):
        row["part"] = "heldout" if i % 2 else "train"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    whole = evaluate_knowledge(str(tiny_model), mixed, tmp_path / "whole", form="choice", seed=0, device="cpu", batch_size=8)
    fixed = evaluate_knowledge(str(tiny_model), mixed, tmp_path / "fixed", form="choice", options_column="options",
                               where=["part == heldout"], device="cpu", batch_size=8)
    assert fixed["settings"]["options_from"] == "options" and "options_from" not in whole["settings"]
    heldout = {r["prompt"]: r for r in rows if r["part"] == "heldout"}
    probed = {r["prompt"]: r for r in _rows(tmp_path / "fixed" / "knowledge.jsonl")}
    assert set(probed) == set(heldout)
    assert all(probed[p]["options"] == heldout[p]["options"] for p in heldout)
    verdicts = {r["prompt"]: r["correct"] for r in _rows(tmp_path / "whole" / "knowledge.jsonl")}
    assert {p: r["correct"] for p, r in probed.items()} == {p: verdicts[p] for p in heldout}


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: {**r, "options": r["options"][:3]}, "expected a list of 4 options"),
    (lambda r: {**r, "options": [r["answer"]] * 4}, "are not distinct"),
    (lambda r: {**r, "options": [o for o in r["options"] if o != r["answer"]] + ["elsewhere"]}, "is not one of the options"),
])
def test_bad_fixed_options_are_refused_naming_the_fact(tiny_model, tiny_facts, tmp_path, change, message):
    from spunge_merge.errors import SpungeError

    rows = _rows(tiny_facts)
    rows[3] = change(rows[3])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(SpungeError, match=message) as caught:
        evaluate_knowledge(str(tiny_model), bad, tmp_path / "out", form="choice", options_column="options", device="cpu")
    assert rows[3]["prompt"] in str(caught.value) and not (tmp_path / "out" / "knowledge.json").exists()
    with pytest.raises(SpungeError, match="fixed options are for --form choice"):
        evaluate_knowledge(str(tiny_model), tiny_facts, tmp_path / "out", options_column="options", device="cpu")
