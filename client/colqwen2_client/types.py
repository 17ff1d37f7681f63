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
    # An image's grid of visual tokens (rows, cols) at its native resolution; None for a query. Its
    # rows * cols visual vectors are one run of `vectors`, row by row, starting at the image ensemble's
    # config parameter `visual_token_offset` (the prompt's text tokens come before and after).
    grid: tuple[int, int] | None = None

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The original service's JSON (`embedding` is the single pooled vector), plus `grid` for an image."""
        out: dict[str, Any] = {
            "embedding": self.pooled.tolist(),
            "dim": self.dim,
            "vectors": self.vectors.tolist(),
            "num_vectors": self.num_vectors,
        }
        if self.grid is not None:
            out["grid"] = list(self.grid)
        return out

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray], row: int = 0) -> Embedding:
        """Row `row` of an ensemble's `embeddings` / `num_vectors` / `pooled` outputs."""
        count = int(outputs["num_vectors"][row].reshape(-1)[0])
        vectors = np.ascontiguousarray(outputs["embeddings"][row, :count], dtype=np.float32)
        pooled = np.ascontiguousarray(outputs["pooled"][row], dtype=np.float32)
        grid = outputs.get("grid")
        shape = None if grid is None else (int(grid[row].reshape(-1)[0]), int(grid[row].reshape(-1)[1]))
        return cls(vectors=vectors, pooled=pooled, grid=shape)
