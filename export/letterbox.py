"""Turn any PIL image into the S x S RGB uint8 array the image encoder takes.

Steps, in this order: EXIF orientation, any mode to RGB with transparency composited on white,
then a letterbox: scale so the longer side is S (bicubic, aspect ratio kept) and centre on a
white S x S canvas. An S x S RGB input passes through unchanged, so the encoder then sees
exactly what colpali-engine's processor sees for that image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

PAD_COLOUR = (255, 255, 255)  # charts and product shots sit on white


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode to RGB, alpha composited on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, PAD_COLOUR)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping.
        arr = np.asarray(image, dtype=np.float64)
        peak = arr.max() or 1.0
        image = Image.fromarray((arr * (255.0 / peak)).astype(np.uint8), "L")
    return image.convert("RGB")


def letterbox(image: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 array of shape (size, size, 3)."""
    image = to_rgb(image)
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = image.resize((nw, nh), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (size, size), PAD_COLOUR)
        canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
        image = canvas
    return np.asarray(image, dtype=np.uint8)
