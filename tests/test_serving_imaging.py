"""Image decoding for the preprocess model: formats, EXIF, modes, limits and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model_repository.colqwen2_serving.errors import InputError
from model_repository.colqwen2_serving.grid import PixelLimits
from model_repository.colqwen2_serving.imaging import (
    DecodeLimits,
    Resolution,
    decode_image,
    letterbox,
    native,
    preprocess_image,
)
from tests.images import encode, every_format, exif_rotated_jpeg, png_bomb, square_chart, truncated_png

LIMITS = PixelLimits(3136, 602112)  # vidore/colqwen2-v1.0's
NATIVE = Resolution(LIMITS)


def fixed(size: int) -> Resolution:
    return Resolution(LIMITS, fixed_size=size)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_accepted_format_decodes_to_square_rgb(fmt):
    pixels = preprocess_image(every_format(224)[fmt], fixed(224))
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_lossless_square_png_passes_bit_exact():
    chart = square_chart(448)
    assert np.array_equal(preprocess_image(encode(chart, "PNG"), fixed(448)), np.asarray(chart))


def test_gif_uses_the_first_frame():
    gif = every_format(224)["GIF"]
    first = Image.open(__import__("io").BytesIO(gif)).convert("RGB")
    assert np.array_equal(preprocess_image(gif, fixed(224)), np.asarray(first))


def test_exif_orientation_is_applied():
    data, upright = exif_rotated_jpeg()
    image = decode_image(data)
    assert image.size == (300, 200)  # stored landscape
    out = letterbox(image, 300)
    # upright is 200 wide x 300 high: a portrait letterbox has white columns left and right
    assert (out[:, :40] == 255).all() and (out[:, -40:] == 255).all()
    expected = letterbox(upright, 300)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 3  # JPEG noise only


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_any_mode_becomes_rgb(mode):
    image = square_chart(112).convert("RGBA" if mode in ("LA", "RGBA") else "RGB")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    else:
        image = image.convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    assert preprocess_image(encode(image, fmt), fixed(112)).shape == (112, 112, 3)


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (56, 56), (255, 0, 0, 0))
    assert (preprocess_image(encode(clear, "PNG"), fixed(56)) == 255).all()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image"),
        (b"this is not an image at all", "not a recognised image"),
        (png_bomb(), "100000x100000 = 10000000000 pixels, over the limit"),
        (truncated_png(), "corrupt or truncated PNG"),
    ],
    ids=["empty", "not-an-image", "bomb", "truncated"],
)
def test_bad_bytes_get_a_clear_error(data, message):
    with pytest.raises(InputError, match=message):
        preprocess_image(data, NATIVE)


def test_bomb_is_refused_from_the_header_alone(monkeypatch):
    def never(*_args, **_kwargs):
        raise AssertionError("decoded a bomb")

    monkeypatch.setattr(Image.Image, "load", never)
    with pytest.raises(InputError, match="refused before decoding"):
        decode_image(png_bomb(20_000, 20_000))


def test_limits_are_configurable():
    data = encode(square_chart(448), "PNG")
    with pytest.raises(InputError, match="over the limit of 1000 pixels"):
        decode_image(data, DecodeLimits(max_pixels=1000))
    with pytest.raises(InputError, match="over the limit of 100 bytes"):
        decode_image(data, DecodeLimits(max_bytes=100))


def test_unsupported_format_is_named():
    with pytest.raises(InputError, match="unsupported image format ICO"):
        decode_image(encode(square_chart(64), "ICO"))


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((500, 200), (196, 504)),
        ((1500, 1500), (756, 756)),
        ((40, 40), (56, 56)),
        ((1, 1), (56, 56)),
        ((56, 84), (84, 56)),
    ],
)
def test_native_resolution_is_the_processors_size(size, expected):
    assert preprocess_image(encode(Image.new("RGB", size, (9, 99, 199)), "PNG"), NATIVE).shape == (*expected, 3)


def test_an_image_at_its_grid_size_passes_unchanged():
    chart = square_chart(448).resize((504, 196))
    assert np.array_equal(native(chart, LIMITS), np.asarray(chart))


def test_native_pixels_are_the_image_processors_own(tiny_reference):
    """The processor `ColQwen2Processor.from_pretrained` loads resizes with torchvision on uint8; ours is
    numpy, bit for bit the same on charts (sharp edges) and photos, shrunk and enlarged."""
    import torch
    from transformers.image_utils import SizeDict

    processor = tiny_reference.processor.image_processor
    size = SizeDict(shortest_edge=LIMITS.min_pixels, longest_edge=LIMITS.max_pixels)
    for image in (square_chart(448).resize((500, 200)), product_image_of(1500, 1500), product_image_of(300, 900)):
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
        expected = processor.resize(tensor, size=size, resample=processor.resample, factor=28)[0].permute(1, 2, 0)
        assert np.array_equal(native(image, LIMITS), expected.numpy()), image.size


def product_image_of(width: int, height: int) -> Image.Image:
    from export.sample_images import product_image

    return product_image(7, width, height)


def test_extreme_aspect_ratio_is_refused_with_its_ratio():
    with pytest.raises(InputError, match=r"2010x10, an aspect ratio of 201\.0:1; ColQwen2 takes at most 200:1"):
        preprocess_image(encode(Image.new("RGB", (2010, 10)), "PNG"), NATIVE)
