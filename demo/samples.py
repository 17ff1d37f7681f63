"""Write the demo's sample files: Keepa-style price-history charts and product-style photos.

The drawings come from `export.sample_images` (the same generator that feeds export validation
and INT8 calibration); here they become files of the formats users upload.
"""

from __future__ import annotations

import json
from pathlib import Path

from export.sample_images import keepa_chart, product_image


def write_samples(folder: Path, charts: int = 12, products: int = 12, seed: int = 500) -> list[Path]:
    """PNG charts and JPEG photos in `folder` (created); existing files are rewritten identically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(charts):
        path = folder / f"keepa_chart_{i:02d}.png"
        keepa_chart(seed + i).save(path, "PNG")
        paths.append(path)
    for i in range(products):
        path = folder / f"product_{i:02d}.jpg"
        product_image(seed + i).save(path, "JPEG", quality=92)
        paths.append(path)
    return paths


def asin(i: int) -> str:
    return f"B0DEMO{i:04d}"


def write_catalog(path: Path, samples: list[Path]) -> Path:
    """A JSONL manifest of the samples, as a Keepa/Amazon export would list them: one line per item,
    keyed by marketplace, ASIN and kind, with a category; paths relative to the manifest."""
    lines = []
    for i, sample in enumerate(samples):
        chart = sample.name.startswith("keepa")
        lines.append({
            "asin": asin(i % 12),
            "marketplace": ("DE", "US", "UK")[i % 3],
            "kind": "keepa_chart" if chart else "product_image",
            "category": ("toys", "electronics", "kitchen")[i % 3],
            "path": str(sample.relative_to(path.parent)) if sample.is_relative_to(path.parent) else str(sample),
        })  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def redraw_chart(path: Path, seed: int = 9000) -> None:
    """Today's chart for the same product: a new drawing at the same path (as a daily Keepa refresh does)."""
    keepa_chart(seed).save(path, "PNG")
