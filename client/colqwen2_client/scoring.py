"""MaxSim, the late-interaction score: for each query vector its best match in the document, summed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .types import Embedding


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """query [q, d], document [n, d] -> sum over query rows of the max dot product."""
    return float((query.astype(np.float32) @ document.astype(np.float32).T).max(axis=1).sum())


def maxsim_scores(query: Embedding | np.ndarray, documents: Sequence[Embedding | np.ndarray]) -> np.ndarray:
    """One MaxSim score per document, float32 [len(documents)]."""
    q = query.vectors if isinstance(query, Embedding) else query
    return np.array([maxsim(q, d.vectors if isinstance(d, Embedding) else d) for d in documents], dtype=np.float32)
