"""Each loss-based method on one ToxiGen group: forget effect against retain perplexity (smollm2-135m).

For every method (and the base model) on the women group of the paper's ToxiGen split
(`toxicity_human >= 3`): one LoRA run with the method's defaults (retain data: WikiText-2 articles
before line 2190 where the method uses it), its model at λ = 1 through the method's registry record,
then the forget-set NLL (mean per token over the 271 forget texts), toxicity on 100 ToxiGen prompts of
the group (50 hate, 50 neutral; the offline judge of bench/judge.py; with the non-text share) and
retain perplexity on 100 WikiText-2 rows from line 2190 on (never trained on).

    OMP_NUM_THREADS=1 .venv/bin/python bench/judge.py                       # the judge, once (~15 min)
    OMP_NUM_THREADS=1 .venv/bin/python bench/methods_toxigen.py --work /tmp/mt --out bench/results/methods_toxigen.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
JUDGE = Path.home() / ".cache" / "spunge" / "judges" / "toxigen-minilm"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prepare(work: Path) -> dict[str, Path]:
    """The forget group, the retain file (articles before line 2190) and the utility file (from 2190 on)."""
    work.mkdir(parents=True, exist_ok=True)
    forget = work / "women.jsonl"
    if not forget.is_file():
        rows = [r for r in _rows(DATA / "toxigen" / "annotated" / "annotated_train.jsonl")
                if r.get("target_group") == "women" and float(r.get("toxicity_human") or 0) >= 3]
        forget.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows), encoding="utf-8")
    wiki = _rows(DATA / "retain" / "wikitext2_raw_test_rows.jsonl")
    texts = [(r["line"], r["text"]) for r in wiki if r.get("kind", "text") == "text" and len(r["text"]) > 50]
    retain, utility = work / "retain.jsonl", work / "utility.jsonl"
    retain.write_text("".join(json.dumps({"text": t}) + "\n" for i, t in texts if i < 2190), encoding="utf-8")
    held_out = [t for i, t in texts if i >= 2190][:100]
    utility.write_text("".join(json.dumps({"text": t}) + "\n" for t in held_out), encoding="utf-8")
    return {"forget": forget, "retain": retain, "utility": utility}


def model_for(method_name: str, base, files: dict[str, Path], work: Path) -> Path:
    """Train one run with the method's defaults and turn it into a model at λ = 1."""
    from spunge_merge.unlearn import registry
    from spunge_merge.unlearn.registry import TrainRequest

    method = registry.get_method(method_name)
    config = method.config_class.model_validate({"eval_samples": 0, "max_length": 64})
    uses_retain = method.retain == "required" or (method.uses_retain is not None and method.uses_retain(config))
    run = work / "runs" / method_name
    method.train(TrainRequest(model=base, forget=[files["forget"]], out=run, config=config,
                              retain=[files["retain"]] if uses_retain else (), progress=False))
    out = work / "models" / method_name
    if not (out / "config.json").is_file():
        method.to_model(base, run, 1.0, out, work / "scratch")
    return out


def evaluate(model_dir: Path, files: dict[str, Path], out: Path, judge: Path) -> dict:
    from spunge_merge.evaluate.perplexity import evaluate_perplexity
    from spunge_merge.evaluate.toxicity import evaluate_toxicity
    from spunge_merge.models import ResolvedModel

    model = ResolvedModel(ref=str(model_dir), path=model_dir)
    tox = evaluate_toxicity(model, DATA / "toxigen" / "prompts", out / "toxicity", groups=["women"], n_per_group=50,
                            classifier=str(judge), device="cpu", progress=False)
    forget = evaluate_perplexity(model, files["forget"], out / "forget", max_length=64, stride=64, device="cpu", progress=False)
    retain = evaluate_perplexity(model, files["utility"], out / "utility", max_length=512, stride=256, device="cpu",
                                 progress=False)
    return {"toxic_pct": tox["overall"]["pct"], "toxic_ci": tox["overall"]["ci95"],
            "non_text_pct": (tox.get("non_text") or {}).get("overall", {}).get("pct"),
            "forget_nll": math.log(forget["perplexity"]), "retain_ppl": retain["perplexity"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/methods-toxigen"))
    parser.add_argument("--methods", default="ga,graddiff,npo,simnpo")
    parser.add_argument("--judge", type=Path, default=JUDGE)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = parser.parse_args()
    from spunge_merge.models import resolve_model

    files = prepare(args.work)
    base = resolve_model("smollm2-135m")
    rows = {}
    for name in ["base", *args.methods.split(",")]:
        started = time.perf_counter()
        model_dir = base.path if name == "base" else model_for(name, base, files, args.work)
        rows[name] = {**evaluate(model_dir, files, args.work / "eval" / name, args.judge),
                      "seconds": round(time.perf_counter() - started)}
        print(name, rows[name], flush=True)
    lines = ["| model | forget NLL (nats/token) | toxic % [95 % CI], n = 100 | not text % | retain PPL | s |",
             "|---|---:|---|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['forget_nll']:.3f} | {r['toxic_pct']:.1f} [{r['toxic_ci'][0]:.1f}–{r['toxic_ci'][1]:.1f}] | "
                     f"{r['non_text_pct'] if r['non_text_pct'] is not None else '-'} | {r['retain_ppl']:.2f} | {r['seconds']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
