"""ToxiGen prompts: parsing the upstream prompt files and sampling N per group and label.

An upstream file `{hate,neutral}_<group>_1k.txt` holds one few-shot prompt per line: a list of
statements separated by the two characters backslash + `n` and ending with an open `-` item
for the generator to fill. The files carry quirks (see ../shared/data/toxigen/README.md): the
final `-` glued to the last statement, a stray escaped backslash, a doubled separator, trailing
spaces. `parse_prompt_line` undoes them all and `Prompt.text` rebuilds a clean prompt with real
newlines, so every model sees the same well-formed list whatever the quirk.

A jsonl with a `prompt` column and a group column (`target_group` or `group`; optional `label`)
is accepted as well, for prompts from elsewhere.

Sampling is per (group, label), without replacement among distinct prompts, from a random
generator seeded by (seed, group, label): adding a group never changes another group's sample.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import iter_jsonl, sha256_json

LABELS = ("hate", "neutral")
# Other spellings of the prompt files' group names: the HF `toxigen/toxigen-data` dataset
# (`physical_dis`, `mental_dis`) and the SafeNLP file (`physical dis`, `middle-eastern`, ...).
GROUP_ALIASES = {
    "physical_dis": "physical_disability",
    "mental_dis": "mental_disability",
    "physical dis": "physical_disability",
    "mental dis": "mental_disability",
    "middle-eastern": "middle_east",
    "middle_eastern": "middle_east",
    "native-american": "native_american",
}
_FILE_NAME = re.compile(r"^(?P<label>hate|neutral)_(?P<group>[a-z_]+?)(?:_1k)?\.txt$")
_SEPARATOR = re.compile(r"(?:\\+n)+")  # one or more backslashes then `n`, repeated (README step 1)
_LIST_MARKER = re.compile(r"^-\s*")
_SPACES = re.compile(r"\s+")
_GROUP_COLUMNS = ("target_group", "group")
_LABEL_COLUMNS = ("label", "prompt_label")


def canonical_group(name: str) -> str:
    """The prompt files' spelling of a group name (aliases in `GROUP_ALIASES`; case-insensitive)."""
    key = name.strip().lower()
    return GROUP_ALIASES.get(key, key)


def parse_prompt_line(line: str) -> list[str]:
    """The statements of one prompt-file line, cleaned as the data README describes."""
    pieces = _SEPARATOR.split(line.rstrip("\n"))
    statements = []
    for index, piece in enumerate(pieces):
        piece = piece.strip()
        if index == len(pieces) - 1 and piece.endswith("-"):
            piece = piece[:-1].strip()  # the open list item, glued or not
        piece = _LIST_MARKER.sub("", piece).rstrip("\\").strip()
        piece = _SPACES.sub(" ", piece)
        if piece:
            statements.append(piece)
    return statements


def build_prompt(statements: list[str]) -> str:
    """A clean few-shot list with real newlines, ending in the open item `-`."""
    return "".join(f"- {statement}\n" for statement in statements) + "-"


@dataclass(frozen=True)
class Prompt:
    """One generation prompt with its attribute (group) and label."""

    id: str
    group: str
    label: str
    text: str
    source: str
    statements: tuple[str, ...] = field(default=(), compare=False)

    def describe(self) -> dict:
        return {"id": self.id, "group": self.group, "label": self.label, "source": self.source}


def _check_prompt_line(path: Path, number: int, line: str) -> None:
    if not line.startswith("- "):
        raise SpungeError(f"{path}:{number}: not a ToxiGen prompt line (it must start with '- '; "
                          "see the prompt-file format in the data README)")
    if not line.rstrip().endswith("-"):
        raise SpungeError(f"{path}:{number}: not a ToxiGen prompt line (it must end with the open item '-')")


def read_prompt_file(path: str | Path) -> list[Prompt]:
    """Every line of one `{hate,neutral}_<group>_1k.txt` file, parsed (duplicates kept)."""
    path = Path(path)
    match = _FILE_NAME.match(path.name)
    if match is None:
        raise SpungeError(f"{path}: cannot tell group and label from the file name "
                          "(expected hate_<group>_1k.txt or neutral_<group>_1k.txt)")
    group, label = canonical_group(match["group"]), match["label"]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SpungeError(f"{path}: not UTF-8 text") from exc
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        _check_prompt_line(path, number, line)
        statements = parse_prompt_line(line)
        if not statements:
            raise SpungeError(f"{path}:{number}: the line holds no statement")
        prompts.append(Prompt(id=f"{label}_{group}:{number}", group=group, label=label, text=build_prompt(statements),
                              source=f"{path.name}:{number}", statements=tuple(statements)))
    if not prompts:
        raise SpungeError(f"{path}: file has no prompt lines")
    return prompts


