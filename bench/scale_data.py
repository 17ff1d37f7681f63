"""The synthetic catalog of `make bench-scale`: items with realistic vector counts, anchored on real embeddings.

Vectors: the served model's own embeddings of Keepa charts and product photos (the export's ONNX graphs in
this process, `bench.references.Pipeline`) are the bases. An item is a base at the item's own token grid
(nearest-neighbour resampling of the base's visual tokens to the grid its image size gets from Qwen2-VL's
`smart_resize` under the published checkpoint's limits: 3136 to 602112 pixels, at most 768 visual tokens),
plus the prompt's tokens, plus noise at two levels:
- a family (a listing, an ASIN in one marketplace: its photos and its charts, FAMILY items) shares a spatially
  coherent perturbation of its base, so neighbours exist and families that share a base still differ;
- each item adds its own noise; a "refreshed chart" redraws it (a new version of the same item).
Every item is a pure function of (seed, index, version), so the ground truth regenerates items in chunks
instead of holding 100,000 x 450 vectors in memory.

Sizes (the mixed Keepa/Amazon distribution, 457 vectors per item on average with the 15 prompt tokens):
20 % 500 x 200 charts, 30 % 1000 x 400 charts, 30 % 1500 x 1500 photos (capped at 768 tokens), 10 %
300 x 300 thumbnails, 10 % 300 x 900 tall images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_repository.colqwen2_serving.grid import PixelLimits, smart_resize, token_grid

# Qwen2-VL / vidore/colqwen2-v1.0's pixel range (FACTS: max_pixels 602112 = 768 visual tokens).
PUBLISHED_LIMITS = PixelLimits(3136, 602112)
SIZES = (  # kind, width, height, share
    ("keepa_chart", 500, 200, 0.2),
    ("keepa_chart", 1000, 400, 0.3),
    ("product_image", 1500, 1500, 0.3),
    ("product_image", 300, 300, 0.1),
    ("product_image", 300, 900, 0.1),
)
MARKETPLACES = ("US", "DE", "UK", "FR", "IT", "ES", "JP", "CA")
FAMILY = 12  # items per family (a listing's photos, its charts over time): the exact top 10 lies in it
FAMILY_NOISE = 0.8  # norm of a family's perturbation of its base, per token (the base tokens are unit vectors)
ITEM_NOISE = 0.35  # norm of an item's own noise per token; a refreshed item redraws it


@dataclass(frozen=True)
class Base:
    """One real embedding, split into the prompt's tokens and the visual token grid."""

    prefix: np.ndarray  # [p, 128] prompt tokens before the image
    grid: np.ndarray  # [rows, cols, 128] visual tokens
    suffix: np.ndarray  # [s, 128] prompt tokens after the image


def _normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def real_bases(artifacts: Path, count: int = 48, seed: int = 0) -> list[Base]:
    """`count` embeddings of charts and photos from the export in `artifacts` (fp32 graphs, this process)."""
    from bench.references import Pipeline
    from export.sample_images import keepa_chart, product_image
    from model_repository.colqwen2_serving.imaging import preprocess_image
    from model_repository.colqwen2_serving.preprocess import image_item

    pipeline = Pipeline.load(artifacts, "fp32", threads=2, gpu=False)
    image_token = pipeline.tokenizer.image_token_id
    bases = []
    for i in range(count):
        image = keepa_chart(seed + i, 800, 320) if i % 2 == 0 else product_image(seed + i, 480, 480)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        data = buffer.getvalue()
        rows, cols = image_item(preprocess_image(data, pipeline.resolution)).grid
        vectors = pipeline.embed(data)
        ids = list(pipeline.tokenizer.image_prompt_ids(rows * cols))
        start = ids.index(image_token)
        visual = vectors[start : start + rows * cols].reshape(rows, cols, -1)
        bases.append(Base(vectors[:start], visual, vectors[start + rows * cols :]))
    return bases


def save_bases(bases: list[Base], path: Path) -> None:
    arrays = {}
    for i, b in enumerate(bases):
        arrays |= {f"prefix{i}": b.prefix, f"grid{i}": b.grid, f"suffix{i}": b.suffix}
    np.savez(path, **arrays)


def load_bases(path: Path) -> list[Base]:
    with np.load(path) as f:
        n = len([k for k in f.files if k.startswith("grid")])
        return [Base(f[f"prefix{i}"], f[f"grid{i}"], f[f"suffix{i}"]) for i in range(n)]


