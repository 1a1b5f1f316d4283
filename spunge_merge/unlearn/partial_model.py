"""Load only the bottom of a decoder model: embeddings and decoder layers 0..ℓ.

RMU reads the output of one decoder layer ℓ, so nothing above it (later layers, final norm's
consumers, LM head) can affect its loss. Building the model from its config with
`num_hidden_layers = ℓ + 1` and copying in only the tensors that model holds, read one by one
with `safe_open`, skips the rest of the checkpoint entirely: at Mistral-7B shape and ℓ = 7 that
is a quarter of the weights and none of the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spunge_merge.errors import SpungeError
from spunge_merge.models import ResolvedModel
from spunge_merge.tensorfiles import weight_files


def model_depth(config) -> int:
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int):
        raise SpungeError(f"model config ({type(config).__name__}) has no num_hidden_layers; RMU needs a decoder-only LM")
    return depth


@dataclass
class PartialDecoder:
    """The truncated base model (e.g. `LlamaModel` with ℓ + 1 layers) and its checkpoint names."""

    model: object  # transformers PreTrainedModel (base model class, no LM head)
    depth: int  # layers of the full model
    checkpoint_names: dict[str, str]  # parameter name in `model` → tensor name in the checkpoint files

    def layer_of(self, name: str) -> int | None:
        """Decoder layer index of a parameter name (`layers.5.mlp...` → 5), None outside the layers."""
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit():
            return int(parts[1])
        return None


def truncated_config(config, last_layer: int):
    """A copy of `config` keeping decoder layers 0..last_layer (per-layer lists cut to match)."""
    import copy

    depth = model_depth(config)
    cut = copy.deepcopy(config)
    cut.num_hidden_layers = last_layer + 1
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == depth:
        cut.layer_types = layer_types[: last_layer + 1]
    cut.use_cache = False
    return cut


def build_decoder(config, *, dtype, device):
    """An uninitialised base model for `config` on `device` (weights are copied in afterwards)."""
    import torch
    from transformers import AutoModel
    from transformers.initialization import no_init_weights

    with torch.device(device), no_init_weights():
        model = AutoModel.from_config(config, dtype=dtype)
    if not hasattr(model, "layers"):
        raise SpungeError(f"{type(model).__name__} keeps no `layers` list of decoder layers; RMU supports "
                          "decoder-only models laid out like Llama/Mistral/Qwen (model.layers.N)")
    return model


def load_partial_decoder(resolved: ResolvedModel, last_layer: int, *, dtype, device) -> PartialDecoder:
    """Embeddings and decoder layers 0..`last_layer` of `resolved`, read tensor by tensor from safetensors."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolved.path)
    depth = model_depth(config)
    if not 0 <= last_layer < depth:
        raise SpungeError(f"--layer {last_layer} is beyond the depth of {resolved.ref}: it has {depth} decoder "
                          f"layers (0..{depth - 1})")
    model = build_decoder(truncated_config(config, last_layer), dtype=dtype, device=device)
    index = weight_files(resolved.path)
    prefix = getattr(model, "base_model_prefix", "") or ""
    names: dict[str, str] = {}
    for name in model.state_dict():
        for candidate in (f"{prefix}.{name}" if prefix else name, name):
            if candidate in index:
                names[name] = candidate
                break
        else:
            raise SpungeError(f"{resolved.path}: checkpoint has no tensor for {name} (looked for '{prefix}.{name}')")
    by_file: dict[Path, list[str]] = {}
    for name, key in names.items():
        by_file.setdefault(index[key], []).append(name)
    state = model.state_dict()
    with torch.no_grad():
        for file, wanted in by_file.items():
            with safe_open(file, framework="pt") as handle:
                for name in wanted:
                    tensor = handle.get_tensor(names[name])
                    if tuple(tensor.shape) != tuple(state[name].shape):
                        raise SpungeError(f"{file.name}: tensor {names[name]} has shape {tuple(tensor.shape)}, "
                                          f"the config implies {tuple(state[name].shape)}")
                    state[name].copy_(tensor)
    model.eval()
    model.requires_grad_(False)
    return PartialDecoder(model=model, depth=depth, checkpoint_names=names)
