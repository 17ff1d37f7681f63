"""Image decoding for the preprocess model: formats, EXIF, modes, limits and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model_repository.colqwen2_serving.errors import InputError
from model_repository.colqwen2_serving.imaging import ImageLimits, decode_image, letterbox, preprocess_image
from tests.images import encode, every_format, exif_rotated_jpeg, png_bomb, square_chart, truncated_png


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_accepted_format_decodes_to_square_rgb(fmt):
    pixels = preprocess_image(every_format(224)[fmt], 224)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_lossless_square_png_passes_bit_exact():
    chart = square_chart(448)
    assert np.array_equal(preprocess_image(encode(chart, "PNG"), 448), np.asarray(chart))


def test_gif_uses_the_first_frame():
    gif = every_format(224)["GIF"]
    first = Image.open(__import__("io").BytesIO(gif)).convert("RGB")
    assert np.array_equal(preprocess_image(gif, 224), np.asarray(first))


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
    assert preprocess_image(encode(image, fmt), 112).shape == (112, 112, 3)


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (56, 56), (255, 0, 0, 0))
    assert (preprocess_image(encode(clear, "PNG"), 56) == 255).all()


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
        preprocess_image(data, 448)


def test_bomb_is_refused_from_the_header_alone(monkeypatch):
    def never(*_args, **_kwargs):
        raise AssertionError("decoded a bomb")

    monkeypatch.setattr(Image.Image, "load", never)
    with pytest.raises(InputError, match="refused before decoding"):
        decode_image(png_bomb(20_000, 20_000))


def test_limits_are_configurable():
    data = encode(square_chart(448), "PNG")
    with pytest.raises(InputError, match="over the limit of 1000 pixels"):
        decode_image(data, ImageLimits(max_pixels=1000))
    with pytest.raises(InputError, match="over the limit of 100 bytes"):
        decode_image(data, ImageLimits(max_bytes=100))


def test_unsupported_format_is_named():
    with pytest.raises(InputError, match="unsupported image format ICO"):
        decode_image(encode(square_chart(64), "ICO"))
