"""Turn what users hold (a path, bytes, a PIL image, base64) into the bytes the server decodes."""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from pathlib import Path
from typing import Union

from PIL import Image

from .errors import InvalidInputError

_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/_-]")
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")  # standard or URL-safe alphabet, optional padding
ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]  # noqa: UP007 (runtime alias)


def decode_base64(text: str, what: str = "image") -> bytes:
    """Standard or URL-safe base64, with or without a `data:...;base64,` prefix."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    cleaned = "".join(text.split())
    if not _BASE64.fullmatch(cleaned):
        bad = next((c for c in cleaned if not _BASE64_CHARS.fullmatch(c)), "=")
        raise InvalidInputError(f"{what} is not valid base64: unexpected character {bad!r}")
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{what} is not valid base64: {exc}") from None


def image_bytes(image: ImageInput) -> bytes:
    """The encoded file bytes for `image`. A str is a path if such a file exists, else base64."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")  # lossless: the server sees exactly these pixels
        return buffer.getvalue()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, os.PathLike):
        return _read(Path(image))
    if isinstance(image, str):
        if len(image) < 4096 and Path(image).is_file():
            return _read(Path(image))
        try:
            return decode_base64(image)
        except InvalidInputError:
            if len(image) < 4096 and Path(image).suffix:
                raise InvalidInputError(f"no such image file: {image}") from None
            raise
    raise InvalidInputError(f"unsupported image input of type {type(image).__name__}: pass a path, bytes, "
                            "a PIL image or a base64 string")  # fmt: skip


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from None


def text_bytes(text: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidInputError(f"a query must be a str, not {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from JSON "\ud800"
        raise InvalidInputError(f"query is not encodable as UTF-8 at position {exc.start}: {exc.reason}") from None
