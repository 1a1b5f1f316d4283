"""Where each tensor's bytes lie in a safetensors file, read from its header alone.

The merge copies tensors that no run changed byte for byte, compares inputs with the base without
loading them, and checks every input before any work starts. All three need what the safetensors
library keeps to itself: each tensor's dtype, shape and byte range. The format is a little-endian
u64 header length, a JSON header, then the data (https://github.com/huggingface/safetensors).
A file the library refuses, or whose data is shorter than its header says, is reported by name.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from spunge_merge.errors import SpungeError

WEIGHTS_INDEX = "model.safetensors.index.json"
_MAX_HEADER = 100 * 1024 * 1024  # the library's own limit

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


@dataclass(frozen=True)
class TensorSlot:
    """One tensor of one file: dtype code, shape and absolute byte range [start, end)."""

    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def same_layout(self, other: TensorSlot) -> bool:
        return self.dtype == other.dtype and self.shape == other.shape


def _corrupt(path: Path, reason: str) -> SpungeError:
    return SpungeError(f"{path}: corrupt or truncated safetensors file ({reason})")


_HEADERS: dict[tuple, dict[str, TensorSlot]] = {}


def read_header(path: str | Path) -> dict[str, TensorSlot]:
    """The tensors of one safetensors file by name; SpungeError naming the file when it is damaged.

    Cached by the file's identity (device, inode, size, mtime, ctime), so the views of one base, which link to the
    same files, parse each once. Each slot names the path it was asked for, not the one first parsed: a file
    deleted and replaced by a copy elsewhere (`shutil.copy2` keeps the mtime, the file system may reuse the inode)
    must not give back slots naming the deleted path. ctime changes on every new file and cannot be set, so a
    replacement with other bytes is parsed again.
    """
    path = Path(path)
    try:
        stat = os.stat(path)
    except FileNotFoundError as exc:
        raise SpungeError(f"{path}: file not found") from exc
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _HEADERS:
        if len(_HEADERS) > 100_000:
            _HEADERS.clear()
        _HEADERS[key] = _parse_header(path, stat.st_size)
    slots, path_text = _HEADERS[key], str(path)
    if all(slot.file == path_text for slot in slots.values()):
        return slots
    return {name: replace(slot, file=path_text) for name, slot in slots.items()}


def _parse_header(path: Path, size: int) -> dict[str, TensorSlot]:
    path_text = str(path)
    if size < 8:
        raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > _MAX_HEADER or 8 + length > size:
            raise _corrupt(path, f"header length {length} does not fit in a file of {size} bytes")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    data_start = 8 + length
    slots: dict[str, TensorSlot] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"bad header entry for tensor '{name}'") from exc
        if dtype not in DTYPE_SIZES:
            raise _corrupt(path, f"tensor '{name}' has unknown dtype {dtype}")
        if end - begin != math.prod(shape) * DTYPE_SIZES[dtype] or begin < 0:
            raise _corrupt(path, f"tensor '{name}': byte range {begin}..{end} does not match {dtype} {list(shape)}")
        slots[name] = TensorSlot(path_text, name, dtype, shape, data_start + begin, data_start + end)
    data_end = max((slot.end for slot in slots.values()), default=data_start)
    if data_end > size:
        raise _corrupt(path, f"the header describes {data_end - data_start} bytes of tensor data, the file holds {size - data_start}")
    return slots


def weight_files(model_dir: str | Path) -> dict[str, Path]:
    """Tensor name -> safetensors file of a model directory (its index, else its safetensors files).

    Shared by the merge and by RMU's partial loading: both read tensors straight from the files."""
    model_dir = Path(model_dir)
    index = model_dir / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpungeError(f"{index}: not a valid safetensors index ({exc})") from exc
        return {name: model_dir / file for name, file in weight_map.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if files:  # unindexed: normally the one `model.safetensors`
        return {name: file for file in files for name in read_header(file)}
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise SpungeError(f"{model_dir}: holds only pickled weights (*.bin); spunge reads safetensors only "
                          "(convert with transformers: save_pretrained(..., safe_serialization=True))")
    raise SpungeError(f"{model_dir}: no *.safetensors weights and no {WEIGHTS_INDEX}")


def model_slots(model_dir: str | Path) -> dict[str, TensorSlot]:
    """Every tensor of a model directory, checking each of its files once."""
    return _model_slots(Path(model_dir))


def _model_slots(model_dir: Path) -> dict[str, TensorSlot]:
    files = weight_files(model_dir)
    headers = {file: read_header(file) for file in dict.fromkeys(files.values())}
    slots = {}
    for name, file in files.items():
        if name not in headers[file]:
            raise SpungeError(f"{file}: the index lists tensor '{name}' but the file does not hold it")
        slots[name] = headers[file][name]
    return slots


def check_with_library(path: str | Path) -> None:
    """Let the safetensors library itself open the file: it checks what our header read does not."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # SafetensorError and friends: the file is damaged
        raise _corrupt(Path(path), str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from exc


def read_chunks(slot: TensorSlot, buffer: bytearray) -> Iterator[memoryview]:
    """The tensor's bytes in pieces of at most len(buffer), reusing the buffer (memory stays flat)."""
    view = memoryview(buffer)
    with open(slot.file, "rb", buffering=0) as handle:
        handle.seek(slot.start)
        remaining = slot.nbytes
        while remaining:
            want = min(remaining, len(buffer))
            got = 0
            while got < want:  # whole pieces, so no element straddles two of them
                n = handle.readinto(view[got:want])
                if not n:
                    raise _corrupt(Path(slot.file), f"tensor '{slot.name}' ends early")
                got += n
            remaining -= want
            yield view[:want]


def same_bytes(a: TensorSlot, b: TensorSlot, chunk: int = 8 << 20) -> bool:
    """True when two tensors hold the same dtype, shape and bytes (read piecewise)."""
    if not a.same_layout(b):
        return False
    if os.path.realpath(a.file) == os.path.realpath(b.file) and a.start == b.start:
        return True
    with open(a.file, "rb") as fa, open(b.file, "rb") as fb:
        fa.seek(a.start)
        fb.seek(b.start)
        remaining = a.nbytes
        while remaining:
            n = min(chunk, remaining)
            if fa.read(n) != fb.read(n):
                return False
            remaining -= n
    return True


_SIGN_BIT_ALONE = {8: -(2**63), 4: -(2**31), 2: -(2**15), 1: -(2**7)}  # -0.0 read as a signed integer


def has_negative_zero(chunk: memoryview, dtype: str) -> bool:
    """Whether a piece of a floating-point tensor holds a -0.0 (the smallest signed integer of its width,
    so one min() finds it without a temporary array)."""
    import numpy as np

    if dtype not in FLOAT_DTYPES:
        return False
    size = DTYPE_SIZES[dtype]
    as_int = np.frombuffer(chunk, dtype=np.dtype(f"<i{size}"))
    return bool(as_int.size) and int(as_int.min()) == _SIGN_BIT_ALONE[size]


# -- writing: never a non-finite weight, always the same bytes -----------------------------------


def refuse_non_finite(name: str, tensor, cause: str) -> None:
    """SpungeError naming the tensor and `cause` (the setting that made it, e.g. `--dtype float16, λ 1e9`)
    when a floating-point tensor about to be written holds inf or nan: such a model loads and runs, but every
    output through that weight is inf/nan. One `torch.isfinite` per tensor, as it is written."""
    import torch

    if not tensor.is_floating_point():
        return
    values = tensor if tensor.element_size() > 1 else tensor.to(torch.float16)  # no isfinite for float8; exact in float16
    if bool(torch.isfinite(values).all()):
        return
    bad = int((~torch.isfinite(values)).sum())
    dtype = str(tensor.dtype).removeprefix("torch.")
    raise SpungeError(f"tensor {name}: {bad} of {tensor.numel()} values are inf or nan in {dtype} ({cause}); "
                      "nothing was written: lower λ or write a wider dtype (float32)")


def refuse_non_finite_files(directory: str | Path, cause: str) -> None:
    """`refuse_non_finite` on every tensor of every safetensors file under `directory` (a library's writer, such as
    peft's or transformers' save_pretrained, or mergekit's, wrote them), one tensor in memory at a time."""
    from safetensors import safe_open

    for file in sorted(Path(directory).rglob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                refuse_non_finite(name, handle.get_tensor(name), cause)


def _sorted_header(raw: bytes) -> bytes:
    """A safetensors header (JSON) with its `__metadata__` keys in sorted order, the tensors' order kept."""
    header = json.loads(raw.decode("utf-8"))
    if isinstance(header.get("__metadata__"), dict):
        header = {"__metadata__": dict(sorted(header["__metadata__"].items())),
                  **{k: v for k, v in header.items() if k != "__metadata__"}}
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sorted_metadata_bytes(data: bytes) -> bytes:
    """A serialized safetensors file whose `__metadata__` keys are in sorted order (the library writes a map's keys
    in random order, so two identical runs would differ by their bytes)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = _sorted_header(data[8:8 + length])
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + length:]


def sort_metadata_in_place(path: str | Path) -> None:
    """`sorted_metadata_bytes` for a file already written: the header is rewritten where it lies (padded with
    spaces as the format allows), the tensor data not touched; a longer header rewrites the file."""
    path = Path(path)
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = _sorted_header(handle.read(length))
        if len(header) <= length:
            handle.seek(8)
            handle.write(header + b" " * (length - len(header)))
            return
    path.write_bytes(sorted_metadata_bytes(path.read_bytes()))


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None, *, cause: str) -> bytes:
    """A safetensors file's bytes: every tensor checked finite (`refuse_non_finite`), metadata keys sorted."""
    from safetensors.torch import save

    for name, tensor in tensors.items():
        refuse_non_finite(name, tensor, cause)
    return sorted_metadata_bytes(save(tensors, metadata=metadata))


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None, *, cause: str) -> None:
    """`safetensors.torch.save_file` through the checks of `safetensors_bytes`, without holding the file in memory."""
    from safetensors.torch import save_file

    for name, tensor in tensors.items():
        refuse_non_finite(name, tensor, cause)
    save_file(tensors, str(path), metadata=metadata)
    sort_metadata_in_place(path)
