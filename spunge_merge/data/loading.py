"""Reading tabular text data with `datasets`: files, saved datasets, Hub ids.

Also the readers later stages use to get the texts of one subset (`read_texts`) and the
subsets of a split directory (`load_subsets`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import read_json, sha256_file, sha256_texts

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
SPLIT_MANIFEST = "manifest.json"
_WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENOTDIR)


def _check_utf8(path: Path) -> None:
    """Name the file and byte offset of bad encoding, instead of a deep parser traceback."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpungeError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from exc


def _root_reason(exc: BaseException) -> str:
    """The innermost cause's message: datasets wraps parser errors in generic ones."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _raise_write_error(exc: BaseException, source: Path) -> None:
    """A failure to write (datasets' cache: permissions, full disk) names what was written, not the input file."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS and Path(str(exc.filename or "")) != source:
            where = exc.filename or "the datasets cache (HF_DATASETS_CACHE)"
            raise SpungeError(f"cannot write {where} while reading {source}: {exc.strerror or exc}") from exc
        exc = exc.__cause__ or exc.__context__


def _locate_json_error(path: Path) -> None:
    """Name the first bad line of a JSON Lines file (datasets reports a byte position of its own chunk)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            first = next((line for line in text.splitlines() if line.strip()), "")
            try:
                json.loads(first)
            except json.JSONDecodeError:  # one JSON document, broken
                raise SpungeError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
        else:
            if not isinstance(document, (list, dict)):
                raise SpungeError(f"{path}: expected a list of JSON objects or JSON Lines, got a {type(document).__name__}")
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpungeError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
        if not isinstance(value, dict):
            raise SpungeError(f"{path}:{number}: expected one JSON object per line, got a {type(value).__name__}")


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs parser failures with a traceback before raising; we report them ourselves."""
    logger = logging.getLogger("datasets")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _no_rows(path: Path, builder: str) -> str:
    """What a file that parses but holds no rows holds instead (datasets says `Instruction "train" corresponds to no data!`)."""
    if builder == "csv":
        header = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), "")
        return f"{path}: holds only a header line ({header.strip()}), no rows"
    return f"{path}: holds no rows (an empty list, or only empty objects)"


def _check_parquet_rows(path: Path) -> None:
    """A parquet file with its columns but 0 rows, named before datasets fails on it (`BatchSize must be greater than 0`)."""
    try:
        import pyarrow.parquet as pq

        metadata = pq.read_metadata(str(path))
    except Exception:  # not parquet at all: datasets' own error names it below
        return
    if metadata.num_rows == 0:
        columns = ", ".join(metadata.schema.names)
        raise SpungeError(f"{path}: holds 0 rows (columns: {columns})")


def load_table(source: str | Path, *, split: str = "train"):
    """A `datasets.Dataset` from a data file, a `save_to_disk` directory, or a Hub dataset id."""
    import datasets

    datasets.disable_progress_bars()
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as exc:
                raise SpungeError(f"{path}: cannot read saved dataset ({exc})") from exc
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise SpungeError(f"{path}: no split '{split}' (has: {', '.join(loaded)})")
                loaded = loaded[split]
            return loaded
        raise SpungeError(f"{path} is a directory but not a saved `datasets` dataset")
    if path.is_file():
        builder = FILE_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise SpungeError(f"{path}: unsupported file type '{path.suffix}' (use {', '.join(FILE_FORMATS)})")
        if path.stat().st_size == 0:
            raise SpungeError(f"{path}: file is empty")
        if builder != "parquet":
            _check_utf8(path)
            if not path.read_bytes().strip():
                raise SpungeError(f"{path}: holds only blank lines, no rows")
        else:
            _check_parquet_rows(path)
        try:
            with _quiet_datasets():
                return datasets.load_dataset(builder, data_files=str(path), split="train", keep_in_memory=True)
        except Exception as exc:
            _raise_write_error(exc, path)
            if builder == "json":
                _locate_json_error(path)
            if "corresponds to no data" in _root_reason(exc):
                raise SpungeError(_no_rows(path, builder)) from exc
            raise SpungeError(f"{path}: cannot parse as {builder} ({_root_reason(exc)})") from exc
    if names_local_path(text):
        raise SpungeError(f"{text}: no such file or directory")
    try:
        with _quiet_datasets():
            return datasets.load_dataset(text, split=split)
    except Exception as exc:
        raise SpungeError(
            f"'{text}' is not a local file and could not be loaded from the Hugging Face Hub ({_root_reason(exc)})"
        ) from exc


