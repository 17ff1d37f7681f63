"""What the SDK returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._constants import EMBEDDING_DIM


@dataclass(frozen=True)
class Embedding:
    """One image's or query's vectors."""

    vectors: np.ndarray  # float32 [n, 128], L2-normalised rows
    pooled: np.ndarray  # float32 [128], the mean of `vectors`, L2-normalised
    dim: int = field(default=EMBEDDING_DIM)

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The original service's JSON: `embedding` is the single pooled vector."""
        return {
            "embedding": self.pooled.tolist(),
            "dim": self.dim,
            "vectors": self.vectors.tolist(),
            "num_vectors": self.num_vectors,
        }

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray], row: int = 0) -> Embedding:
        """Row `row` of an ensemble's `embeddings` / `num_vectors` / `pooled` outputs."""
        count = int(outputs["num_vectors"][row].reshape(-1)[0])
        vectors = np.ascontiguousarray(outputs["embeddings"][row, :count], dtype=np.float32)
        return cls(vectors=vectors, pooled=np.ascontiguousarray(outputs["pooled"][row], dtype=np.float32))
