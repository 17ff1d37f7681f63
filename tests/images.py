"""Encoded test images: every accepted format, EXIF rotation, bombs and broken files."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from export.sample_images import keepa_chart, product_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def square_chart(size: int = 448, seed: int = 0) -> Image.Image:
    return keepa_chart(seed).resize((size, size))


def every_format(size: int = 448) -> dict[str, bytes]:
    chart = square_chart(size)
    frames = [chart.convert("P"), product_image(1, size, size).convert("P")]
    return {
        "PNG": encode(chart, "PNG"),
        "JPEG": encode(chart, "JPEG", quality=95),
        "WEBP": encode(chart, "WEBP", lossless=True),
        "GIF": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "BMP": encode(chart, "BMP"),
        "TIFF": encode(chart, "TIFF"),
    }


def _png(header: bytes, body: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (the data is never decoded)."""
    return _png(struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0), zlib.compress(b"\x00" * 1024))


def whole_png_bomb(side: int = 40_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels, every row present: 200 MB of pixels (40,000) in about 200 KB."""
    row = b"\0" * (1 + side // 8)
    squeeze = zlib.compressobj(9)
    body = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    return _png(struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0), body)


def truncated_png(size: int = 448) -> bytes:
    data = encode(square_chart(size, seed=3), "PNG")
    return data[: len(data) // 2]


def exif_rotated_jpeg() -> tuple[bytes, Image.Image]:
    """A 300x200 JPEG tagged 'rotate 90' (orientation 6) and the upright image it stands for."""
    upright = product_image(2, 200, 300)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes before tagging
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=98, exif=exif.tobytes()), upright
