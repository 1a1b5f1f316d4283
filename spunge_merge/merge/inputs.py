"""The per-attribute runs a merge takes: what each one is, which base it came from, how to name it.

A run is what `spunge unlearn` wrote for one subset, in one of the output kinds of the method
contract (`unlearn.registry.OutputKind`), recognised by its files and never by the method that made
it: a peft adapter (adapter_config.json + adapter_model.safetensors, whose update is the unlearned
change, e.g. TVN's negated adapter), a tensor delta (`delta.safetensors` with the new values of the
tensors that changed, e.g. RMU's), or a full checkpoint (config.json + safetensors). An unlearn output directory
holding several runs is expanded through its manifest. Runs recorded against another base model
(the base fingerprint in their `spunge.json`) are refused before any work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import read_json
from spunge_merge.models import ResolvedModel
from spunge_merge.provenance import read_provenance
from spunge_merge.runs import RUNS_MANIFEST, list_runs
from spunge_merge.tensorfiles import WEIGHTS_INDEX

PEFT_ADAPTER = "peft-adapter"
TENSOR_DELTA = "tensor-delta"
CHECKPOINT = "full-checkpoint"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DELTA_FILE = "delta.safetensors"
# What a model directory holds besides config and weights (mergekit's copy_tokenizer list, plus vocab.json).
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "added_tokens.json",
              "merges.txt", "vocab.json", "chat_template.jinja", "chat_template.json", "generation_config.json")


@dataclass(frozen=True)
class RunInput:
    """One per-attribute run: its directory, kind, name and recorded provenance (None if absent)."""

    path: Path
    kind: str
    name: str
    record: dict[str, Any] | None
    listing: dict[str, Any] | None = None  # its entry in the unlearn output's manifest

    def describe(self) -> dict[str, Any]:
        """The run as listed in the merged model's `spunge.json` (`runs`)."""
        record = self.record or {}
        listing = self.listing or {}
        attribute = record.get("attribute") if isinstance(record.get("attribute"), dict) else None
        data = record.get("data") if isinstance(record.get("data"), dict) else {}
        rows = data.get("rows")
        if rows is None and isinstance(data.get("forget"), list):  # a run that records its forget corpora (and retain data)
            rows = sum(int(part.get("rows_used", part.get("rows")) or 0) for part in data["forget"] if isinstance(part, dict)) or None
        if rows is None:
            rows = listing.get("rows")
        return {
            "name": self.name,
            "path": str(self.path),
            "kind": self.kind,
            "attribute": attribute,
            "value": (attribute or {}).get("value", listing.get("value")),
            "method": record.get("method"),
            "config": record.get("config"),
            "rows": rows,
            "data": data or None,
            "result": _small_result(record.get("result")),
            "fingerprint": record.get("fingerprint"),
        }


def _small_result(result: Any) -> dict[str, Any] | None:
    """The run's result without long series (per-step losses), which belong to the run itself."""
    if not isinstance(result, dict):
        return None
    return {k: v for k, v in result.items() if not (isinstance(v, list) and len(v) > 16)}


def run_kind(path: Path, record: dict[str, Any] | None = None) -> str:
    """The run's output kind, from the files it holds (whatever method wrote them)."""
    if (path / ADAPTER_CONFIG).is_file():
        return PEFT_ADAPTER
    if (path / DELTA_FILE).is_file():
        return TENSOR_DELTA
    if (path / "config.json").is_file():
        return CHECKPOINT
    raise SpungeError(f"{path}: not a run of `spunge unlearn` (no {ADAPTER_CONFIG}, {DELTA_FILE} or config.json)")


def expand_runs(runs: list[str | Path]) -> list[RunInput]:
    """Run directories in the order given, each unlearn output expanded through its manifest."""
    if not runs:
        raise SpungeError("no runs to merge: give run directories or `spunge unlearn` output directories")
    found: list[RunInput] = []
    for given in runs:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise SpungeError(f"run {path}: no such directory")
        listing = {}
        if (path / RUNS_MANIFEST).is_file():
            manifest = read_json(path / RUNS_MANIFEST)
            listing = {entry.get("path"): entry for entry in manifest.get("runs", []) if isinstance(entry, dict)}
        for run_dir in list_runs(path):
            if not run_dir.is_dir():
                raise SpungeError(f"{path / RUNS_MANIFEST} lists run {run_dir.name}, which is missing")
            record = read_provenance(run_dir)
            entry = listing.get(run_dir.name)
            name = (entry or {}).get("name") or run_dir.name
            found.append(RunInput(path=run_dir.resolve(), kind=run_kind(run_dir, record), name=str(name),
                                  record=record, listing=entry))
    seen: dict[Path, str] = {}
    for run in found:
        if run.path in seen:
            raise SpungeError(f"run {run.path} is given twice")
        seen[run.path] = run.name
    names = [run.name for run in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:  # names label the runs in the recipe and the model card; keep them distinct
        found = [RunInput(r.path, r.kind, f"{r.path.parent.name}/{r.name}" if r.name in duplicates else r.name, r.record, r.listing)
                 for r in found]
    return found


def check_same_base(run: RunInput, base: ResolvedModel) -> None:
    """Refuse a run whose `spunge.json` names another base model (by its weights' fingerprint)."""
    recorded = (run.record or {}).get("base_model")
    if not isinstance(recorded, dict) or not recorded.get("fingerprint"):
        return  # no record (a plain peft adapter or checkpoint): tensor names and shapes are checked instead
    if recorded["fingerprint"] != base.fingerprint:
        raise SpungeError(
            f"run {run.path} was unlearned from base model '{recorded.get('ref')}' ({recorded.get('path')}), "
            f"not from '{base.ref}' ({base.path}): its weights differ (fingerprint {str(recorded['fingerprint'])[:12]} "
            f"vs {base.fingerprint[:12]}); merge runs of one base, or pass that base with --base"
        )


def check_architecture(model_dir: Path, base: ResolvedModel) -> None:
    """A full checkpoint must be the base's architecture with the base's shapes."""
    mine, theirs = _config(model_dir), _config(base.path)
    for key in ("architectures", "model_type", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
        if mine.get(key) != theirs.get(key):
            raise SpungeError(f"{model_dir}: {key} is {mine.get(key)!r}, the base model {base.ref} has {theirs.get(key)!r}; "
                              "only models of the same architecture and size can be merged")


def _config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SpungeError(f"{path}: file not found") from exc
    except ValueError as exc:
        raise SpungeError(f"{path}: not valid JSON ({exc})") from exc


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and ((path / WEIGHTS_INDEX).is_file() or any(path.glob("*.safetensors")))
