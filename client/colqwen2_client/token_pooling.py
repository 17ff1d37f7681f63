"""Fewer vectors per image: hierarchical token pooling at index time, as colpali-engine's
`HierarchicalTokenPooler` does, and the row and column means a first stage searches.

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


def rows_cols(vectors: np.ndarray, grid: tuple[int, int], offset: int) -> tuple[np.ndarray, np.ndarray]:
    """An image's first-stage vectors, as Qdrant's ColPali guide builds them: the mean of each row and of
    each column of its visual tokens, each with the prompt's other tokens kept as they are.

    `vectors` float32 [n, d] hold rows * cols visual tokens, row by row, from `offset` (the image
    ensemble's `visual_token_offset`); the prompt's text tokens come before and after them.
    -> (rows: [offset + r + rest, d], cols: [offset + c + rest, d]), rows L2-normalised.
    """
    r, c = grid
    end = offset + r * c
    if r < 1 or c < 1 or offset < 0 or end > len(vectors):
        raise ValueError(f"a {r} x {c} grid at offset {offset} does not fit {len(vectors)} vectors")
    visual = vectors[offset:end].astype(np.float32).reshape(r, c, -1)
    prefix, suffix = vectors[:offset], vectors[end:]

    def normalised(pooled: np.ndarray) -> np.ndarray:
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    rows = np.concatenate([prefix, normalised(visual.mean(axis=1)), suffix]).astype(np.float32)
    cols = np.concatenate([prefix, normalised(visual.mean(axis=0)), suffix]).astype(np.float32)
    return rows, cols
