"""Fewer vectors per image: hierarchical token pooling at index time, as colpali-engine's
`HierarchicalTokenPooler` does; the row and column means a first stage searches; an image's layout
(its regions' means), the first stage of image queries.

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


def _split(vectors: np.ndarray, grid: tuple[int, int], offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt tokens before, visual tokens as [rows, cols, d] float32, prompt tokens after) of an image's vectors."""
    r, c = grid
    end = offset + r * c
    if r < 1 or c < 1 or offset < 0 or end > len(vectors):
        raise ValueError(f"a {r} x {c} grid at offset {offset} does not fit {len(vectors)} vectors")
    return vectors[:offset], vectors[offset:end].astype(np.float32).reshape(r, c, -1), vectors[end:]


def _normalised(pooled: np.ndarray) -> np.ndarray:
    return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def rows_cols(vectors: np.ndarray, grid: tuple[int, int], offset: int) -> tuple[np.ndarray, np.ndarray]:
    """An image's first-stage vectors, as Qdrant's ColPali guide builds them: the mean of each row and of
    each column of its visual tokens, each with the prompt's other tokens kept as they are.

    `vectors` float32 [n, d] hold rows * cols visual tokens, row by row, from `offset` (the image
    ensemble's `visual_token_offset`); the prompt's text tokens come before and after them.
    -> (rows: [offset + r + rest, d], cols: [offset + c + rest, d]), rows L2-normalised.
    """
    prefix, visual, suffix = _split(vectors, grid, offset)
    rows = np.concatenate([prefix, _normalised(visual.mean(axis=1)), suffix]).astype(np.float32)
    cols = np.concatenate([prefix, _normalised(visual.mean(axis=0)), suffix]).astype(np.float32)
    return rows, cols


def layout(vectors: np.ndarray, grid: tuple[int, int], offset: int, cells: int = 2) -> np.ndarray:
    """One vector that keeps an image's layout: its visual tokens split into cells x cells regions (by
    relative position, so a chart at 500 x 200 and at 1000 x 400 line up), each region's L2-normalised
    mean, concatenated: float32 [cells * cells * d], unit length. Its cosine to another image's is the mean
    of their regions' cosines: the first stage that finds an image's near-duplicates (the prompt's tokens,
    the same in every image, are left out).
    `vectors`, `grid`, `offset` as for rows_cols; a grid smaller than `cells` repeats its rows or columns."""
    _, visual, _ = _split(vectors, grid, offset)
    r, c = grid
    rb, cb = np.linspace(0, r, cells + 1), np.linspace(0, c, cells + 1)
    regions = []
    for i in range(cells):
        r0 = min(int(rb[i]), r - 1)
        r1 = max(int(rb[i + 1]), r0 + 1)
        for j in range(cells):
            c0 = min(int(cb[j]), c - 1)
            c1 = max(int(cb[j + 1]), c0 + 1)
            regions.append(visual[r0:r1, c0:c1].reshape(-1, visual.shape[-1]).mean(axis=0))
    return (_normalised(np.stack(regions)) / np.float32(cells)).reshape(-1).astype(np.float32)


def cells(vectors: np.ndarray, grid: tuple[int, int], offset: int, size: int = 2) -> np.ndarray:
    """An image's visual tokens pooled `size` x `size` (a grid's last row or column of cells may be narrower): each
    cell's L2-normalised mean, row by row: float32 [ceil(rows / size) * ceil(cols / size), d]. The points of first
    stage `cells`, which text queries search token by token (the prompt's tokens, alike in every image, are left
    out). `vectors`, `grid`, `offset` as for rows_cols."""
    _, visual, _ = _split(vectors, grid, offset)
    r, c, d = visual.shape
    pr, pc = -r % size, -c % size
    # pad to whole cells with zeros and divide by each cell's real token count
    padded = np.zeros((r + pr, c + pc, d), np.float32)
    padded[:r, :c] = visual
    counts = np.zeros((r + pr, c + pc, 1), np.float32)
    counts[:r, :c] = 1
    shape = ((r + pr) // size, size, (c + pc) // size, size)
    sums = padded.reshape(*shape, d).sum(axis=(1, 3))
    n = counts.reshape(*shape, 1).sum(axis=(1, 3))
    return _normalised((sums / n).reshape(-1, d)).astype(np.float32)
