"""`colqwen2_preprocess`: encoded images -> uint8 patches on the image's grid and its prompt; UTF-8
queries -> token ids.

A request carries either IMAGE or TEXT, each a [n, 1] BYTES tensor (n is usually 1). A request
with a bad item fails alone, with the item's index in the message when n > 1.

Image outputs (items of one request padded to the largest): PATCHES uint8 [n, N, 588] in the
processor's patch order, GRID int32 [n, 2] (rows, cols of visual tokens), and the image prompt
INPUT_IDS / ATTENTION_MASK int64 [n, T] (left padded), and TICKET [n, 1] (the request's ledger ticket, which
the encoder releases once it has answered; "" with admission off). Query outputs: INPUT_IDS / ATTENTION_MASK.

Admission (`admission.py`) happens between the images' headers and their decode: a refused request costs
microseconds and raises `Refused`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .admission import Ledger, Policy, image_cost, ledger_folder, sweep_ledgers
from .config import ModelParameters
from .errors import InputError
from .feeds import ImageItem
from .grid import PATCH_VALUES, PixelLimits, patchify, token_grid
from .imaging import DecodeLimits, Resolution, image_pixels, open_image
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
    policy: Policy | None = None  # admission; None or max_wait_s 0: off
    ledger: Ledger | None = None
    # the request parameter by which a client says it comes back with its place in line, and the suffix of a last
    # claim (no new place held if refused): the client's protocol, which render.py passes on
    place_parameter: str = ""
    final_claim: str = ""

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
        policy = Policy(
            max_wait_s=params.integer("admission_wait_ms", 0) / 1000,
            min_in_flight=params.integer("admission_min_in_flight", 4),
            default_rate=params.integer("admission_rate_ns", 1_000_000) / 1e9,
        )
        ledger = None
        if policy.enabled:
            folder = ledger_folder()
            sweep_ledgers(folder.parent)  # servers gone before (a folder each, in memory): never this one
            ledger = Ledger(folder)
        place = params.text("admission_place_parameter", ""), params.text("admission_final_claim", "")
        return cls(resolution, limits, tokenizer, policy, ledger, *place)

    def image_items(self, raw: np.ndarray) -> list[ImageItem]:
        """[n, 1] encoded bytes -> each image's patches and grid (no admission)."""
        return self._decoded(self._opened(raw))

    def _opened(self, raw: np.ndarray) -> list:
        """[n, 1] encoded bytes -> each image opened, its header checked (`open_image`), nothing decoded."""
        return _each(_items(raw, "IMAGE"), lambda b: open_image(_bytes(b), self.limits))

    def _decoded(self, opened: list) -> list[ImageItem]:
        return _each(opened, lambda image: image_item(image_pixels(image, self.resolution)))

    def admit(self, opened: list, place: str | None = None) -> str:
        """A ledger ticket for these opened images, or `Refused`; "" when admission is off. `place`: the request's
        PLACE_PARAMETER (`Ledger.admit`)."""
        if self.policy is None or self.ledger is None or not self.policy.enabled:
            return ""
        tokens = [self.resolution.tokens(image) for image in opened]
        small = max(tokens) <= self.policy.always_tokens
        last = bool(place and self.final_claim and place.endswith(self.final_claim))
        if last:  # the client's last try: it claims its place, and would not come back for a new one
            place = place.removesuffix(self.final_claim)
        return self.ledger.admit(sum(image_cost(t) for t in tokens), self.policy, small, place, hold=not last)

    def images(self, raw: np.ndarray, place: str | None = None) -> dict[str, np.ndarray]:
        opened = self._opened(raw)
        ticket = self.admit(opened, place)
        try:
            items = self._decoded(opened)
        except BaseException:
            if ticket and self.ledger is not None:
                self.ledger.release([ticket])
            raise
        outputs = self._image_outputs(items)
        outputs["TICKET"] = np.array([[ticket.encode()]] * len(items), dtype=np.object_)  # "": admission off
        return outputs

    def _image_outputs(self, items: list[ImageItem]) -> dict[str, np.ndarray]:
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

    def __call__(
        self, image: np.ndarray | None, text: np.ndarray | None, place: str | None = None
    ) -> dict[str, np.ndarray]:
        if (image is None) == (text is None):
            raise InputError("send exactly one of IMAGE (encoded image bytes) or TEXT (a UTF-8 query)")
        if image is not None:
            return self.images(image, place)
        ids, mask = self.queries(text)
        return {"INPUT_IDS": ids, "ATTENTION_MASK": mask}


def _bytes(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    raise InputError(f"expected bytes, got {type(item).__name__}")
