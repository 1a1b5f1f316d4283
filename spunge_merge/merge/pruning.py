"""mergekit's magnitude pruning (TIES' trim step) in linear time, with mergekit's exact result.

mergekit keeps the top-k magnitudes of a task vector by fully sorting it (`argsort`), which is most
of the time of a TIES merge on CPU. The kept set is the same whatever the algorithm when the k-th
largest magnitude is not tied with a dropped one, and a selection (numpy's introselect) finds it in
linear time. `np.partition` leaves every value below the k-th largest to its left, so a tie across
the boundary is a value on the left equal to it. So:

- no tie at the boundary: keep |τ| >= the k-th largest magnitude (the same set argsort keeps);
- boundary at 0: keep |τ| > 0 (argsort also keeps some zeros, but a kept zero and a dropped zero
  both give the same ±0 in `τ * mask`);
- NaNs (numpy and torch both sort them above every number): a NaN gives NaN in `τ * mask` whether
  kept or not, so only the count of numbers kept matters, and the k-th largest accounts for them;
- any other tie, a k-th largest that is itself NaN, or a tensor not on the CPU: mergekit's own
  function decides (which of tied values torch's unstable argsort keeps is its own choice).

The mask then goes through mergekit's own `rescaled_masked_tensor`, and everything else in the merge
is mergekit's; the tests check this function and whole `merge_group` calls against mergekit's, and the
whole output bit for bit against `mergekit-yaml`.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

_LOCK = threading.Lock()


def magnitude(tensor, density: float, rescale_norm=None):
    """Drop-in for `mergekit.sparsify.magnitude` (same arguments, bit-identical result)."""
    import numpy as np
    import torch
    from mergekit import sparsify as mk

    numel = tensor.numel()
    if density >= 1 or density <= 0 or numel == 0 or tensor.device.type != "cpu":
        return mk.magnitude(tensor, density=density, rescale_norm=rescale_norm)
    k = max(1, int(density * numel))
    if k >= numel:
        return mk.magnitude(tensor, density=density, rescale_norm=rescale_norm)
    magnitudes = tensor.abs().reshape(-1).float().numpy()
    selected = np.partition(magnitudes, numel - k)  # the k largest on the right, the rest on the left
    threshold = selected[numel - k]
    mask = np.empty(numel, dtype=np.float32)
    if threshold == 0.0:
        np.greater(magnitudes, 0.0, out=mask)
    elif math.isnan(threshold) or selected[: numel - k].max() == threshold:
        return mk.magnitude(tensor, density=density, rescale_norm=rescale_norm)
    else:
        np.greater_equal(magnitudes, threshold, out=mask)
    return mk.rescaled_masked_tensor(tensor, torch.from_numpy(mask).to(tensor.dtype).reshape(tensor.shape), rescale_norm)


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
