"""The pipeline's one `runtime` setting (device, dtype), applied to every stage.

Each stage keeps its own settings (a method's `device`/`dtype`, `merge.cuda`/`merge.dtype`,
`eval.device`), because each is also usable alone from the CLI. In a pipeline, `runtime` fills
the ones the file leaves unset, so one line (`runtime: {device: cuda, dtype: bfloat16}`) moves
the whole experiment to a GPU in bf16. Nothing is added while `runtime` is `auto`, so the
fingerprints (and resumability) of existing run directories do not change.
"""

from __future__ import annotations

from typing import Any

from spunge_merge.config import FrozenConfig
from spunge_merge.pipeline.schema import Pipeline, apply_changes


def _given(pipeline: Pipeline) -> dict[str, str]:
    runtime = pipeline.runtime
    return {key: value for key, value in (("device", runtime.device), ("dtype", runtime.dtype)) if value != "auto"}


def method_settings(pipeline: Pipeline, config: FrozenConfig) -> FrozenConfig:
    """An unlearning run's settings: `config`, with the runtime's device and dtype where the method
    has such a setting and `config` leaves it unset (the object itself when nothing changes)."""
    changes = {key: value for key, value in _given(pipeline).items()
               if key in type(config).model_fields and key not in config.model_fields_set}
    return apply_changes(config, changes) if changes else config


def merge_dtype(pipeline: Pipeline) -> str | None:
    """`merge.dtype`, else the runtime's dtype (None: the base weights' dtype)."""
    return pipeline.merge.dtype or _given(pipeline).get("dtype")


def merge_cuda(pipeline: Pipeline) -> bool | None:
    """`merge.cuda`, else whether the runtime's device is a GPU (None: when one is available)."""
    if pipeline.merge.cuda is not None:
        return pipeline.merge.cuda
    device = _given(pipeline).get("device")
    return None if device is None else device.startswith("cuda")


def eval_settings(pipeline: Pipeline, accepted: set[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One evaluation's keyword arguments with the device (`eval.device`, else the runtime's) and
    the runtime's dtype, where the function takes them and the section does not set them."""
    given = _given(pipeline)
    device = pipeline.eval.device if pipeline.eval.device != "auto" else given.get("device", "auto")
    defaults = {"device": device, **({"dtype": given["dtype"]} if "dtype" in given else {})}
    return {**{key: value for key, value in defaults.items() if key in (accepted or ())}, **kwargs}
