"""`colqwen2_preprocess`: encoded images -> letterboxed uint8 pixels; UTF-8 queries -> token ids.

A request carries either IMAGE or TEXT, each a [n, 1] BYTES tensor (n is usually 1). A request
with a bad item fails alone, with the item's index in the message when n > 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import ModelParameters
from .errors import InputError
from .imaging import ImageLimits, preprocess_image
from .queries import DEFAULT_MAX_TOKENS, QueryTokenizer, left_pad


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


@dataclass
class Preprocessor:
    image_size: int
    limits: ImageLimits
    tokenizer: QueryTokenizer

    @classmethod
    def from_parameters(cls, params: ModelParameters) -> Preprocessor:
        limits = ImageLimits(
            max_bytes=params.integer("max_image_bytes", ImageLimits.max_bytes),
            max_pixels=params.integer("max_image_pixels", ImageLimits.max_pixels),
        )
        tokenizer = QueryTokenizer.from_processor_dir(
            params.path("processor_dir"), params.integer("max_query_tokens", DEFAULT_MAX_TOKENS)
        )
        return cls(params.integer("image_size"), limits, tokenizer)

    def images(self, raw: np.ndarray) -> np.ndarray:
        """[n, 1] encoded bytes -> uint8 [n, S, S, 3]."""
        return np.stack(
            _each(_items(raw, "IMAGE"), lambda b: preprocess_image(_bytes(b), self.image_size, self.limits))
        )

    def queries(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[n, 1] UTF-8 texts -> (input_ids, attention_mask) int64 [n, T], left padded."""
        rows = _each(_items(raw, "TEXT"), lambda t: self.tokenizer.token_ids(self.tokenizer.decode_text(_bytes(t))))
        return left_pad(rows, self.tokenizer.pad_id)

    def __call__(self, image: np.ndarray | None, text: np.ndarray | None) -> dict[str, np.ndarray]:
        if (image is None) == (text is None):
            raise InputError("send exactly one of IMAGE (encoded image bytes) or TEXT (a UTF-8 query)")
        if image is not None:
            return {"PIXEL_VALUES": self.images(image)}
        ids, mask = self.queries(text)
        return {"INPUT_IDS": ids, "ATTENTION_MASK": mask}


def _bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    raise InputError(f"expected bytes, got {type(item).__name__}")
