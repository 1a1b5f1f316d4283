"""mergekit's planner, setting aside every tensor whose inputs all hold the base's bytes (to be copied, not computed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spunge_merge.merge.copying import _resolve
from spunge_merge.tensorfiles import TensorSlot, same_bytes


@dataclass
class _Job:
    """One output tensor mergekit computes: its name, task, output dtype, and whether it may be absent."""

    name: str
    task: Any
    dtype: str | None
    optional: bool


def _planner_class():
    from mergekit.plan import MergePlanner

    class CopyingPlanner(MergePlanner):
        """mergekit's planner, except that a tensor all of whose inputs hold the base's bytes is set aside
        to be copied instead of planned (planning costs a parameter resolution per tensor and model)."""

        def __init__(self, *args, slots, changed_by, negative_zeros: set[str] | None, copyable: bool, **kwargs):
            super().__init__(*args, **kwargs)
            self.copies: list[tuple[str, TensorSlot, str | None, str | None, tuple, bool]] = []
            # keyed by the references' text: the planner holds copies of the recipe's references, and comparing
            # those pydantic models field by field was most of the planning time
            self._slots = {str(ref): found for ref, found in slots.items()}
            self._changed_by = {str(ref): names for ref, names in changed_by.items()}
            self._copyable, self._same = copyable, {}
            self._negative_zeros = negative_zeros

        def plan_tensor(self, weight, weights_in, models, cfg_reader):
            keys = [str(ref) for ref in models]
            source = self._copy_source(weights_in, keys, cfg_reader.base_model) if self._copyable else None
            if weight.optional and not any(name in self._slots[key] for key, w in zip(keys, weights_in, strict=True)
                                           for name in (w.name, *(w.aliases or ()))):
                source = None  # mergekit skips an optional weight no input holds under its own name (a tied lm_head)
            if source is None:
                return super().plan_tensor(weight, weights_in, models, cfg_reader)
            base_slot, in_dtype = source
            if self._negative_zeros is not None and base_slot.name in self._negative_zeros:
                return super().plan_tensor(weight, weights_in, models, cfg_reader)  # base + 0 flips its -0.0: compute it
            self.copies.append((weight.name, base_slot, in_dtype, weight.force_dtype or self.config.out_dtype,
                                (weight, weights_in, models, cfg_reader), self._negative_zeros is None))

        def plan_later(self, args) -> _Job:
            """Plan a tensor set aside for copying after all (it holds a -0.0)."""
            before = len(self._tensors)
            super().plan_tensor(*args)
            weight, task = self._tensors[before]
            return _Job(weight.name, task, weight.force_dtype or self.config.out_dtype, weight.optional)

        def _copy_source(self, weights_in, keys: list[str], base_ref):
            base_key = str(base_ref) if base_ref is not None else None
            if base_key is None or base_key not in keys or self._tokenizer_task is not None:
                return None
            base_weight = weights_in[keys.index(base_key)]
            base_name = _resolve(self._slots[base_key], base_weight)
            if base_name is None:
                return None
            base_slot = self._slots[base_key][base_name]
            for key, weight in zip(keys, weights_in, strict=True):
                if key == base_key:
                    continue
                name = _resolve(self._slots[key], weight)
                if name is None:
                    return None
                if key in self._changed_by:  # a view over this base: what it did not change is the base's by construction
                    if name != base_name or name in self._changed_by[key]:
                        return None
                    continue
                slot = self._slots[key][name]
                pair = (slot.file, slot.start, base_slot.file, base_slot.start)
                if pair not in self._same:
                    self._same[pair] = same_bytes(slot, base_slot)
                if not self._same[pair]:
                    return None
            return base_slot, base_weight.force_dtype or self.config.dtype

    return CopyingPlanner
