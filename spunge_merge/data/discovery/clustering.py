"""k-means on sentence embeddings, K fixed or chosen by silhouette, clusters ordered by size.

scikit-learn's KMeans with a fixed `random_state` and several restarts (`n_init`) is
deterministic for a given seed; clusters are then renumbered from the largest down, so the
numbering does not depend on k-means' arbitrary label order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spunge_merge.errors import SpungeError

MIN_ROWS = 3  # fewer cannot be split into two clusters that a silhouette can judge
N_INIT = 10
SILHOUETTE_SAMPLE = 5000  # above this many rows, the silhouette is estimated on a fixed-seed sample


@dataclass(frozen=True)
class Clustering:
    labels: np.ndarray  # cluster index per row, 0 = the largest cluster
    centroids: np.ndarray  # (k, dim), in the same order
    k: int
    silhouette: dict[int, float]  # K -> silhouette score (every K tried; only the chosen one when K is given)


def check_k(k: int | None, k_range: tuple[int, int], rows: int, source: str) -> tuple[int, int]:
    """The K values to try, or a one-line error naming the problem (before any work is done)."""
    if rows < MIN_ROWS:
        raise SpungeError(f"{source}: too few rows to cluster: {rows} after filtering (need at least {MIN_ROWS})")
    if k is not None:
        if k < 2:
            raise SpungeError(f"{source}: K={k}: need at least 2 clusters")
        if k > rows:
            raise SpungeError(f"{source}: K={k} is more than the {rows} rows to cluster")
        return k, k
    low, high = k_range
    if low >= rows:
        raise SpungeError(f"{source}: --k-range {low}-{high} starts at or above the {rows} rows to cluster")
    return low, min(high, rows - 1)  # silhouette is defined for 2 <= K <= rows - 1


def _kmeans(vectors: np.ndarray, k: int, seed: int):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit(vectors)


def _silhouette(vectors: np.ndarray, labels: np.ndarray, seed: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(set(labels.tolist())) < 2 or len(set(labels.tolist())) >= len(labels):
        return float("nan")
    sample = SILHOUETTE_SAMPLE if len(labels) > SILHOUETTE_SAMPLE else None
    return float(silhouette_score(vectors, labels, sample_size=sample, random_state=seed))


def cluster(vectors: np.ndarray, k_values: tuple[int, int], seed: int) -> Clustering:
    """k-means for every K in `k_values` (inclusive); keep the K with the best silhouette."""
    low, high = k_values
    fits, scores = {}, {}
    for k in range(low, high + 1):
        fits[k] = _kmeans(vectors, k, seed)
        scores[k] = _silhouette(vectors, fits[k].labels_, seed)
    best = low if low == high else max(scores, key=lambda k: (np.nan_to_num(scores[k], nan=-2.0), -k))
    fit = fits[best]
    raw = fit.labels_
    # Largest cluster first; ties by the first row that belongs to the cluster.
    order = sorted(range(best), key=lambda c: (-int((raw == c).sum()), int(np.argmax(raw == c))))
    renumber = np.empty(best, dtype=np.int64)
    renumber[order] = np.arange(best)
    return Clustering(labels=renumber[raw], centroids=fit.cluster_centers_[order], k=best,
                      silhouette={k: round(v, 4) for k, v in scores.items()})


def representatives(vectors: np.ndarray, labels: np.ndarray, centroids: np.ndarray, count: int = 3) -> dict[int, list[int]]:
    """Per cluster, the rows nearest its centroid: the examples a person reads first."""
    result = {}
    for c in range(len(centroids)):
        rows = np.flatnonzero(labels == c)
        distance = np.linalg.norm(vectors[rows] - centroids[c], axis=1)
        result[c] = [int(rows[i]) for i in np.lexsort((rows, distance))[:count]]
    return result
