"""Grid, resize and position math of ColQwen2 (Qwen2-VL), in numpy: the one copy export and serving share.

An image of H x W pixels is resized to h x w (both multiples of 28, `smart_resize`), cut into
14 x 14 patches (h/14 x w/14 of them) and every 2 x 2 block of patches becomes one visual token:
the image's *grid* is (h/28 rows, w/28 cols) of visual tokens. This module holds, for one grid:

- `smart_resize`: the processor's target size, from the checkpoint's pixel limits;
- `patchify`: uint8 pixels -> uint8 patches in the processor's order (2 x 2 merge blocks adjacent),
  one row of 3 x 14 x 14 values per patch (channel, row, column: the patch embedding's kernel order);
- `patch_positions`: each patch's (row, col), the vision tower's 2-D rotary positions;
- `image_prompt_positions`: the language model's M-RoPE (temporal, height, width) position of every
  prompt token, as `Qwen2VLModel.get_rope_index` computes it for one image.

Nothing here imports torch: the serving preprocessing runs it on every request, and the exporter
feeds the same arrays to the graphs it validates (tests compare each function with transformers).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

PATCH_SIZE = 14
MERGE_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: sides are multiples of this
PIXELS_PER_TOKEN = FACTOR * FACTOR  # 784 pixels per visual token
PATCHES_PER_TOKEN = MERGE_SIZE * MERGE_SIZE
PATCH_VALUES = 3 * PATCH_SIZE * PATCH_SIZE  # 588 uint8 values per patch
MAX_ASPECT_RATIO = 200  # the processor refuses anything longer
MIN_VISUAL_TOKENS = 4  # 56 x 56 pixels, Qwen2-VL's own minimum
# vidore/colqwen2-v1.0's processor limits (colpali-engine issue 292): 56 x 56 to 768 x 28 x 28 pixels, 4 to 768
# visual tokens per image. A deployment reads its own from the export; the random checkpoints copy these.
PUBLISHED_MIN_PIXELS = 3136
PUBLISHED_MAX_PIXELS = 602112


@dataclass(frozen=True)
class PixelLimits:
    """The processor's pixel range: every image is resized so that h * w lies inside it."""

    min_pixels: int
    max_pixels: int

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"pixel limits [{self.min_pixels}, {self.max_pixels}] are not a valid range")

    @property
    def max_visual_tokens(self) -> int:
        """The most visual tokens an image can get under these limits."""
        return self.max_pixels // PIXELS_PER_TOKEN

    @classmethod
    def from_processor_config(cls, config: dict) -> PixelLimits:
        """From a `preprocessor_config.json` dict: `size.shortest_edge/longest_edge` or `min/max_pixels`."""
        size = config.get("size") or {}
        low = size.get("shortest_edge", config.get("min_pixels"))
        high = size.get("longest_edge", config.get("max_pixels"))
        if low is None or high is None:
            raise ValueError("processor config has no pixel limits (size.shortest_edge/longest_edge or min/max_pixels)")
        return cls(int(low), int(high))

    @classmethod
    def from_processor_dir(cls, path: str | Path) -> PixelLimits:
        """From a saved processor: `processor_config.json` (transformers 5) or `preprocessor_config.json`."""
        path = Path(path)
        combined = path / "processor_config.json"
        if combined.exists():
            config = json.loads(combined.read_text()).get("image_processor")
            if config:
                return cls.from_processor_config(config)
        return cls.from_processor_config(json.loads((path / "preprocessor_config.json").read_text()))

    def capped(self, max_visual_tokens: int | None) -> PixelLimits:
        """These limits with at most `max_visual_tokens` per image (colpali-engine's `max_num_visual_tokens`).

        colpali-engine sets `max_pixels = tokens * 28 * 28`; here the cap may only lower the
        checkpoint's own limit, and must leave room for at least `min_pixels`.
        """
        if not max_visual_tokens:
            return self
        low = max(MIN_VISUAL_TOKENS, -(-self.min_pixels // PIXELS_PER_TOKEN))
        if not low <= max_visual_tokens <= self.max_visual_tokens:
            raise ValueError(
                f"max_visual_tokens {max_visual_tokens} is outside [{low}, {self.max_visual_tokens}]: this checkpoint "
                f"takes {self.min_pixels} to {self.max_pixels} pixels per image ({PIXELS_PER_TOKEN} per token)"
            )
        return PixelLimits(self.min_pixels, max_visual_tokens * PIXELS_PER_TOKEN)


def smart_resize(height: int, width: int, limits: PixelLimits) -> tuple[int, int]:
    """Qwen2-VL's target (height, width): multiples of 28, aspect ratio kept, area within `limits`.

    Same arithmetic as the processor: Python's round (halves to even) first; if that is too large,
    scale down by sqrt(area / max) and floor; if too small, scale up by sqrt(min / area) and ceil.
    """
    if height < 1 or width < 1:
        raise InputError(f"image has no pixels ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InputError(
            f"image is {width}x{height}, an aspect ratio of {max(height, width) / min(height, width):.1f}:1; "
            f"ColQwen2 takes at most {MAX_ASPECT_RATIO}:1 (crop or pad it)"
        )
    h_bar = round(height / FACTOR) * FACTOR
    w_bar = round(width / FACTOR) * FACTOR
    if h_bar * w_bar > limits.max_pixels:
        beta = math.sqrt((height * width) / limits.max_pixels)
        h_bar = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)
        w_bar = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif h_bar * w_bar < limits.min_pixels:
        beta = math.sqrt(limits.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / FACTOR) * FACTOR
        w_bar = math.ceil(width * beta / FACTOR) * FACTOR
    return h_bar, w_bar


def token_grid(height: int, width: int) -> tuple[int, int]:
    """(rows, cols) of visual tokens for a resized image of height x width pixels."""
    if height % FACTOR or width % FACTOR or height <= 0 or width <= 0:
        raise ValueError(f"{width}x{height} is not a positive multiple of {FACTOR} on both sides")
    return height // FACTOR, width // FACTOR


def patchify(pixels: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] (h, w multiples of 28) -> uint8 [h/14 * w/14, 588] in the processor's patch order.

    Order: merge blocks row by row, inside a block its 2 x 2 patches row by row; inside a patch the
    values are (channel, row, column). The processor repeats each patch twice in time for the
    Conv3d; the graphs fold that repeat into the kernel, so it is not sent.
    """
    h, w, c = pixels.shape
    rows, cols = token_grid(h, w)
    if c != 3:
        raise ValueError(f"expected 3 channels, got {c}")
    blocks = pixels.reshape(rows, MERGE_SIZE, PATCH_SIZE, cols, MERGE_SIZE, PATCH_SIZE, 3)
    # -> rows, cols, merge-row, merge-col, channel, patch-row, patch-col
    return np.ascontiguousarray(blocks.transpose(0, 3, 1, 4, 6, 2, 5)).reshape(-1, PATCH_VALUES)


def patch_positions(rows: int, cols: int) -> np.ndarray:
    """int64 [rows * cols * 4, 2]: each patch's (row, col) on the patch grid, in `patchify` order."""
    r = np.arange(rows)[:, None, None, None] * MERGE_SIZE + np.arange(MERGE_SIZE)[None, None, :, None]
    c = np.arange(cols)[None, :, None, None] * MERGE_SIZE + np.arange(MERGE_SIZE)[None, None, None, :]
    r, c = np.broadcast_arrays(r, c)
    return np.stack([r.reshape(-1), c.reshape(-1)], axis=-1).astype(np.int64)


def image_prompt_positions(n_prefix: int, rows: int, cols: int, n_suffix: int) -> np.ndarray:
    """int64 [3, n_prefix + rows * cols + n_suffix]: M-RoPE positions of an image prompt.

    Text tokens share one position on all three axes and count up by one; the image's tokens sit
    at (start, start + row, start + col); the text after the image continues from
    start + max(rows, cols). This is `get_rope_index` for one unpadded sequence holding one image.
    """
    prefix = np.broadcast_to(np.arange(n_prefix), (3, n_prefix))
    row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    visual = np.stack([np.zeros(rows * cols, dtype=np.int64), row.reshape(-1), col.reshape(-1)]) + n_prefix
    start = n_prefix + max(rows, cols)
    suffix = np.broadcast_to(np.arange(n_suffix) + start, (3, n_suffix))
    return np.concatenate([prefix, visual, suffix], axis=1).astype(np.int64)


def text_positions(length: int) -> np.ndarray:
    """int64 [3, length]: a text-only sequence counts up on all three axes."""
    return np.broadcast_to(np.arange(length, dtype=np.int64), (3, length)).copy()


def sequence_positions(input_ids: np.ndarray, image_token_id: int, grid: tuple[int, int] | None) -> np.ndarray:
    """int64 [3, T] for one unpadded sequence: a query (`grid` None) or an image prompt of that grid.

    The image tokens of a prompt must form one run of rows * cols tokens, as `process_images` builds it.
    """
    if grid is None:
        return text_positions(len(input_ids))
    rows, cols = grid
    where = np.flatnonzero(np.asarray(input_ids) == image_token_id)
    if len(where) != rows * cols or (len(where) and where[-1] - where[0] + 1 != len(where)):
        raise ValueError(f"the prompt holds {len(where)} image tokens, not one run of {rows} x {cols}")
    start = int(where[0]) if len(where) else 0
    return image_prompt_positions(start, rows, cols, len(input_ids) - start - rows * cols)