def item_size(index: int, seed: int) -> tuple[str, int, int]:
    """(kind, width, height) of item `index`: the family's kind, the item's size within it."""
    family = np.random.default_rng([seed, 1, index // FAMILY])
    chart = family.random() < SIZES[0][3] + SIZES[1][3]
    options = [s for s in SIZES if (s[0] == "keepa_chart") == chart]
    shares = np.array([s[3] for s in options])
    pick = np.random.default_rng([seed, 2, index]).choice(len(options), p=shares / shares.sum())
    kind, width, height, _ = options[pick]
    return kind, width, height


def item_grid(width: int, height: int) -> tuple[int, int]:
    return token_grid(*smart_resize(height, width, PUBLISHED_LIMITS))


def _field(rng: np.random.Generator, shape: tuple[int, ...], norm: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(norm / np.sqrt(shape[-1]))


def _resample(grid: np.ndarray, rows: int, cols: int) -> np.ndarray:
    r = (np.arange(rows) * grid.shape[0]) // rows
    c = (np.arange(cols) * grid.shape[1]) // cols
    return grid[r][:, c]


@dataclass(frozen=True)
class Item:
    index: int
    key: str
    payload: dict
    vectors: np.ndarray  # [n, 128] float32, unit rows
    grid: tuple[int, int]


def marketplace(index: int) -> str:
    """A family is one listing (an ASIN in one marketplace, as Keepa tracks it): its marketplace is the family's."""
    return MARKETPLACES[(index // FAMILY) % len(MARKETPLACES)]


def make_key(index: int, seed: int) -> str:
    kind = item_size(index, seed)[0]
    return f"{marketplace(index)}:B{index // FAMILY:09d}:{kind}:{index}"


def make_item(bases: list[Base], index: int, seed: int, version: int = 0) -> Item:
    """Item `index` (version > 0: the same item redrawn, as a daily chart refresh does)."""
    family = index // FAMILY
    kind, width, height = item_size(index, seed)
    rows, cols = item_grid(width, height)
    frng = np.random.default_rng([seed, 3, family])
    base = bases[int(frng.integers(len(bases)))]
    grid = base.grid + _field(frng, base.grid.shape, FAMILY_NOISE)
    prefix = base.prefix + _field(frng, base.prefix.shape, FAMILY_NOISE / 4)
    suffix = base.suffix + _field(frng, base.suffix.shape, FAMILY_NOISE / 4)
    vectors = np.concatenate([prefix, _resample(grid, rows, cols).reshape(rows * cols, -1), suffix])
    irng = np.random.default_rng([seed, 4, index, version])
    vectors = _normalised(vectors + _field(irng, vectors.shape, ITEM_NOISE))
    asin = f"B{family:09d}"
    key = make_key(index, seed)
    payload = {"key": key, "kind": kind, "marketplace": marketplace(index), "asin": asin, "size": [width, height],
               "version": version}  # fmt: skip
    return Item(index, key, payload, vectors, (rows, cols))


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """What the index keeps of a multivector: float16 (the exact rerank scores these)."""
    return vectors.astype(np.float16).astype(np.float32)


def image_query(item: Item, seed: int, noise: float = 0.3) -> np.ndarray:
    """A degraded copy of a catalog item (re-encoded, re-lit): its tokens with noise."""
    rng = np.random.default_rng([seed, 5, item.index])
    return _normalised(item.vectors + _field(rng, item.vectors.shape, noise))


def text_query(item: Item, bases: list[Base], seed: int, tokens: int = 6, noise: float = 0.3) -> np.ndarray:
    """A text-like query: a few of the item's own visual tokens with noise, plus query-padding-like tokens that
    match every item alike (a base's suffix), as ColQwen2's text queries carry."""
    rng = np.random.default_rng([seed, 6, item.index])
    prompt = len(bases[0].prefix)
    visual = item.vectors[prompt : prompt + item.grid[0] * item.grid[1]]
    picked = visual[rng.choice(len(visual), size=min(tokens, len(visual)), replace=False)]
    words = _normalised(picked + _field(rng, picked.shape, noise))
    padding = bases[int(rng.integers(len(bases)))].suffix[:4]
    return np.concatenate([words, padding]).astype(np.float32)


def random_query(seed: int, index: int, tokens: int = 16) -> np.ndarray:
    rng = np.random.default_rng([seed, 7, index])
    return _normalised(rng.standard_normal((tokens, 128)).astype(np.float32))
