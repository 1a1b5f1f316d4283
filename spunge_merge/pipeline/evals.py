"""The evaluation of one model, as the pipeline runs it: every chosen evaluation into one folder.

The `eval` section of a pipeline file passes its settings straight to the eval stage's public
functions (`evaluate_toxicity`, `evaluate_perplexity`, `evaluate_fluency`, `evaluate_harness`,
`compare_results`) and to `evaluate_knowledge`; the pipeline supplies the model, the output
folder, the device and `force`. `accepted_keywords` lists what each section may set, read
from the function's own signature so the two cannot drift apart.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from spunge_merge.pipeline.jobs import resolved_model

FUNCTIONS = {
    "knowledge": "spunge_merge.evaluate.knowledge:evaluate_knowledge",
    "perplexity": "spunge_merge.evaluate.perplexity:evaluate_perplexity",
    "toxicity": "spunge_merge.evaluate.toxicity:evaluate_toxicity",
    "fluency": "spunge_merge.evaluate.fluency:evaluate_fluency",
    "harness": "spunge_merge.evaluate.harness:evaluate_harness",
    "compare": "spunge_merge.evaluate.compare:compare_results",
}
ORDER = ("knowledge", "perplexity", "toxicity", "fluency", "harness")  # fluency reads toxicity's generations
# Arguments the pipeline itself supplies (a pipeline file may not set them).
SUPPLIED = {
    "knowledge": {"model", "out", "force"},
    "perplexity": {"model", "out", "force", "progress"},
    "toxicity": {"model", "out", "force", "progress"},
    "fluency": {"generations_file", "out", "model", "force", "progress"},
    "harness": {"model", "out", "force"},
    "compare": {"results", "out", "force"},
}
# Arguments that name local files or directories: made absolute against the pipeline file's folder.
PATH_ARGUMENTS = {"toxicity": ("prompts", "classifier"), "perplexity": ("data",), "fluency": ("judge",),
                  "harness": ("include_path",), "knowledge": ("facts",)}


def function_for(section: str):
    module, _, name = FUNCTIONS[section].partition(":")
    return getattr(importlib.import_module(module), name)


def _parameters(section: str) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(function_for(section)).parameters)
    except ImportError:
        return None


def accepted_keywords(section: str) -> set[str] | None:
    """Keys a pipeline file may give in `eval.<section>` (None when the function is not importable here)."""
    parameters = _parameters(section)
    return None if parameters is None else set(parameters) - SUPPLIED[section]


def required_keywords(section: str) -> set[str]:
    """Keys without a default that the pipeline does not supply (e.g. toxicity's `prompts`)."""
    parameters = _parameters(section) or {}
    return {name for name, p in parameters.items() if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - SUPPLIED[section]


def evaluate_model(*, model_ref: str, model_path: str, out: str, evaluations: dict[str, dict[str, Any]],
                   force: dict[str, bool]) -> dict[str, Any]:
    """Run the chosen evaluations of one model into `out` (a job: see `jobs.run_job`)."""
    model = resolved_model(model_ref, model_path)
    out_dir = Path(out)
    summary: dict[str, Any] = {}
    for section in ORDER:
        if section not in evaluations:
            continue
        kwargs = dict(evaluations[section])
        function = function_for(section)
        if "progress" in inspect.signature(function).parameters:
            kwargs["progress"] = False
        if section == "fluency":
            result = function(out_dir / "generations.jsonl", out=out_dir, model=model, force=force.get(section, False), **kwargs)
        else:
            result = function(model, out=out_dir, force=force.get(section, False), **kwargs)
        summary[section] = headline(section, result)
    return {"summary": summary}


def headline(section: str, result: dict[str, Any]) -> Any:
    """The one figure of a result that the progress view and the report show."""
    if section == "knowledge":
        return {domain: entry["accuracy"] for domain, entry in result["domains"].items()}
    if section == "toxicity":
        return result["overall"]["pct"]
    if section in ("perplexity", "fluency"):
        return result.get("perplexity")
    if section == "harness":
        return result.get("utility")
    return None
