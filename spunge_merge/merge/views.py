"""Per-attribute runs seen as full models, at the disk cost of what they changed.

mergekit merges model directories. Its `base+lora` syntax writes a full merged copy of the model per
adapter into a cache keyed by the adapter's *path* (so an adapter rewritten in place silently reuses
a stale copy), and RMU changes only three tensors. Instead each run becomes a *view*: a model
directory whose `model.safetensors.index.json` maps the tensors the run changed to one small local
file and every other tensor to the base's weights through symbolic links. mergekit's lazy loader
(and transformers) read it like any checkpoint.

The links cannot point at the base's own shard files: mergekit's `LazyTensorLoader` serves a tensor
from the shard it has open whenever that shard holds the name, without looking at the index, so a
view linking the base's `model.safetensors` gives back the *base's* value of a changed tensor that
happens to be read right after an unchanged one (mergekit-yaml then silently merges nothing). The
links therefore point into a *base pool*: the base's tensors one per file, written once per base
model and shared by all its views, so no file a view links to holds a tensor that view changed.

- RMU delta: the local file is a copy of the run's `delta.safetensors` (a reflink where the filesystem can).
- TVN adapter: the local file holds W + ΔW for each LoRA target, ΔW = scaling · B·A as peft merges
  it (B already carries −λ), computed one tensor at a time.

Views and pools live under `$SPUNGE_CACHE/merge-views/` (or `--views-dir`), named by a hash of the
run's files and the base, so a rewritten run gets a new view and an unchanged one is reused.
Deleting that folder is always safe: it is rebuilt on the next merge (a merged model's
`mergekit_config.yml` names views, so rerun it from `mergekit_config.portable.yml`, which names the runs).

What a view shares: its weights are symbolic links into the base pool, a private, cache-owned
folder that only mergekit reads (no user output ever links to it). Everything else in a view
(config, tokenizer files, generation config, the changed tensors) is its own copy, so even a
`save_pretrained` into a view cannot reach the base model or a run.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, copy_file, read_json, sha256_file, sha256_json, write_json
from spunge_merge.merge.inputs import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CHECKPOINT,
    DELTA_FILE,
    SIDE_FILES,
    TENSOR_DELTA,
    RunInput,
    check_architecture,
    check_same_base,
)
from spunge_merge.merge.shards import ShardWriter, header_bound, write_single_tensor_file
from spunge_merge.models import ResolvedModel, cache_root
from spunge_merge.provenance import fingerprint, is_complete, read_provenance, write_provenance
from spunge_merge.tensorfiles import WEIGHTS_INDEX, TensorSlot, check_with_library, model_slots, read_header, weight_files

VIEW_KIND = "merge-view"
POOL_KIND = "merge-base-pool"
VIEW_FORMAT = 2
CHANGED_FILE = "changed.safetensors"
BASE_LINK_PREFIX = "base-"
_COPY_BUFFER = 16 << 20
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")
_LORA_EMBEDDING_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)$")


def default_views_dir() -> Path:
    return cache_root() / "merge-views"


def model_for_run(run: RunInput, base: ResolvedModel, views_dir: Path | None = None) -> Path:
    """The model directory mergekit reads for one run: a view for adapters and deltas, the run itself for checkpoints."""
    check_same_base(run, base)
    if run.kind == CHECKPOINT:
        check_checkpoint(run.path, base)
        return run.path
    return materialize_view(run, base, Path(views_dir) if views_dir else default_views_dir())


def check_checkpoint(model_dir: Path, base: ResolvedModel) -> None:
    """Same architecture as the base, and every tensor both hold has the same shape."""
    check_architecture(model_dir, base)
    base_slots, slots = model_slots(base.path), model_slots(model_dir)
    for name, slot in slots.items():
        if name in base_slots and slot.shape != base_slots[name].shape:
            raise SpungeError(f"{slot.file}: tensor '{name}' has shape {list(slot.shape)}, "
                              f"the base model {base.ref} has {list(base_slots[name].shape)}")
    for file in dict.fromkeys(weight_files(model_dir).values()):
        check_with_library(file)


def _run_files(run: RunInput) -> dict[str, Path]:
    names = [ADAPTER_CONFIG, ADAPTER_WEIGHTS] if run.kind != TENSOR_DELTA else [DELTA_FILE]
    files = {name: run.path / name for name in names}
    for path in files.values():
        if not path.is_file():
            raise SpungeError(f"run {run.path}: {path.name} is missing")
    return files


def view_key(run: RunInput, base: ResolvedModel) -> str:
    """Content address of a view: the run's files and record, the base's weights and this format."""
    files = {name: sha256_file(path) for name, path in _run_files(run).items()}
    return fingerprint(format=VIEW_FORMAT, kind=run.kind, files=files, run=run.describe(), base=base_identity(base))


def materialize_view(run: RunInput, base: ResolvedModel, views_dir: Path) -> Path:
    """Build (or reuse) the view of one peft adapter or tensor delta over `base`."""
    files = _run_files(run)
    for name, path in files.items():
        if name.endswith(".safetensors"):
            check_with_library(path)
            read_header(path)
    key = view_key(run, base)
    out = views_dir / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', run.name)}-{key[:12]}"
    if is_complete(out, key):
        return out
    base_slots = model_slots(base.path)
    pool, pool_files = base_pool(base, views_dir)
    with atomic_output_dir(out, force=True) as tmp:
        if run.kind == TENSOR_DELTA:
            changed = _link_delta(files[DELTA_FILE], tmp / CHANGED_FILE, base_slots, base)
        else:
            changed = _materialize_lora(files[ADAPTER_CONFIG], files[ADAPTER_WEIGHTS], tmp / CHANGED_FILE, base_slots, base)
        _write_index(tmp, pool, pool_files, base_slots, changed)
        shutil.copy2(base.path / "config.json", tmp / "config.json")
        for name in SIDE_FILES:  # tokenizer & co. as copies (small): the view loads like the model it stands for
            if (base.path / name).is_file():
                copy_file(base.path / name, tmp / name)
        write_provenance(tmp, kind=VIEW_KIND, fingerprint=key, method=run.kind, base_model=base.describe(),
                         config={"format": VIEW_FORMAT}, run=run.describe(), changed=sorted(changed), pool=str(pool),
                         result={"changed_tensors": len(changed),
                                 "changed_bytes": sum(s.nbytes for s in read_header(tmp / CHANGED_FILE).values())})
    return out


def views_over(base_dir: Path, model_dirs: list[Path]) -> tuple[dict[Path, set[str]], set[str] | None]:
    """For the views among `model_dirs` built over the base in `base_dir` as it is now: the tensors each
    changed (all others are the base's by construction), and the base tensors holding a -0.0 (None when
    unknown: no such view, or its pool was built from other bytes)."""
    base = ResolvedModel(str(base_dir), Path(base_dir))
    changed: dict[Path, set[str]] = {}
    negative_zeros = None
    pool_key = None
    for model_dir in model_dirs:
        record = read_provenance(model_dir)
        if not record or record.get("kind") != VIEW_KIND or not isinstance(record.get("changed"), list):
            continue
        recorded = (record.get("base_model") or {}).get("path")
        if not recorded or os.path.realpath(recorded) != os.path.realpath(base_dir):
            continue
        pool = read_provenance(record["pool"]) if record.get("pool") and Path(record["pool"]).is_dir() else None
        pool_key = pool_key or fingerprint(format=VIEW_FORMAT, kind=POOL_KIND, base=base_identity(base))
        if not pool or pool.get("fingerprint") != pool_key:
            continue  # the base changed since the view was built: compare bytes instead
        changed[model_dir] = set(record["changed"])
        negative_zeros = set(pool.get("negative_zeros", []))
    return changed, negative_zeros


def describe_model_dir(model_dir: Path) -> dict:
    """A recipe model as listed in the merged model's `spunge.json` runs: the run a view stands for,
    else the directory's own record."""
    record = read_provenance(model_dir)
    if record and record.get("kind") == VIEW_KIND and isinstance(record.get("run"), dict):
        return {**record["run"], "model": str(model_dir), "base_model": record.get("base_model")}
    kind = (record or {}).get("kind") or CHECKPOINT
    return {**RunInput(Path(model_dir), kind, Path(model_dir).name, record).describe(), "model": str(model_dir)}