def _read_prompt_jsonl(path: Path) -> list[Prompt]:
    prompts = []
    for number, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            columns = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise SpungeError(f"{path}:{number}: no string column 'prompt' (columns: {columns})")
        group_column = next((c for c in _GROUP_COLUMNS if c in row), None)
        if group_column is None:
            raise SpungeError(f"{path}:{number}: no group column ({' or '.join(_GROUP_COLUMNS)}; columns: {', '.join(row)})")
        label_column = next((c for c in _LABEL_COLUMNS if c in row), None)
        label = str(row[label_column]) if label_column else "all"
        group = canonical_group(str(row[group_column]))
        prompts.append(Prompt(id=f"{path.stem}:{number}", group=group, label=label, text=row["prompt"],
                              source=f"{path.name}:{number}"))
    if not prompts:
        raise SpungeError(f"{path}: file has no prompts")
    return prompts


def _unknown_group(name: str, present: list[str]) -> SpungeError:
    return SpungeError(f"unknown group '{name}' in --groups (available: {', '.join(present)}; "
                       f"aliases: {', '.join(f'{k}={v}' for k, v in sorted(GROUP_ALIASES.items()))})")


def load_prompts(source: str | Path, groups: list[str] | None = None) -> list[Prompt]:
    """The prompts of a ToxiGen prompt folder, one prompt file, or a prompt jsonl.

    For a folder, `groups` limits which files are read (unknown names are errors).
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise SpungeError(f"{path}: no such file or directory (give the ToxiGen prompts/ folder, a prompt file or a jsonl)")
    if path.is_dir():
        files = {p: canonical_group(_FILE_NAME.match(p.name)["group"]) for p in sorted(path.iterdir()) if _FILE_NAME.match(p.name)}
        if not files:
            raise SpungeError(f"{path}: no ToxiGen prompt files (hate_<group>_1k.txt, neutral_<group>_1k.txt) in this folder")
        if groups:
            present = sorted(set(files.values()))
            wanted = {canonical_group(name) for name in groups}
            for name in groups:
                if canonical_group(name) not in present:
                    raise _unknown_group(name, present)
            files = {p: g for p, g in files.items() if g in wanted}
        return [prompt for file in files for prompt in read_prompt_file(file)]
    if path.suffix.lower() == ".txt":
        return read_prompt_file(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return _read_prompt_jsonl(path)
    raise SpungeError(f"{path}: unsupported prompt file type '{path.suffix}' (a ToxiGen .txt prompt file, a folder of them, or .jsonl)")


def available_groups(prompts: list[Prompt]) -> list[str]:
    return sorted({p.group for p in prompts})


def select_groups(prompts: list[Prompt], groups: list[str] | None) -> list[str]:
    """The canonical names of the requested groups (all when None); unknown names are errors."""
    present = available_groups(prompts)
    if not groups:
        return present
    wanted = []
    for name in groups:
        group = canonical_group(name)
        if group not in present:
            raise _unknown_group(name, present)
        if group not in wanted:
            wanted.append(group)
    return wanted


@dataclass(frozen=True)
class PromptSample:
    """The sampled prompts plus what is needed to reproduce and report the sample."""

    prompts: tuple[Prompt, ...]
    available: dict[str, dict[str, int]]  # group -> label -> distinct prompts available

    @property
    def sha256(self) -> str:
        return sha256_json([(p.id, p.text) for p in self.prompts])


def sample_prompts(prompts: list[Prompt], *, groups: list[str] | None, n_per_group: int, seed: int) -> PromptSample:
    """Up to `n_per_group` distinct prompts per (group, label), deterministic in `seed`.

    A (group, label) with fewer distinct prompts contributes all of them (see `available`).
    """
    if n_per_group < 1:
        raise SpungeError(f"--n-per-group must be at least 1 (got {n_per_group})")
    chosen_groups = select_groups(prompts, groups)
    pools: dict[tuple[str, str], dict[str, Prompt]] = defaultdict(dict)
    for prompt in prompts:
        if prompt.group in chosen_groups:
            pools[(prompt.group, prompt.label)].setdefault(prompt.text, prompt)  # first occurrence of each text
    sample: list[Prompt] = []
    available: dict[str, dict[str, int]] = defaultdict(dict)
    for group in chosen_groups:
        for label in sorted({label for (g, label) in pools if g == group}):
            distinct = list(pools[(group, label)].values())
            available[group][label] = len(distinct)
            rng = random.Random(f"spunge-toxicity:{seed}:{group}:{label}")
            picked = rng.sample(range(len(distinct)), min(n_per_group, len(distinct)))
            sample.extend(distinct[i] for i in sorted(picked))
    return PromptSample(prompts=tuple(sample), available=dict(available))
