"""Sharded safetensors output written one tensor at a time, so memory holds one tensor, not a shard.

`safetensors.torch.save_file` (and mergekit's writer, which buffers up to 5 GB per shard) needs
every tensor of a file in memory at once. Here each file starts with a header area reserved from an
upper bound of its header's length; tensors are appended as they come and the header is written
into that area when the file is closed, padded with spaces as the format allows. The files are
plain safetensors (checked in the tests with the safetensors library and transformers).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spunge_merge.fsutil import write_json
from spunge_merge.tensorfiles import DTYPE_SIZES, WEIGHTS_INDEX, TensorSlot, read_chunks, refuse_non_finite

_TORCH_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint16": "U16", "uint32": "U32", "uint64": "U64",
}
_METADATA = {"format": "pt"}


def dtype_code(dtype: Any) -> str:
    """safetensors dtype code of a torch dtype (`torch.float32` -> `F32`)."""
    return _TORCH_CODES[str(dtype).removeprefix("torch.")]


def header_bound(entries: Iterable[tuple[str, int]]) -> int:
    """Upper bound of the header length for tensors given as (name, number of dims)."""
    total = len(json.dumps({"__metadata__": _METADATA})) + 2
    for name, ndim in entries:
        # "name":{"dtype":"F8_E4M3","shape":[d,...],"data_offsets":[b,e]},  with 20-digit numbers
        total += len(json.dumps(name)) + 48 + 21 * (ndim + 2)
    return -(-total // 8) * 8


@dataclass
class _Shard:
    path: Path
    entries: dict[str, dict] = field(default_factory=dict)
    size: int = 0  # bytes of tensor data so far


class ShardWriter:
    """Append tensors to `model-XXXXX-of-YYYYY.safetensors` files of at most `max_shard_bytes` each.

    Every tensor computed here (`write_tensor`) is checked finite; `cause` names the settings that made it
    (`refuse_non_finite`). Byte copies of an input's tensors are the input's own bytes and are not read."""

    def __init__(self, out_dir: Path, *, header_reserve: int, max_shard_bytes: int = 5 * 10**9, basename: str = "model",
                 cause: str = "merge"):
        self.out_dir = Path(out_dir)
        self.cause = cause
        self.reserve = max(8, -(-header_reserve // 8) * 8)
        self.max_shard_bytes = max_shard_bytes
        self.basename = basename
        self.shards: list[_Shard] = []
        self._handle = None
        self._last: tuple[str, int] | None = None
        self.total_bytes = 0

    # -- writing -------------------------------------------------------------------------
    def begin(self, name: str, dtype: str, shape: tuple[int, ...] | list[int], nbytes: int):
        """Start tensor `name`; returns the open file, positioned where its bytes go (write exactly `nbytes`)."""
        if nbytes != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise ValueError(f"{name}: {nbytes} bytes do not match {dtype} {list(shape)}")
        shard = self.shards[-1] if self.shards else None
        if shard is None or self._full(nbytes):
            self._close_current()
            shard = _Shard(self.out_dir / f".{self.basename}-shard-{len(self.shards) + 1}.partial")
            self.shards.append(shard)
            self._handle = open(shard.path, "wb")
            self._handle.write(b"\0" * (8 + self.reserve))
        start = shard.size
        shard.entries[name] = {"dtype": dtype, "shape": [int(d) for d in shape], "data_offsets": [start, start + nbytes]}
        shard.size += nbytes
        self._last = (name, start)
        self._handle.seek(8 + self.reserve + start)
        return self._handle

    def _full(self, nbytes: int) -> bool:
        """Would a tensor of `nbytes` start a new file?"""
        shard = self.shards[-1] if self.shards else None
        return shard is None or bool(shard.entries and shard.size + nbytes > self.max_shard_bytes)

    def cancel_last(self) -> None:
        """Forget the tensor begun last (its bytes are cut off the file)."""
        name, start = self._last
        shard = self.shards[-1]
        del shard.entries[name]
        shard.size = start
        self._handle.truncate(8 + self.reserve + start)
        self._last = None

    def copy_tensor(self, name: str, slot) -> None:
        """Append a tensor copied by byte range from another safetensors file (in the kernel where it can)."""
        self.copy_tensors([(name, slot)])

    def copy_tensors(self, items: list[tuple[str, Any]]) -> None:
        """Append tensors copied by byte range, each run of tensors that lie back to back in one source file
        (as a model's unchanged tensors do) in one copy: one open and one system call instead of one per
        tensor, and one hand-back of the GIL, which a merge computing on another thread holds most of the time."""
        run: list[Any] = []  # [file, source start, destination handle, destination offset, bytes]
        for name, slot in items:
            if run and (self._full(slot.nbytes) or slot.file != run[0] or slot.start != run[1] + run[4]):
                copy_file_bytes(*run)
                run = []
            handle = self.begin(name, slot.dtype, slot.shape, slot.nbytes)
            if run:
                run[4] += slot.nbytes
            else:
                run = [slot.file, slot.start, handle, handle.tell(), slot.nbytes]
        if run:
            copy_file_bytes(*run)

    def write_tensor(self, name: str, tensor) -> None:
        """Append a torch tensor (any device, any layout)."""
        tensor = tensor.detach().to("cpu").contiguous()
        refuse_non_finite(name, tensor, self.cause)
        code = dtype_code(tensor.dtype)
        flat = tensor.reshape(-1)
        raw = flat.view(torch_uint8()) if flat.numel() else flat
        handle = self.begin(name, code, tuple(tensor.shape), flat.numel() * DTYPE_SIZES[code])
        if flat.numel():
            handle.write(memoryview(raw.numpy()))

    # -- closing -------------------------------------------------------------------------
    def _close_current(self) -> None:
        if self._handle is None:
            return
        shard = self.shards[-1]
        self._handle.flush()
        header = json.dumps({"__metadata__": _METADATA, **shard.entries}, separators=(",", ":")).encode("utf-8")
        if len(header) <= self.reserve:
            self._handle.seek(0)
            self._handle.write(struct.pack("<Q", self.reserve) + header + b" " * (self.reserve - len(header)))
            self._handle.close()
        else:  # never expected (the reserve is an upper bound); stay correct anyway by rewriting the file
            self._handle.close()
            padded = header + b" " * (-len(header) % 8)
            fixed = shard.path.with_suffix(".rewrite")
            with open(shard.path, "rb") as src, open(fixed, "wb") as dst:
                dst.write(struct.pack("<Q", len(padded)) + padded)
                src.seek(8 + self.reserve)
                shutil.copyfileobj(src, dst, 16 << 20)
            os.replace(fixed, shard.path)
        self.total_bytes += shard.size
        self._handle = None

    def finish(self, *, index: bool = True, single_name: str | None = None) -> dict[str, str]:
        """Close the last file, give the files their final names, write the index; returns name -> file."""
        self._close_current()
        count = len(self.shards)
        weight_map = {}
        for number, shard in enumerate(self.shards, start=1):
            final = single_name if (single_name and count == 1) else f"{self.basename}-{number:05d}-of-{count:05d}.safetensors"
            os.replace(shard.path, self.out_dir / final)
            weight_map.update(dict.fromkeys(shard.entries, final))
        if index:
            write_json(self.out_dir / WEIGHTS_INDEX, {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map})
        return weight_map

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for shard in self.shards:
            shard.path.unlink(missing_ok=True)


def torch_uint8():
    import torch

    return torch.uint8


def copy_file_bytes(source_file: str, start: int, handle, destination: int, nbytes: int) -> None:
    """Copy `nbytes` from `source_file` at `start` into the open binary file `handle` at `destination`, leaving
    `handle` after them: `os.copy_file_range` moves them inside the kernel (no trip through Python); a plain
    read/write loop where that is not available."""
    handle.flush()
    done = 0
    with open(source_file, "rb", buffering=0) as source:
        try:
            while done < nbytes:
                copied = os.copy_file_range(source.fileno(), handle.fileno(), nbytes - done, start + done, destination + done)
                if copied <= 0:
                    break
                done += copied
        except (AttributeError, OSError):  # no copy_file_range here (platform, file system): copy through memory
            pass
    handle.seek(destination + done)
    if done < nbytes:
        rest = TensorSlot(source_file, f"bytes {start}-{start + nbytes}", "U8", (nbytes - done,), start + done, start + nbytes)
        for chunk in read_chunks(rest, bytearray(min(16 << 20, rest.nbytes))):
            handle.write(chunk)


def write_single_tensor_file(path: Path, slot, buffer: bytearray) -> bool:
    """A safetensors file holding one tensor copied by byte range from another file; True if it holds a -0.0."""
    from spunge_merge.tensorfiles import has_negative_zero

    entry = {"dtype": slot.dtype, "shape": list(slot.shape), "data_offsets": [0, slot.nbytes]}
    header = json.dumps({"__metadata__": _METADATA, slot.name: entry}, separators=(",", ":")).encode("utf-8")
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        negative_zero = False
        for chunk in read_chunks(slot, buffer):
            negative_zero = negative_zero or has_negative_zero(chunk, slot.dtype)
            handle.write(chunk)
    return negative_zero