def model_identity(model_dir: Path) -> str:
    """What a recipe model contributes to the merged output's fingerprint."""
    record = read_provenance(model_dir)
    if record and record.get("kind") == VIEW_KIND:
        return str(record.get("fingerprint"))
    model_dir = Path(model_dir)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_dir.glob("*.safetensors"))
    config = (model_dir / "config.json").read_text(encoding="utf-8") if (model_dir / "config.json").is_file() else None
    return sha256_json({"config": config, "weights": files})


def base_identity(base: ResolvedModel) -> str:
    """The base's weights as they are on disk now (names, sizes, modification times)."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in base.path.glob("*.safetensors"))
    return sha256_json({"fingerprint": base.fingerprint, "path": str(base.path), "weights": files})


def base_pool(base: ResolvedModel, views_dir: Path) -> tuple[Path, dict[str, str]]:
    """(directory, tensor name -> file) of the base's tensors one per file, built once per base."""
    key = fingerprint(format=VIEW_FORMAT, kind=POOL_KIND, base=base_identity(base))
    out = Path(views_dir) / f"base-{re.sub(r'[^A-Za-z0-9._-]+', '_', base.path.name)}-{key[:12]}"
    if is_complete(out, key):
        return out, read_provenance(out)["files"]
    slots = model_slots(base.path)
    buffer = bytearray(_COPY_BUFFER)
    with atomic_output_dir(out, force=True) as tmp:
        files, negative_zeros = {}, []
        for number, name in enumerate(sorted(slots), start=1):
            files[name] = f"{number:05d}.safetensors"
            if write_single_tensor_file(tmp / files[name], slots[name], buffer):
                negative_zeros.append(name)
        # which base tensors hold a -0.0: the merge copies the others without looking at their values
        write_provenance(tmp, kind=POOL_KIND, fingerprint=key, method="copy", base_model=base.describe(),
                         config={"format": VIEW_FORMAT}, files=files, negative_zeros=negative_zeros,
                         result={"tensors": len(files), "bytes": sum(slot.nbytes for slot in slots.values())})
    return out, files


