"""The statistics pass of data-dependent merges: Gram matrices of linear layers' inputs, from forward passes only.

`anchored_ls` (see `methods.py`) needs, per linear weight W that some run changed, G = XᵀX of that layer's
inputs X (one row per non-padding token) on each run's forget data and on the retain data. A forward pass
with a pre-hook on each such `nn.Linear` collects them (float64 sums; the token count goes into the file's
metadata, so the merge can divide by it). Each file is stored as `gram.safetensors` with a `spunge.json`
(time, bytes, tokens, rows) in a directory named by what it depends on (model weights, texts, tensors,
token limit): the next merge of the same runs reads it again instead of recomputing it.
"""

from __future__ import annotations

import time
from pathlib import Path

from spunge_merge.data.loading import SPLIT_MANIFEST, read_texts
from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, read_json, sha256_texts
from spunge_merge.merge.settings import StatisticsSettings
from spunge_merge.models import ResolvedModel, cache_root, load_causal_lm, load_tokenizer
from spunge_merge.provenance import fingerprint, is_complete, read_provenance, write_provenance

GRAM_FILE = "gram.safetensors"
STATS_KIND = "gram-statistics"
STATS_FORMAT = 1


def default_stats_dir() -> Path:
    return cache_root() / "merge-stats"


def input_grams(model: ResolvedModel, texts: list[str], names: set[str] | None, *, max_length: int,
                batch_size: int, loaded: dict | None = None) -> tuple[dict, int]:
    """({weight name: XᵀX of its layer's inputs}, tokens) over `texts`; `names` None = every linear layer.
    `loaded` (model path → (model, tokenizer)) keeps models loaded between calls."""
    import torch

    loaded = {} if loaded is None else loaded
    if model.path not in loaded:
        loaded[model.path] = (load_causal_lm(model), load_tokenizer(model))
    lm, tokenizer = loaded[model.path]
    sums: dict[str, torch.Tensor] = {}
    mask: list[torch.Tensor] = []

    def hook_for(weight_name: str):
        def hook(_module, args):
            x = args[0].detach()[mask[0]].double()
            sums[weight_name] = sums[weight_name] + x.T @ x if weight_name in sums else x.T @ x
        return hook

    handles = [module.register_forward_pre_hook(hook_for(f"{name}.weight")) for name, module in lm.named_modules()
               if isinstance(module, torch.nn.Linear) and (names is None or f"{name}.weight" in names)]
    tokens = 0
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                                  max_length=max_length)
                mask[:] = [batch["attention_mask"].bool()]
                tokens += int(mask[0].sum())
                lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        for handle in handles:
            handle.remove()
    return {name: gram.float().contiguous() for name, gram in sums.items()}, tokens


def statistics_file(model: ResolvedModel, texts: list[str], names: set[str] | None, *, label: str,
                    settings: StatisticsSettings, model_key: str, loaded: dict | None = None) -> Path:
    """The statistics file of `model` on `texts` (computed once; reused while its inputs are unchanged)."""
    from safetensors.torch import save_file

    from spunge_merge.fsutil import human_bytes

    texts = list(texts)[: settings.rows]
    if not texts:
        raise SpungeError(f"{label}: no texts to compute the statistics on")
    key = fingerprint(format=STATS_FORMAT, model=model_key, texts=sha256_texts(texts), names=sorted(names) if names else None,
                      max_length=settings.max_length)
    root = Path(settings.stats_dir).expanduser() if settings.stats_dir else default_stats_dir()
    out = root / f"{label}-{key[:12]}"
    if is_complete(out, key):
        return out / GRAM_FILE
    started = time.perf_counter()
    grams, tokens = input_grams(model, texts, names, max_length=settings.max_length, batch_size=settings.batch_size,
                                loaded=loaded)
    if not grams:
        raise SpungeError(f"{label}: none of the changed tensors is a linear layer's weight; nothing to anchor")
    seconds = time.perf_counter() - started
    with atomic_output_dir(out, force=True) as tmp:
        save_file(grams, str(tmp / GRAM_FILE), metadata={"format": "pt", "tokens": str(tokens), "rows": str(len(texts))})
        size = (tmp / GRAM_FILE).stat().st_size
        write_provenance(tmp, kind=STATS_KIND, fingerprint=key, method="gram", model=str(model.path),
                         config={**settings.model_dump(), "names": sorted(grams)},
                         data={"rows": len(texts), "sha256": sha256_texts(texts)},
                         result={"seconds": round(seconds, 3), "bytes": size, "size": human_bytes(size), "tokens": tokens,
                                 "tensors": len(grams)})
    return out / GRAM_FILE


def recorded_texts(record: dict | None, role: str, run: Path) -> list[str]:
    """The texts a run records as its `forget` or `retain` data (the files its spunge.json names)."""
    data = (record or {}).get("data") or {}
    parts = data.get(role)
    if role == "forget" and parts is None and isinstance(data.get("path"), str):
        parts = [data]  # a TVN run records its one subset as `data` itself
    if not isinstance(parts, list):
        return []
    texts: list[str] = []
    for part in parts:
        path = Path(part.get("path", "")) if isinstance(part, dict) else None
        if path is None or not path.is_file():
            raise SpungeError(f"{run}/spunge.json: its {role} data {path} is gone (the statistics pass reads it)")
        manifest = path.parent / SPLIT_MANIFEST
        column = (read_json(manifest).get("text_column") if manifest.is_file() else None) or "text"
        texts.extend(read_texts(path, column))
    return texts


def statistics_for_runs(runs: list, model_dirs: list[Path], base: ResolvedModel, settings: StatisticsSettings,
                        *, need_retain: bool) -> tuple[list[Path], Path | None]:
    """Per-run forget statistics and the retain statistics for merging `runs` (RunInput) whose views are `model_dirs`."""
    from spunge_merge.merge.views import model_identity

    changed: set[str] | None = set()
    for run, model_dir in zip(runs, model_dirs, strict=True):
        record = read_provenance(model_dir) or {}
        if model_dir == run.path or "changed" not in record:  # a full checkpoint: every linear layer
            changed = None
        elif changed is not None:
            changed |= set(record["changed"])
    retain_texts: list[str] = []
    if settings.retain_data:
        source = Path(settings.retain_data).expanduser()
        if not source.is_file():
            raise SpungeError(f"--retain-data {source}: no such file")
        retain_texts = read_texts(source)
    elif need_retain:
        for run in runs:
            retain_texts.extend(t for t in recorded_texts(run.record, "retain", run.path) if t not in retain_texts)
        if not retain_texts:
            raise SpungeError("anchored_ls with rho > 0 needs retain data: the runs record none; give --retain-data FILE "
                              "(or set rho=0)")
    base_key = model_identity(base.path)
    loaded: dict = {}  # the base is loaded once for all its files
    forget_files = []
    for run, model_dir in zip(runs, model_dirs, strict=True):
        texts = recorded_texts(run.record, "forget", run.path)
        if not texts:
            raise SpungeError(f"{run.path}/spunge.json: records no forget data, which anchored_ls needs for its statistics")
        if settings.inputs == "run":
            model, key = ResolvedModel(str(model_dir), model_dir), model_identity(model_dir)
        else:
            model, key = base, base_key
        forget_files.append(statistics_file(model, texts, changed, label=f"{run.name}-forget", settings=settings, model_key=key,
                                            loaded=loaded if model is base else None))
    retain_file = statistics_file(base, retain_texts, changed, label="retain", settings=settings, model_key=base_key,
                                  loaded=loaded) if retain_texts else None
    return forget_files, retain_file
