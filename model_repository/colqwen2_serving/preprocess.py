"""`colqwen2_preprocess`: encoded images -> uint8 patches on the image's grid and its prompt; UTF-8
queries -> token ids.

A request carries either IMAGE or TEXT, each a [n, 1] BYTES tensor (n is usually 1). A request
with a bad item fails alone, with the item's index in the message when n > 1.

Image outputs (items of one request padded to the largest): PATCHES uint8 [n, N, 588] in the
processor's patch order, GRID int32 [n, 2] (rows, cols of visual tokens), and the image prompt
INPUT_IDS / ATTENTION_MASK int64 [n, T] (left padded). Query outputs: INPUT_IDS / ATTENTION_MASK.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import ModelParameters
from .errors import InputError
from .feeds import ImageItem
from .grid import PATCH_VALUES, PixelLimits, patchify, token_grid
from .imaging import DecodeLimits, Resolution, preprocess_image
from .prompts import DEFAULT_MAX_TOKENS, PromptTokenizer, left_pad


def _items(raw: np.ndarray, name: str) -> list:
    items = list(raw.reshape(-1))
    if not items:
        raise InputError(f"{name} is empty: send one element per item")
    return items


def _each(items: list, fn: Callable) -> list:
    out = []
    for i, item in enumerate(items):
        try:
            out.append(fn(item))
        except InputError as exc:
            raise (InputError(f"item {i}: {exc}") if len(items) > 1 else exc) from None
    return out


def image_item(pixels: np.ndarray) -> ImageItem:
    """uint8 [h, w, 3] at grid size -> its patches and grid."""
    return ImageItem(patchify(pixels), token_grid(pixels.shape[0], pixels.shape[1]))


@dataclass
class Preprocessor:
    resolution: Resolution
    limits: DecodeLimits
    tokenizer: PromptTokenizer

    @classmethod
    def from_parameters(cls, params: ModelParameters) -> Preprocessor:
        limits = DecodeLimits(
            max_bytes=params.integer("max_image_bytes", DecodeLimits.max_bytes),
            max_pixels=params.integer("max_image_pixels", DecodeLimits.max_pixels),
        )
        pixels = PixelLimits(params.integer("min_pixels"), params.integer("max_pixels"))
        resolution = Resolution(pixels, fixed_size=params.integer("fixed_image_size", 0))
        tokenizer = PromptTokenizer.from_processor_dir(
            params.path("processor_dir"), params.integer("max_query_tokens", DEFAULT_MAX_TOKENS)
        )
        return cls(resolution, limits, tokenizer)

    def image_items(self, raw: np.ndarray) -> list[ImageItem]:
        """[n, 1] encoded bytes -> each image's patches and grid."""
        return _each(
            _items(raw, "IMAGE"), lambda b: image_item(preprocess_image(_bytes(b), self.resolution, self.limits))
        )

    def images(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        items = self.image_items(raw)
        longest = max(item.n_patches for item in items)
        patches = np.zeros((len(items), longest, PATCH_VALUES), dtype=np.uint8)
        for i, item in enumerate(items):
            patches[i, : item.n_patches] = item.patches
        grids = np.array([item.grid for item in items], dtype=np.int32)
        ids, mask = left_pad([self.tokenizer.image_prompt_ids(r * c) for r, c in grids.tolist()], self.tokenizer.pad_id)
        return {"PATCHES": patches, "GRID": grids, "INPUT_IDS": ids, "ATTENTION_MASK": mask}

    def queries(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n, 1] UTF-8 texts -> (input_ids, attention_mask) int64 [n, T], left padded."""
        rows = _each(_items(raw, "TEXT"), lambda t: self.tokenizer.token_ids(self.tokenizer.decode_text(_bytes(t))))
        return left_pad(rows, self.tokenizer.pad_id)

    def __call__(self, image: np.ndarray | None, text: np.ndarray | None) -> dict[str, np.ndarray]:
        if (image is None) == (text is None):
            raise InputError("send exactly one of IMAGE (encoded image bytes) or TEXT (a UTF-8 query)")
        if image is not None:
            return self.images(image)
        ids, mask = self.queries(text)
        return {"INPUT_IDS": ids, "ATTENTION_MASK": mask}


def _bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    raise InputError(f"expected bytes, got {type(item).__name__}")
