"""mergekit's magnitude pruning (TIES' trim step) in linear time, with mergekit's exact result.

mergekit keeps the top-k magnitudes of a task vector by fully sorting it (`argsort`), which is most
of the time of a TIES merge on CPU. The kept set is the same whatever the algorithm when the k-th
largest magnitude is not tied with a dropped one, and a selection (numpy's introselect) finds it in
linear time. So:

- no tie at the boundary: keep |τ| >= the k-th largest magnitude (the same set argsort keeps);
- boundary at 0: keep |τ| > 0 (argsort also keeps some zeros, but a kept zero and a dropped zero
  both give the same ±0 in `τ * mask`);
- any other tie (NaNs included: they never compare >= the threshold, so the count is off) or a tensor
  not on the CPU: mergekit's own function decides.

The mask then goes through mergekit's own `rescaled_masked_tensor`, and everything else in the merge
is mergekit's; the tests check the whole output bit for bit against `mergekit-yaml`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()


def magnitude(tensor, density: float, rescale_norm=None):
    """Drop-in for `mergekit.sparsify.magnitude` (same arguments, bit-identical result)."""
    import numpy as np
    from mergekit import sparsify as mk

    numel = tensor.numel()
    if density >= 1 or density <= 0 or numel == 0 or tensor.device.type != "cpu":
        return mk.magnitude(tensor, density=density, rescale_norm=rescale_norm)
    k = max(1, int(density * numel))
    if k >= numel:
        return mk.magnitude(tensor, density=density, rescale_norm=rescale_norm)
    magnitudes = tensor.abs().reshape(-1).float()
    threshold = float(np.partition(magnitudes.numpy(), numel - k)[numel - k])  # the k-th largest (introselect)
    if threshold == 0.0:
        keep = magnitudes > 0  # (a NaN, kept or not, gives NaN: NaN * 0 is NaN)
    else:
        keep = magnitudes >= threshold
        if int(keep.sum()) != k:  # a tie at the boundary (or NaNs): which ones argsort keeps is mergekit's call
            return mk.magnitude(tensor, density=density, rescale_norm=rescale_norm)
    mask = keep.to(tensor.dtype).reshape_as(tensor)
    return mk.rescaled_masked_tensor(tensor, mask, rescale_norm)


@contextlib.contextmanager
def linear_time_pruning() -> Iterator[None]:
    """Within the block, mergekit's task-arithmetic methods prune with `magnitude` above."""
    from mergekit.merge_methods import generalized_task_arithmetic as gta
    from mergekit.sparsify import SparsificationMethod

    original = gta.sparsify

    def sparsify(tensor, density, method, gamma=0, epsilon=0, rescale_norm=None):
        if method == SparsificationMethod.magnitude:
            return magnitude(tensor, density=density, rescale_norm=rescale_norm)
        return original(tensor, density=density, method=method, gamma=gamma, epsilon=epsilon, rescale_norm=rescale_norm)

    with _LOCK:
        gta.sparsify = sparsify
        try:
            yield
        finally:
            gta.sparsify = original
