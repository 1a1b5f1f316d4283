"""The truncated decoder (layers 0..ℓ), split into a frozen prefix that runs once per batch and a trainable suffix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spunge_merge.errors import SpungeError

_RECORDER_CLASS = None


def _recorder_for(layer):
    """A module standing in for `layer` during the prefix pass: records its call, returns its input."""
    global _RECORDER_CLASS
    if _RECORDER_CLASS is None:
        import torch

        class LayerRecorder(torch.nn.Module):
            call: tuple | None = None

            def forward(self, hidden_states, *args, **kwargs):
                self.call = (hidden_states, args, kwargs)
                return hidden_states

        _RECORDER_CLASS = LayerRecorder
    recorder = _RECORDER_CLASS()
    for attribute in ("attention_type", "layer_idx", "is_sliding", "sliding_window"):  # read by some models' layer loops
        if hasattr(layer, attribute):
            setattr(recorder, attribute, getattr(layer, attribute))
    return recorder


@dataclass
class PrefixOutput:
    """Input of the first updated layer, and the arguments the model passes to each later layer."""

    hidden: Any
    calls: list[tuple[tuple, dict]]


class SplitDecoder:
    """Layers 0..ℓ of a base model: `prefix` runs the frozen bottom once, `suffix` the rest.

    The prefix runs through the model's own forward (embeddings, rotary embeddings, masks), with
    layers first..ℓ replaced by recorders that capture the exact arguments each would receive,
    so per-layer masks (sliding windows) stay right. `suffix` then calls the real layers.
    """

    def __init__(self, model, *, layer: int, first_layer: int):
        if len(model.layers) != layer + 1:
            raise ValueError(f"model has {len(model.layers)} layers, expected {layer + 1} (truncate it first)")
        self.model = model
        self.layer = layer
        self.first_layer = first_layer

    def prefix(self, input_ids, attention_mask) -> PrefixOutput:
        import torch

        layers = self.model.layers
        originals = {i: layers[i] for i in range(self.first_layer, self.layer + 1)}
        recorders = {i: _recorder_for(layer) for i, layer in originals.items()}
        try:
            for i, recorder in recorders.items():
                layers[i] = recorder
            with torch.no_grad():
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for i, original in originals.items():
                layers[i] = original
        calls = [recorders[i].call for i in sorted(recorders)]
        if any(call is None or call[0] is not calls[0][0] for call in calls):
            # The model's layer loop does more than `hidden = layer(hidden, ...)` (e.g. `layer(...)[0]`).
            raise SpungeError(f"{type(self.model).__name__}: its decoder-layer loop is not the plain `hidden = layer(hidden, ...)` "
                              "that RMU's prefix reuse relies on; this architecture is not supported")
        return PrefixOutput(hidden=calls[0][0], calls=[(args, kwargs) for _, args, kwargs in calls])

    def suffix(self, prefix: PrefixOutput, weights: dict[int, dict[str, Any]] | None = None):
        """Layer ℓ's output; `weights` (layer → {param name: tensor}) replaces parameters for this call."""
        from torch.func import functional_call

        hidden = prefix.hidden
        for offset, (args, kwargs) in enumerate(prefix.calls):
            index = self.first_layer + offset
            layer = self.model.layers[index]
            if weights and index in weights:
                out = functional_call(layer, weights[index], (hidden, *args), kwargs, strict=False)
            else:
                out = layer(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

