"""Batches of items -> the feeds of one ONNX Runtime call, and its outputs -> one array per item.

The two graphs take padded batches: the vision encoder images of different grids (patches padded
to the longest, with a patch mask), the text encoder sequences of different lengths (left padded,
as colpali-engine pads). `plan_calls` groups items of similar size into calls bounded by a token
budget, so that padding stays small and memory stays bounded whatever Triton hands over.
Used by the serving runners and by the export's validation, so that both run the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .grid import PATCH_VALUES, PATCHES_PER_TOKEN, patch_positions, sequence_positions


@dataclass(frozen=True)
class ImageItem:
    """One preprocessed image: its patches in the processor's order and its grid of visual tokens."""

    patches: np.ndarray  # uint8 [rows * cols * 4, 588]
    grid: tuple[int, int]  # (rows, cols) of visual tokens

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1] * PATCHES_PER_TOKEN


@dataclass(frozen=True)
class TextItem:
    """One sequence for the text encoder: a query, or an image prompt with its visual features."""

    input_ids: np.ndarray  # int64 [T], unpadded
    visual: np.ndarray | None = None  # float32 [rows * cols, hidden]: replaces the image tokens, in order
    grid: tuple[int, int] | None = None  # the image's grid; None for a query


def plan_calls(
    costs: Sequence[int], budget: int, max_items: int = 0, max_padding: float | None = None
) -> list[list[int]]:
    """Indices grouped into calls, smallest first: each call's padded size (items x largest cost) stays
    within `budget` and its item count within `max_items` (0: no limit). An item larger than the
    budget gets a call of its own. Sorting by size keeps items of one call close in size. `max_padding`
    (None: any): a call's padded size stays within (1 + max_padding) x its items' own total, so 0 groups
    only items of one size (a CPU computes padding as surely as data; a GPU does it in parallel)."""
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    calls: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        full = max_items and len(current) >= max_items
        padded = (len(current) + 1) * costs[i]
        wasteful = max_padding is not None and padded > (1 + max_padding) * (total + costs[i])
        if current and (full or padded > budget or wasteful):
            calls.append(current)
            current, total = [], 0
        current.append(i)
        total += costs[i]
    if current:
        calls.append(current)
    return calls


def vision_feed(items: Sequence[ImageItem]) -> dict[str, np.ndarray]:
    """Images -> patches uint8 [B, N, 588], patch_positions int64 [B, N, 2], patch_mask int64 [B, N]."""
    longest = max(item.n_patches for item in items)
    patches = np.zeros((len(items), longest, PATCH_VALUES), dtype=np.uint8)
    positions = np.zeros((len(items), longest, 2), dtype=np.int64)
    mask = np.zeros((len(items), longest), dtype=np.int64)
    for i, item in enumerate(items):
        n = item.n_patches
        if item.patches.shape != (n, PATCH_VALUES):
            raise ValueError(f"image {i}: patches {item.patches.shape} do not fill a {item.grid} grid")
        patches[i, :n] = item.patches
        positions[i, :n] = patch_positions(*item.grid)
        mask[i, :n] = 1
    return {"patches": patches, "patch_positions": positions, "patch_mask": mask}


def split_visual(features: np.ndarray, items: Sequence[ImageItem]) -> list[np.ndarray]:
    """The vision encoder's [B, N/4, hidden] -> each image's [rows * cols, hidden] (padding dropped)."""
    return [features[i, : item.grid[0] * item.grid[1]] for i, item in enumerate(items)]


def text_feed(items: Sequence[TextItem], pad_id: int, image_token_id: int, hidden: int) -> dict[str, np.ndarray]:
    """Sequences -> the text encoder's five inputs, left padded to the longest.

    Each image prompt's visual features are stacked into `visual_features`, and `visual_index`
    points every image token at its row (-1 elsewhere). A call without images still passes one
    zero row, because an axis of length 0 is not something every runtime builds for.
    """
    longest = max(len(item.input_ids) for item in items)
    b = len(items)
    ids = np.full((b, longest), pad_id, dtype=np.int64)
    mask = np.zeros((b, longest), dtype=np.int64)
    positions = np.zeros((3, b, longest), dtype=np.int64)
    index = np.full((b, longest), -1, dtype=np.int64)
    rows: list[np.ndarray] = []
    used = 0
    for i, item in enumerate(items):
        t = len(item.input_ids)
        start = longest - t
        ids[i, start:] = item.input_ids
        mask[i, start:] = 1
        positions[:, i, start:] = sequence_positions(item.input_ids, image_token_id, item.grid)
        if item.visual is not None:
            where = np.flatnonzero(np.asarray(item.input_ids) == image_token_id)
            if len(where) != len(item.visual):
                raise ValueError(f"sequence {i}: {len(where)} image tokens for {len(item.visual)} visual rows")
            index[i, start + where] = used + np.arange(len(where))
            rows.append(np.asarray(item.visual, dtype=np.float32))
            used += len(where)
    visual = np.concatenate(rows) if rows else np.zeros((1, hidden), dtype=np.float32)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions,
        "visual_features": visual,
        "visual_index": index,
    }


def split_text(embeddings: np.ndarray, items: Sequence[TextItem]) -> list[np.ndarray]:
    """The text encoder's [B, T, 128] -> each sequence's own [len, 128] (left padding dropped)."""
    longest = embeddings.shape[1]
    return [embeddings[i, longest - len(item.input_ids) :] for i, item in enumerate(items)]