def _write_index(directory: Path, pool: Path, pool_files: dict[str, str], base_slots: dict[str, TensorSlot],
                 changed: set[str]) -> None:
    """Index: changed tensors -> the local file, all others -> links to their base pool files."""
    weight_map = {}
    for name in base_slots:
        if name in changed:
            weight_map[name] = CHANGED_FILE
            continue
        weight_map[name] = BASE_LINK_PREFIX + pool_files[name]
        _link_large(pool / pool_files[name], directory / weight_map[name])
    total = sum(slot.nbytes for slot in base_slots.values())
    write_json(directory / WEIGHTS_INDEX, {"metadata": {"total_size": total, "spunge_view": True}, "weight_map": weight_map})


def _link_large(src: Path, dst: Path) -> None:
    """A symbolic link into the base pool (works across file systems); a copy where links are refused."""
    try:
        os.symlink(os.path.abspath(src), dst)
    except OSError:
        copy_file(src, dst)


def _link_delta(delta: Path, target: Path, base_slots: dict[str, TensorSlot], base: ResolvedModel) -> set[str]:
    slots = read_header(delta)
    if not slots:
        raise SpungeError(f"{delta}: holds no tensors")
    for name, slot in slots.items():
        if name not in base_slots:
            raise SpungeError(f"{delta}: tensor '{name}' is not in the base model {base.ref} (a run of another model?)")
        if slot.shape != base_slots[name].shape:
            raise SpungeError(f"{delta}: tensor '{name}' has shape {list(slot.shape)}, the base model {base.ref} "
                              f"has {list(base_slots[name].shape)} (a run of another model?)")
    copy_file(delta, target)
    return set(slots)


def _lora_pairs(adapter_weights: Path) -> dict[str, dict[str, str]]:
    """Module path -> {"A": key, "B": key, "embedding": bool} for every LoRA pair in the file."""
    pairs: dict[str, dict] = {}
    for key in read_header(adapter_weights):
        match = _LORA_KEY.match(key) or _LORA_EMBEDDING_KEY.match(key)
        if not match:
            raise SpungeError(f"{adapter_weights}: tensor '{key}' is not a LoRA A/B matrix; adapters with "
                              "modules_to_save, DoRA magnitudes or LoRA biases are not supported by spunge merge")
        entry = pairs.setdefault(match["module"], {"embedding": "embedding" in match["part"]})
        entry["A" if match["part"].endswith("A") else "B"] = key
    for module, entry in pairs.items():
        if "A" not in entry or "B" not in entry:
            raise SpungeError(f"{adapter_weights}: module '{module}' has only one of its LoRA matrices")
    return pairs


