"""Atomic file and directory writes, and content hashes.

Every stage writes its output into a temporary sibling first and renames it into place at
the end, so an interrupted run never leaves a directory that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from spunge_merge.errors import SpungeError

_TMP_MARK = ".tmp-"


def _umask() -> int:
    """The process umask (mkstemp/mkdtemp ignore it and create 0600/0700 entries; we restore the usual modes)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """Hex sha256 of a value's canonical JSON (sorted keys), for fingerprints."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_texts(texts: list[str]) -> str:
    """Hex sha256 of a list of texts, independent of how they were stored."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


_SPACE_ERRORS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def human_bytes(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def is_space_error(exc: BaseException) -> bool:
    """A full disk, a quota or a file-size limit, also when a library (safetensors, torch) wraps the OSError."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _SPACE_ERRORS:
            return True
        text = str(exc)
        if "os error 28" in text or "os error 27" in text or "No space left on device" in text or "File too large" in text:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem holding `path` (its nearest existing parent), None when unknown."""
    for candidate in [Path(path), *Path(path).parents]:
        if candidate.exists():
            with contextlib.suppress(OSError):
                info = os.statvfs(candidate)
                return info.f_bavail * info.f_frsize
            return None
    return None


def space_error(output: Path, exc: BaseException, *, needed: int | None = None, written: int | None = None) -> SpungeError:
    """The one-line error for a write that ran out of room: which output, how much it needed, what is free."""
    reason = "file too large for this filesystem or its limits" if getattr(exc, "errno", None) == errno.EFBIG or "too large" in str(exc) \
        else "no space left on device"
    parts = []
    if needed is not None:
        parts.append(f"it needs about {human_bytes(needed)}")
    elif written is not None:
        parts.append(f"it needs more than the {human_bytes(written)} written before the failure")
    free = free_bytes(output.parent)
    if free is not None:
        parts.append(f"{human_bytes(free)} free there")
    return SpungeError(f"cannot write {output}: {reason} ({'; '.join(parts)}); free some space or choose another location")


def _tree_bytes(root: Path) -> int:
    total = 0
    for entry in [root, *root.rglob("*")] if root.is_dir() else [root]:
        with contextlib.suppress(OSError):
            info = entry.lstat()
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory (a full disk: SpungeError naming `path`)."""
    path = Path(path)
    if path.is_dir():
        raise SpungeError(f"cannot write {path}: it is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}", dir=path.parent)
    except OSError as exc:
        if is_space_error(exc):
            raise space_error(path, exc, needed=len(data)) from exc
        raise SpungeError(f"cannot write {path}: {exc.strerror or exc} ({exc.filename or path.parent})") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if not isinstance(exc, SpungeError) and is_space_error(exc):
            raise space_error(path, exc, needed=len(data)) from exc
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any) -> None:
    """Write pretty, key-sorted JSON atomically (stable bytes for stable inputs)."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SpungeError(f"{path}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpungeError(f"{path}: not valid JSON ({exc})") from exc


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of a JSON Lines file; bad JSON names the line."""
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw)
            except json.JSONDecodeError as exc:
                raise SpungeError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_output_dir(out: Path, *, force: bool) -> None:
    """Refuse an output path that is a file, or a non-empty directory without `force`."""
    if out.exists() and not out.is_dir():
        raise SpungeError(f"output path {out} exists and is not a directory")
    if is_nonempty_dir(out) and not force:
        raise SpungeError(f"output directory {out} is not empty; pass --force to replace it")


# What every spunge output directory holds, so `--force` can tell one from a folder of the user's:
# `spunge.json` (provenance.PROVENANCE_FILE: runs, models, merges, evaluations), `manifest.json` (a split,
# data.loading.SPLIT_MANIFEST, or a fan-out of runs, runs.RUNS_MANIFEST) and a run directory's state folder
# (pipeline.state.STATE_DIR). They live here, below those modules; tests/test_outputs_safe.py checks they agree.
OWNED_MARKERS = ("spunge.json", "manifest.json", ".spunge-state")


def cache_root() -> Path:
    """`$SPUNGE_CACHE`, else `$XDG_CACHE_HOME/spunge`, else `~/.cache/spunge`."""
    if explicit := os.environ.get("SPUNGE_CACHE"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "spunge"


def _overlap(out: Path, other: Path) -> str | None:
    """How `out` sits against `other` (both resolved): "is", "lies inside", "contains", or None."""
    if out == other:
        return "is"
    if other in out.parents:
        return "lies inside"
    if out in other.parents:
        return "contains"
    return None


def guard_output(out: str | Path, *, inputs: Iterable[str | Path | None] = (), force: bool = False,
                 option: str = "--out", directory: bool = True) -> None:
    """Refuse an output that would destroy or change what spunge reads, before anything is written.

    Refused always, `force` or not, after resolving symlinks: an output that is, contains or lies inside
    one of `inputs` (entries naming no existing path, e.g. a Hub id, are skipped) or spunge's cache. A
    directory output must not be a file; one that will be replaced (`force`) must be empty or hold one of
    `OWNED_MARKERS`, since replacing a folder of the user's deletes their files. Whether a non-empty
    output needs `force` at all stays the caller's decision (a finished run is reused, not replaced).
    """
    out = Path(out)
    where = out.resolve()
    for given in inputs:
        if not isinstance(given, str | os.PathLike) or not str(given) or not Path(given).exists():
            continue  # None, an object given in a path's place (a judge), a Hub id
        relation = _overlap(where, Path(given).resolve())
        if relation is not None:
            raise SpungeError(f"{option} {out} {relation} the input {given}; spunge never writes over or into its inputs, "
                              f"even with --force: choose another {option}")
    cache = cache_root().resolve()
    relation = _overlap(where, cache)
    if relation is not None:
        raise SpungeError(f"{option} {out} {relation} spunge's cache {cache}; choose another {option}")
    if not directory:
        if out.is_dir():
            raise SpungeError(f"{option} {out}: it is a directory; give a file name")
        return
    if out.exists() and not out.is_dir():
        raise SpungeError(f"output path {out} exists and is not a directory")
    if force and is_nonempty_dir(out) and not any((out / marker).exists() for marker in OWNED_MARKERS):
        raise SpungeError(f"{option} {out} holds files that spunge did not write (no {', '.join(OWNED_MARKERS)}); spunge "
                          f"replaces only its own outputs or an empty directory, even with --force: choose another {option}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> None:
    """Delete temporaries that a killed process left beside `out` (their PID is gone)."""
    parent = out.parent
    if not parent.is_dir():
        return
    prefix = f".{out.name}{_TMP_MARK}"
    for candidate in parent.glob(f"{prefix}*"):
        pid_text = candidate.name[len(prefix):].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True) if candidate.is_dir() else candidate.unlink(missing_ok=True)


def _restore_modes(root: Path) -> None:
    """Give files and folders under `root` the modes the umask allows (some writers, e.g.
    safetensors' save_file and mkstemp, create 0600 files that other users could not read)."""
    umask = _umask()
    for entry in [root, *root.rglob("*")]:
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink > 1):
            continue  # links point at files we do not own (e.g. a base model's shards)
        wanted = (0o777 if stat.S_ISDIR(info.st_mode) else 0o666) & ~umask
        if stat.S_IMODE(info.st_mode) != wanted:
            entry.chmod(wanted)


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, *, force: bool = False, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary directory that replaces `out` only if the block succeeds.

    On any exception the temporary is removed and `out` is left as it was. A full disk or a file-size
    limit becomes a SpungeError naming `out` and `expected_bytes` (the output's size, when the caller
    knows it), else what had been written.
    """
    out = Path(out)
    check_output_dir(out, force=force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_TMP_MARK}{os.getpid()}-", dir=out.parent))
        tmp.chmod(0o777 & ~_umask())
    except OSError as exc:
        raise SpungeError(f"cannot write to {out.parent}: {exc.strerror or exc}") from exc
    try:
        yield tmp
        _restore_modes(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException as exc:
        space = not isinstance(exc, SpungeError) and is_space_error(exc)
        written = _tree_bytes(tmp) if space else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if space:
            raise space_error(out, exc, needed=expected_bytes, written=written) from exc
        raise


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def reflink(src: Path, dst: Path) -> bool:
    """Make `dst` a copy-on-write clone of `src` (btrfs, XFS, bcachefs, ...); False where the filesystem has none.

    A clone is a file of its own (its own inode): writing into it never changes `src`, yet it
    costs no data blocks until one of them is written.
    """
    try:
        with open(src, "rb") as source, open(dst, "wb") as target:
            fcntl.ioctl(target.fileno(), FICLONE, source.fileno())
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst)
        return False
    return True


def copy_file(src: str | Path, dst: str | Path, *, allow_reflink: bool = True) -> str:
    """Copy `src` to a new, independent file `dst`: a reflink where the filesystem has them, else a byte copy
    (`shutil.copyfile`: `copy_file_range`/`sendfile` in the kernel). Returns "reflink" or "copy".

    Why never a hard link: an output that shares an inode with an input lets any later write into the
    output (a `save_pretrained`, an editor) change the input, e.g. the base model in the cache.
    """
    src, dst = Path(src), Path(dst)
    if allow_reflink and reflink(src, dst):
        how = "reflink"
    else:
        try:
            shutil.copyfile(src, dst)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            if is_space_error(exc):
                raise space_error(dst, exc, needed=src.stat().st_size) from exc
            raise
        how = "copy"
    with contextlib.suppress(OSError):
        os.chmod(dst, 0o666 & ~_umask())
    return how
