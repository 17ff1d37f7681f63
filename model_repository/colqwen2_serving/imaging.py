"""Turn encoded image bytes, or any PIL image, into the RGB uint8 pixels of the image's grid.

Steps, in this order: size checks on the header (before any pixel is decoded), decode (first frame
of animations), EXIF orientation, any mode to RGB with transparency composited on white, then one
of two resolutions:

- native (the default): the processor's own size, `grid.smart_resize` within the checkpoint's
  pixel limits, resized with the processor's resampling (`resampling.resize_bicubic`, bit-exact
  with the torchvision kernel colpali-engine's image processor runs). The encoder then sees
  exactly what colpali-engine sees, at any size and aspect ratio.
- fixed S: a letterbox, scale so the longer side is S (bicubic, aspect ratio kept) and centre on a
  white S x S canvas; every image gets the same grid. An S x S input passes unchanged.

Normalisation happens inside the ONNX graph, so the tensor that crosses process boundaries stays
uint8 (4x smaller than float32).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError
from .grid import PixelLimits, smart_resize, token_grid
from .resampling import resize_bicubic

PAD_COLOUR = (255, 255, 255)  # charts and product shots sit on white
# What the service accepts. Anything else Pillow could open (PSD, EPS, ...) is refused by name.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF"})


@dataclass(frozen=True)
class DecodeLimits:
    """Refuse before decoding: a 50 KB PNG can claim 100 000 x 100 000 pixels (a decompression bomb)."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000  # 40 MP: well above product photos (about 9 MP) and charts


def open_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Encoded bytes -> a PIL image with only its header read (format and size checked), or InputError naming
    what is wrong. Costs microseconds: what admission needs to know an image's grid before deciding."""
    if len(data) == 0:
        raise InputError("empty image: the request carried 0 bytes")
    if len(data) > limits.max_bytes:
        raise InputError(f"image is {len(data)} bytes, over the limit of {limits.max_bytes} bytes")
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        # Pillow's own bomb check is replaced by the explicit, configurable limit below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except UnidentifiedImageError:
            raise InputError(f"not a recognised image: {len(data)} bytes starting {data[:8]!r}") from None
        except Exception as exc:
            raise InputError(f"unreadable image header: {exc}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    if image.format not in ACCEPTED_FORMATS:
        raise InputError(f"unsupported image format {image.format}; send PNG, JPEG, WebP, GIF, BMP or TIFF")
    width, height = image.size
    if width < 1 or height < 1:
        raise InputError(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise InputError(
            f"{image.format} image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels} pixels; refused before decoding (possible decompression bomb)"
        )
    return image


def load_image(image: Image.Image) -> Image.Image:
    """Decode an opened image's pixels (the first frame of an animation or a multi-page file)."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = None  # open_image checked the size against the configurable limit
        try:
            image.seek(0)
            image.load()
        except Exception as exc:
            width, height = image.size
            raise InputError(f"corrupt or truncated {image.format} image ({width}x{height}): {exc}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    return image


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Encoded bytes -> a loaded PIL image (first frame), or InputError naming what is wrong."""
    return load_image(open_image(data, limits))


@dataclass(frozen=True)
class Resolution:
    """How an image becomes pixels: native (`fixed_size` 0) within `limits`, or a fixed S x S letterbox."""

    limits: PixelLimits
    fixed_size: int = 0

    def tokens(self, image: Image.Image) -> int:
        """Visual tokens of an opened image at this resolution, from its header alone (EXIF rotation aside,
        which does not change the count)."""
        if self.fixed_size:
            rows, cols = token_grid(self.fixed_size, self.fixed_size)
        else:
            rows, cols = token_grid(*smart_resize(image.size[1], image.size[0], self.limits))
        return rows * cols

    def pixels(self, image: Image.Image) -> np.ndarray:
        """Any PIL image -> RGB uint8 [h, w, 3], h and w multiples of 28."""
        if self.fixed_size:
            return letterbox(image, self.fixed_size)
        return native(image, self.limits)


def preprocess_image(data: bytes, resolution: Resolution, limits: DecodeLimits = DecodeLimits()) -> np.ndarray:
    """Encoded bytes -> uint8 [h, w, 3] at the image's grid size."""
    return image_pixels(open_image(data, limits), resolution)


def image_pixels(image: Image.Image, resolution: Resolution) -> np.ndarray:
    """An opened image (`open_image`) -> uint8 [h, w, 3] at its grid size."""
    image = load_image(image)
    try:
        return resolution.pixels(image)
    except InputError:
        raise
    except Exception as exc:  # exotic modes Pillow opens but cannot convert (e.g. some CMYK TIFFs)
        raise InputError(f"cannot convert {image.format} image in mode {image.mode} to RGB: {exc}") from None


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


def native(image: Image.Image, limits: PixelLimits) -> np.ndarray:
    """RGB uint8 [h, w, 3] at the processor's size for this image (`smart_resize`), resized as it resizes."""
    pixels = np.asarray(to_rgb(image), dtype=np.uint8)
    height, width = smart_resize(pixels.shape[0], pixels.shape[1], limits)
    if (height, width) == pixels.shape[:2]:
        return pixels
    return resize_bicubic(pixels, height, width)


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
