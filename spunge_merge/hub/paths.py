"""No local paths in what is published: this machine's folders replaced by portable names."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from spunge_merge.card import MERGEKIT_RECIPE, PORTABLE_RECIPE

# Published as they are: a vocabulary may hold tokens such as "/usr" that only look like paths.
_VERBATIM = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "special_tokens_map.json",
             "chat_template.jinja", "chat_template.json"}
# spunge's own records: any absolute path in them is this machine's (other text files: the known folders only).
_RECORDS = {"spunge.json", MERGEKIT_RECIPE, PORTABLE_RECIPE}
# An absolute path: not inside a URL or a relative path (nothing path-like right before the slash).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~$<>:/\\-])/(?:[\w.@+=,-]+/)*[\w.@+=,-]+/?")


def path_replacements(model_dir: Path) -> list[tuple[str, str]]:
    """(local absolute path, what the published text says instead), longest first: the model directory,
    the runs' folder (as in the portable recipe), the base model, spunge's cache, the home directory."""
    from spunge_merge.models import cache_root

    record = _read_record(model_dir)
    pairs: dict[str, str] = {str(model_dir.resolve()): "."}
    runs = [Path(run["path"]) for run in record.get("runs") or [] if isinstance(run, dict) and isinstance(run.get("path"), str)
            and Path(run["path"]).is_absolute()]
    if runs:
        folder = Path(os.path.commonpath([str(run.parent) for run in runs]))
        if folder != Path(folder.anchor):
            pairs[str(folder)] = "."
    base = record.get("base_model") if isinstance(record.get("base_model"), dict) else {}
    if isinstance(base.get("path"), str) and Path(base["path"]).is_absolute():
        from spunge_merge.card import _base_model  # the card's naming of the base (Hub id, alias)

        named = _base_model(record)
        pairs[base["path"]] = named["hub_id"] or (base.get("ref") if base.get("ref") and not Path(str(base["ref"])).is_absolute()
                                                  else f"<base model>/{Path(base['path']).name}")
    pairs[str(cache_root())] = "$SPUNGE_CACHE"
    pairs[str(Path.home())] = "~"
    for key in list(pairs):  # the same folders as the resolved paths name them
        with_real = os.path.realpath(key)
        pairs.setdefault(with_real, pairs[key])
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def _read_record(model_dir: Path) -> dict:
    try:
        record = json.loads((model_dir / "spunge.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def scrub_local_paths(text: str, replacements: list[tuple[str, str]], *, every_path: bool = True) -> str:
    """`text` with local absolute paths replaced: the known folders by their portable names, and (with
    `every_path`) any other absolute path whose top folder exists on this machine by `<local>/NAME`."""
    for local, public in replacements:
        if len(local) > 1:
            text = re.sub(re.escape(local) + r"(?![\w.@+=,-])", lambda _m, public=public: public, text)
    if not every_path:
        return text

    def generic(match: re.Match) -> str:
        path = match.group(0)
        top = path.strip("/").split("/")[0]
        if top and Path("/" + top).is_dir():
            return "<local>/" + Path(path.rstrip("/")).name
        return path
    return _ABSOLUTE_PATH.sub(generic, text)