def _lora_settings(adapter_config: Path) -> dict:
    config = read_json(adapter_config)
    if not isinstance(config, dict):
        raise SpungeError(f"{adapter_config}: not a peft adapter config")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise SpungeError(f"{adapter_config}: peft_type is {config.get('peft_type')}; spunge merge takes LoRA adapters")
    for flag in ("use_dora", "lora_bias"):
        if config.get(flag):
            raise SpungeError(f"{adapter_config}: {flag} adapters are not supported (their merge is not W + B·A)")
    if config.get("modules_to_save"):
        raise SpungeError(f"{adapter_config}: modules_to_save is not supported by spunge merge")
    return config


def _scaling(config: dict, module: str, rank: int) -> float:
    """peft's LoRA scaling: alpha / r, or alpha / sqrt(r) with rsLoRA; alpha_pattern overrides per module."""
    alpha = config.get("lora_alpha", 8)
    if config.get("alpha_pattern"):
        from peft.utils.other import get_pattern_key

        pattern = get_pattern_key(list(config["alpha_pattern"]), module)
        alpha = config["alpha_pattern"].get(pattern, alpha)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _materialize_lora(adapter_config: Path, adapter_weights: Path, target: Path,
                      base_slots: dict[str, TensorSlot], base: ResolvedModel) -> set[str]:
    """Write W + ΔW for every LoRA target into `target`, one tensor in memory at a time."""
    import torch
    from safetensors import safe_open

    config = _lora_settings(adapter_config)
    pairs = _lora_pairs(adapter_weights)
    if not pairs:
        raise SpungeError(f"{adapter_weights}: holds no LoRA matrices")
    targets = {}
    for module in pairs:
        name = f"{module}.weight"
        if name not in base_slots:
            raise SpungeError(f"{adapter_weights}: the adapter changes '{module}', which the base model {base.ref} "
                              "does not have (an adapter of another model?)")
        targets[module] = name
    writer = ShardWriter(target.parent, header_reserve=header_bound((n, len(base_slots[n].shape)) for n in targets.values()),
                         max_shard_bytes=1 << 62, basename=".changed", cause=f"{adapter_weights} merged into {base.ref}")
    opened: dict[str, object] = {}
    try:
        with safe_open(str(adapter_weights), framework="pt") as adapter:
            for module, pair in sorted(pairs.items()):
                name = targets[module]
                slot = base_slots[name]
                if slot.file not in opened:
                    opened[slot.file] = safe_open(slot.file, framework="pt")
                weight = opened[slot.file].get_tensor(name)
                lora_a, lora_b = adapter.get_tensor(pair["A"]), adapter.get_tensor(pair["B"])
                delta = _lora_delta(lora_a, lora_b, embedding=pair["embedding"],
                                    fan_in_fan_out=bool(config.get("fan_in_fan_out")),
                                    scaling=_scaling(config, module, lora_a.shape[0]))
                if tuple(delta.shape) != tuple(weight.shape):
                    raise SpungeError(f"{adapter_weights}: LoRA update of '{module}' has shape {list(delta.shape)}, "
                                      f"the base model {base.ref} has {list(weight.shape)} (an adapter of another model?)")
                # peft's merge: weight.data += delta (computed in the promoted dtype, stored in the weight's)
                merged = torch.add(weight, delta).to(weight.dtype)
                writer.write_tensor(name, merged)
                del weight, delta, merged
        writer.finish(index=False, single_name=target.name)
    except BaseException:
        writer.abort()
        raise
    finally:
        opened.clear()
    return set(targets.values())


def _lora_delta(lora_a, lora_b, *, embedding: bool, fan_in_fan_out: bool, scaling: float):
    """ΔW exactly as peft's `get_delta_weight` computes it (fp16/bf16 factors multiplied in fp32)."""
    import torch

    dtype = lora_b.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    product = lora_b.to(compute) @ lora_a.to(compute)
    if embedding or fan_in_fan_out:
        product = product.T
    return (product * scaling).to(dtype)
