"""Write the demo's sample files: Keepa-style price-history charts and product-style photos.

The drawings come from `export.sample_images` (the same generator that feeds export validation
and INT8 calibration); here they become files of the formats users upload.
"""

from __future__ import annotations

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
