"""Copying a base tensor no run changed into the output, as mergekit would have returned it (dtype, -0.0)."""

from __future__ import annotations

from spunge_merge.merge.shards import ShardWriter, dtype_code
from spunge_merge.tensorfiles import TensorSlot, has_negative_zero, read_chunks


def _resolve(slots: dict[str, TensorSlot], weight) -> str | None:
    """The name mergekit's LoadTensor reads for `weight` in a model (name, aliases, then tied names)."""
    for name in (weight.name, *(weight.aliases or ()), *(weight.tied_names or ())):
        if name in slots:
            return name
    return None


def _copy_tensor(writer: ShardWriter, name: str, slot: TensorSlot, in_dtype: str | None, out_dtype: str | None,
                 buffer: bytearray, check: bool = True) -> bool:
    """Write the base tensor as mergekit would return it; False (nothing written) if it holds a -0.0."""
    from mergekit.common import dtype_from_name

    if _converts(slot, in_dtype, out_dtype):
        return _copy_converted(writer, name, slot, dtype_from_name(in_dtype) if in_dtype else None,
                               dtype_from_name(out_dtype) if out_dtype else None)
    if not check:  # known free of -0.0: the bytes need not be looked at
        writer.copy_tensor(name, slot)
        return True
    handle = writer.begin(name, slot.dtype, slot.shape, slot.nbytes)
    for chunk in read_chunks(slot, buffer):
        if has_negative_zero(chunk, slot.dtype):
            writer.cancel_last()
            return False
        handle.write(chunk)
    return True


def _converts(slot: TensorSlot, in_dtype: str | None, out_dtype: str | None) -> bool:
    """Does mergekit load (in_dtype) or save (out_dtype) this base tensor in a dtype other than its file's?"""
    from mergekit.common import dtype_from_name

    loaded = dtype_code(dtype_from_name(in_dtype)) if in_dtype else slot.dtype
    return loaded != slot.dtype or (out_dtype is not None and dtype_code(dtype_from_name(out_dtype)) != loaded)


def back_to_back(copies: list[tuple]) -> list[list[tuple]]:
    """Copies (entries whose second item is a TensorSlot) in file order, grouped into runs of adjacent byte ranges."""
    runs: list[list[tuple]] = []
    for entry in sorted(copies, key=lambda c: (c[1].file, c[1].start)):
        last = runs[-1][-1][1] if runs else None
        if last is not None and last.file == entry[1].file and last.end == entry[1].start:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs


def _copy_converted(writer: ShardWriter, name: str, slot: TensorSlot, load_dtype, save_dtype) -> bool:
    import torch
    from safetensors import safe_open

    with safe_open(slot.file, framework="pt") as handle:
        tensor = handle.get_tensor(slot.name)
    if load_dtype is not None:
        tensor = tensor.to(load_dtype)
    if save_dtype is not None:
        tensor = tensor.to(save_dtype)
    if tensor.is_floating_point() and bool(((tensor == 0) & torch.signbit(tensor)).any()):
        return False
    writer.write_tensor(name, tensor)
    return True