def names_local_path(text: str) -> bool:
    """Whether `text` can only mean a local path (not a Hub dataset id), so that its absence is an error."""
    looks_like_path = text.startswith((".", "/", "~")) or Path(text).suffix.lower() in FILE_FORMATS
    return looks_like_path or not re.match(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$", text)


def source_sha256(source: str | Path) -> str | None:
    """sha256 of a local data file (None for directories and Hub ids)."""
    path = Path(str(source)).expanduser()
    return sha256_file(path) if path.is_file() else None


@dataclass(frozen=True)
class Subset:
    """The texts of one attribute value (or of one plain data file)."""

    name: str  # safe file-system name, also the run directory name
    value: str | None  # attribute value, None for a plain file
    column: str | None  # attribute column, None for a plain file
    source: Path
    texts: tuple[str, ...]
    where: tuple[str, ...] = ()  # row filters applied to `source` (`--retain-where`), recorded with the run

    @property
    def sha256(self) -> str:
        return sha256_texts(list(self.texts))

    def describe(self) -> dict:
        return {"name": self.name, "value": self.value, "column": self.column, "path": str(self.source.resolve()),
                "rows": len(self.texts), "sha256": self.sha256, **({"where": list(self.where)} if self.where else {})}


def read_texts(source: str | Path, text_column: str = "text", *, min_chars: int = 1) -> list[str]:
    """The non-empty strings of `text_column`; a plain `.txt` file gives one text per line."""
    path = Path(source)
    table = load_table(path)
    column = "text" if path.suffix.lower() == ".txt" else text_column
    if column not in table.column_names:
        raise SpungeError(f"{path}: no column '{column}' (columns: {', '.join(table.column_names)})")
    texts = [t for t in table[column] if isinstance(t, str) and len(t.strip()) >= min_chars]
    if not texts:
        raise SpungeError(f"{path}: column '{column}' has no non-empty text")
    return texts


def is_split_dir(path: str | Path) -> bool:
    return (Path(path) / SPLIT_MANIFEST).is_file()


def load_subsets(source: str | Path, text_column: str | None = None) -> list[Subset]:
    """One subset per file of a `spunge split` directory, or the single file given."""
    path = Path(source).expanduser()
    if not path.exists():
        raise SpungeError(f"{path}: no such file or directory")
    if path.is_dir():
        if not is_split_dir(path):
            raise SpungeError(f"{path} is a directory without {SPLIT_MANIFEST}: give a data file or a `spunge split` output")
        manifest = read_json(path / SPLIT_MANIFEST)
        column = text_column or manifest.get("text_column") or "text"
        subsets = []
        for entry in manifest.get("subsets", []):
            file = path / entry["file"]
            subsets.append(Subset(name=entry["name"], value=entry["value"], column=manifest.get("column"),
                                  source=file, texts=tuple(read_texts(file, column))))
        if not subsets:
            raise SpungeError(f"{path}/{SPLIT_MANIFEST} lists no subsets")
        return subsets
    texts = read_texts(path, text_column or "text")
    return [Subset(name=path.stem, value=None, column=None, source=path, texts=tuple(texts))]


def load_retain(source: str | Path, text_column: str | None = None, where: tuple[str, ...] | list[str] = ()) -> list[Subset]:
    """A retain data file as one subset: its texts, only the rows where every `where` condition holds
    (`COLUMN OP VALUE`, the grammar of `spunge split --where`); without conditions, `load_subsets`."""
    if not where:
        return load_subsets(source, text_column)
    from spunge_merge.data.split import apply_filters
    from spunge_merge.data.where import parse_condition

    path = Path(source).expanduser()
    if not path.is_file():
        raise SpungeError(f"{path}: no such file (--retain-where filters a retain data file)")
    conditions = [parse_condition(expr) for expr in where]
    table = apply_filters(load_table(path), conditions, str(path))
    column = text_column or "text"
    if column not in table.column_names:
        raise SpungeError(f"{path}: no column '{column}' (columns: {', '.join(table.column_names)})")
    texts = [t for t in table[column] if isinstance(t, str) and t.strip()]
    if not texts:
        raise SpungeError(f"{path}: no rows with text left after --retain-where {' AND '.join(where)}")
    return [Subset(name=path.stem, value=None, column=None, source=path, texts=tuple(texts), where=tuple(where))]
