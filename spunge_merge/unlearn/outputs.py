"""How one run becomes a full model directory, by the kind of files it holds (its output kind).

A method's `to_model` (see `registry.UnlearningMethod`) usually is one of these, or a thin wrapper
that first rewrites its run (TVN re-negates its adapter at the asked λ, then applies it):

- `peft_adapter_to_model`: base + the adapter's update × λ (lora_B scaled on a copy), merged by
  peft's `merge_and_unload`, for methods whose adapter *is* the unlearned update;
- `delta_to_model`: base with the run's new tensors (`delta.safetensors`), or base + λ·(new − base).

The baseline builds its models through these, so a new method that writes either kind needs no
code of its own to be compared against its split version.
"""

from __future__ import annotations

import re
from pathlib import Path

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, atomic_write_bytes, copy_file
from spunge_merge.models import ResolvedModel
from spunge_merge.provenance import fingerprint, read_provenance, write_provenance
from spunge_merge.runtime import PEFT_WRAP_WARNINGS, quiet_dependency
from spunge_merge.tensorfiles import refuse_non_finite_files, safetensors_bytes, save_tensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DELTA_FILE = "delta.safetensors"
MATERIALIZED_KIND = "materialized-model"
_LORA_B = re.compile(r"\.lora_(embedding_)?B(\.|$)")
_SKIPPED_FILES = (".bin", ".pt", ".pth", ".gguf", ".ckpt", ".msgpack", ".h5")


