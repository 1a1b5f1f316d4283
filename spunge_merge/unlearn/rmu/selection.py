"""Which checkpoint tensors RMU trains, checked against the model before anything is loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass

from spunge_merge.errors import SpungeError
from spunge_merge.models import ResolvedModel
from spunge_merge.tensorfiles import weight_files
from spunge_merge.unlearn.partial_model import model_depth
from spunge_merge.unlearn.rmu.settings import RMUConfig

_LAYER_NAME = re.compile(r"^(?:(?P<prefix>.+)\.)?layers\.(?P<layer>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class Selection:
    tensors: tuple[str, ...]  # checkpoint tensor names, e.g. model.layers.5.mlp.down_proj.weight
    first_layer: int  # lowest layer holding one of them
    depth: int  # decoder layers of the full model


def select_tensors(resolved: ResolvedModel, config: RMUConfig) -> Selection:
    """The checkpoint tensors RMU updates, checked against the model before anything is loaded."""
    from transformers import AutoConfig

    depth = model_depth(AutoConfig.from_pretrained(resolved.path))
    if config.layer >= depth:
        raise SpungeError(f"--layer {config.layer} is beyond the depth of {resolved.ref}: it has {depth} decoder layers (0..{depth - 1})")
    names = sorted(weight_files(resolved.path))
    chosen: list[tuple[int, str]] = []
    if config.param_regex is not None:
        pattern = re.compile(config.param_regex)
        for name in names:
            if pattern.fullmatch(name):
                match = _LAYER_NAME.match(name)
                if match is None:
                    raise SpungeError(f"--param-regex matches {name}, which is not inside a decoder layer; RMU updates "
                                      "decoder-layer tensors only")
                chosen.append((int(match["layer"]), name))
        what = f"--param-regex '{config.param_regex}'"
    else:
        missing = sorted(i for i in config.update_layers if i >= depth)
        if missing:
            raise SpungeError(f"--update-layers {missing[0]} is beyond the depth of {resolved.ref} ({depth} layers)")
        pattern = re.compile(config.update_params)
        for name in names:
            match = _LAYER_NAME.match(name)
            if match and int(match["layer"]) in config.update_layers and pattern.fullmatch(match["rest"]):
                chosen.append((int(match["layer"]), name))
        what = f"--update-params '{config.update_params}' in layers {','.join(map(str, config.update_layers))}"
    if not chosen:
        raise SpungeError(f"{what} matches no tensor of {resolved.ref} (names look like {names[len(names) // 2]})")
    above = [(layer, name) for layer, name in chosen if layer > config.layer]
    if above:
        raise SpungeError(f"{above[0][1]} is in layer {above[0][0]}, above --layer {config.layer}: it cannot affect layer "
                          f"{config.layer}'s output, which is all the RMU loss reads")
    return Selection(tensors=tuple(name for _, name in sorted(chosen)), first_layer=min(layer for layer, _ in chosen), depth=depth)

