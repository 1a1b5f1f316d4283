"""Shared fixtures: a tiny random Llama model with a real tokenizer, and small datasets.

The tiny model follows mergekit's own tests: a real architecture, built from a config, a
few layers and a hidden size of 32, saved as safetensors in a temp dir.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never write into the user's cache (merge views, file digests, converted models).
os.environ["SPUNGE_CACHE"] = tempfile.mkdtemp(prefix="spunge-test-cache-")
atexit.register(shutil.rmtree, os.environ["SPUNGE_CACHE"], ignore_errors=True)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "cats and dogs live together in the small house",
    "paris is the capital of france and berlin is the capital of germany",
    "water boils at one hundred degrees celsius at sea level",
    "the sun rises in the east and sets in the west",
    "a group of people walked to the market to buy bread",
    "numbers like one two three four five six seven eight nine ten",
]


def _build_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    return fast


def build_tiny_llama(path: Path, *, layers: int = 8, hidden: int = 32, seed: int = 0,
                     tie_word_embeddings: bool = False) -> Path:
    """A random LlamaForCausalLM (fp32, safetensors) with a BPE tokenizer, saved at `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=tie_word_embeddings,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Path of a session-wide tiny Llama model directory (treat as read-only)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """A jsonl with a `group` attribute (3 values), a numeric `score` and `text`."""
    rows = []
    for i, text in enumerate(TINY_CORPUS * 3):
        rows.append({"text": f"{text} {i}", "group": ["alpha", "beta", "gamma"][i % 3], "score": i % 5})
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
