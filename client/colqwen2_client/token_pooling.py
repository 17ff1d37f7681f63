"""Hierarchical token pooling at index time, as colpali-engine's `HierarchicalTokenPooler` does.

An image's vectors are clustered (Ward linkage on 1 - cosine similarity) into at most
n // pool_factor clusters; each cluster becomes its L2-normalised mean. Storage shrinks by about
the pool factor; query vectors are never pooled. Needs scipy (the `[qdrant]` extra).
"""

from __future__ import annotations

import numpy as np


def pool_tokens(vectors: np.ndarray, pool_factor: int) -> np.ndarray:
    """float32 [n, d] -> float32 [<= max(n // pool_factor, 1), d]."""
    if pool_factor < 1:
        raise ValueError("pool_factor must be >= 1")
    if pool_factor == 1 or len(vectors) < 2:
        return vectors
    from scipy.cluster.hierarchy import fcluster, linkage

    vectors = vectors.astype(np.float32)
    distances = 1 - vectors @ vectors.T
    clusters = max(len(vectors) // pool_factor, 1)
    labels = fcluster(linkage(distances, metric="euclidean", method="ward"), t=clusters, criterion="maxclust") - 1
    pooled = []
    for cluster in range(clusters):
        members = vectors[labels == cluster]
        if len(members):
            mean = members.mean(axis=0)
            pooled.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.stack(pooled).astype(np.float32)