def apply_adapter(base: ResolvedModel, adapter_dir: Path, out: Path) -> Path:
    """base + adapter as a plain model directory (peft's merge_and_unload), in the base's own dtype."""
    from peft import PeftModel
    from transformers import GenerationConfig

    from spunge_merge.models import load_causal_lm, load_tokenizer

    record = read_provenance(adapter_dir) or {}
    size = sum(p.stat().st_size for p in base.path.glob("*.safetensors"))  # named in a disk-full error
    # Every file here is written anew (save_pretrained), none linked: writing into it never reaches the base.
    with atomic_output_dir(out, force=True, expected_bytes=size) as tmp:
        lm = load_causal_lm(base, dtype="auto")
        with quiet_dependency(PEFT_WRAP_WARNINGS):
            merged = PeftModel.from_pretrained(lm, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        refuse_non_finite_files(tmp, f"{adapter_dir} merged into {base.ref} in its dtype")
        load_tokenizer(base).save_pretrained(tmp)
        try:
            GenerationConfig.from_pretrained(base.path).save_pretrained(tmp)
        except OSError:
            pass  # the base has no generation_config.json
        write_provenance(tmp, kind=MATERIALIZED_KIND, fingerprint=fingerprint(adapter=record.get("fingerprint"),
                                                                              lam=(record.get("result") or {}).get("lambda"),
                                                                              base=base.fingerprint),
                         method=record.get("method"), base_model=base.describe(), config=record.get("config"),
                         run={"path": str(adapter_dir), "fingerprint": record.get("fingerprint")},
                         data=record.get("data"), attribute=record.get("attribute"),
                         result={k: v for k, v in (record.get("result") or {}).items() if k != "losses"})
    return Path(out)


def scale_adapter(run: Path, lam: float, out: Path) -> Path:
    """A copy of a peft adapter whose update is λ times the run's (every lora_B × λ)."""
    import torch
    from safetensors.torch import load_file

    weights = Path(run) / ADAPTER_WEIGHTS
    if not weights.is_file() or not (Path(run) / ADAPTER_CONFIG).is_file():
        raise SpungeError(f"{run}: not a peft adapter ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} needed)")
    tensors = load_file(str(weights))
    scaled = {k: (v.to(torch.float32) * float(lam)).to(v.dtype).contiguous() if _LORA_B.search(k) else v for k, v in tensors.items()}
    if not any(_LORA_B.search(k) for k in tensors):
        raise SpungeError(f"{weights}: holds no lora_B tensors, so λ cannot scale it (not a LoRA adapter)")
    with atomic_output_dir(out, force=True) as tmp:
        for item in Path(run).iterdir():
            if item.is_file() and item.name != ADAPTER_WEIGHTS:
                copy_file(item, tmp / item.name)
        atomic_write_bytes(tmp / ADAPTER_WEIGHTS, safetensors_bytes(scaled, {"format": "pt"}, cause=f"the adapter scaled by lambda {lam}"))
    return Path(out)


def peft_adapter_to_model(base: ResolvedModel, run: Path, lam: float | None, out: Path, scratch: Path) -> Path:
    """base + λ × the adapter's update (λ None or 1: the adapter as trained)."""
    adapter = Path(run) if lam is None or lam == 1.0 else scale_adapter(run, lam, Path(scratch) / "scaled-adapter")
    return apply_adapter(base, adapter, Path(out))


def delta_to_model(base: ResolvedModel, run: Path, lam: float | None, out: Path, scratch: Path | None = None, *,
                   force: bool = True) -> Path:
    """The base model with the run's new tensors (λ None or 1), else base + λ·(new − base) in float32.

    Shards holding no changed tensor are copied (a reflink where the filesystem has them); the others are rewritten.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from spunge_merge.models import check_safetensors
    from spunge_merge.tensorfiles import weight_files

    run = Path(run)
    if not (run / DELTA_FILE).is_file():
        raise SpungeError(f"{run}: no {DELTA_FILE} (not a tensor-delta run)")
    record = read_provenance(run) or {}
    expected = (record.get("base_model") or {}).get("fingerprint")
    if expected and expected != base.fingerprint:
        raise SpungeError(f"{run} was trained on a different base model than {base.ref} (fingerprint mismatch); "
                          "pass the base model it was trained on")
    check_safetensors(run / DELTA_FILE)
    delta = load_file(str(run / DELTA_FILE))
    index = weight_files(base.path)
    unknown = sorted(set(delta) - set(index))
    if unknown:
        raise SpungeError(f"{run}/{DELTA_FILE}: tensor {unknown[0]} is not in {base.ref}")
    touched = {index[name] for name in delta}
    scaled = lam is not None and lam != 1.0
    size = sum(p.stat().st_size for p in base.path.iterdir() if p.is_file() and p.suffix not in _SKIPPED_FILES)
    with atomic_output_dir(Path(out), force=force, expected_bytes=size) as tmp:
        for item in sorted(base.path.iterdir()):
            if not item.is_file() or item.name.startswith("spunge") or item.suffix in _SKIPPED_FILES:
                continue
            if item not in touched:
                copy_file(item, tmp / item.name)
                continue
            with safe_open(item, framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            for name, value in delta.items():
                if index[name] != item:
                    continue
                if tuple(value.shape) != tuple(tensors[name].shape):
                    raise SpungeError(f"{DELTA_FILE}: {name} has shape {tuple(value.shape)}, the base has {tuple(tensors[name].shape)}")
                if scaled:
                    original = tensors[name].to(torch.float32)
                    value = original + float(lam) * (value.to(torch.float32) - original)
                tensors[name] = value.to(tensors[name].dtype).contiguous()
            save_tensors(tmp / item.name, tensors, {**metadata, "format": metadata.get("format", "pt")},
                         cause=f"materialize with lambda {lam}" if scaled else f"as {run / DELTA_FILE} holds it")
        result = {k: v for k, v in (record.get("result") or {}).items() if k not in ("history", "losses")}
        key = fingerprint(run=record.get("fingerprint"), base=base.fingerprint, lam=lam)
        write_provenance(tmp, kind=MATERIALIZED_KIND, fingerprint=key,
                         method=record.get("method"), base_model=base.describe(), config=record.get("config"),
                         run={"path": str(run), "fingerprint": record.get("fingerprint"), "attribute": record.get("attribute"),
                              "updated_tensors": sorted(delta)},
                         data=record.get("data"), attribute=record.get("attribute"),
                         result={**result, "lambda": 1.0 if lam is None else float(lam)})
    return Path(out)
