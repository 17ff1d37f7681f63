"""Letterboxing: any image, any mode -> S x S RGB uint8; S x S RGB passes unchanged."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from export.sample_images import edge_cases, keepa_chart
from model_repository.colqwen2_serving.imaging import letterbox


def test_square_input_passes_unchanged():
    img = keepa_chart(0).resize((448, 448))
    assert np.array_equal(letterbox(img, 448), np.asarray(img))


def test_every_edge_case_becomes_square_rgb():
    for sample in edge_cases(0):
        out = letterbox(sample.image, 224)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8, sample.name


def test_aspect_ratio_kept_and_padding_white():
    wide = Image.new("RGB", (400, 100), (0, 0, 0))
    out = letterbox(wide, 56)
    assert (out[:20] == 255).all() and (out[-20:] == 255).all()  # 14 rows of picture in the middle
    assert (out[22:34] == 0).all()


def test_transparency_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert (letterbox(rgba, 28) == 255).all()


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    out = letterbox(Image.open(io.BytesIO(buf.getvalue())), 28)
    # displayed upright the picture is 20 wide and 40 tall: white bars left and right
    assert out[:, 0].mean() > 250 and out[14, 14, 2] > 200 and out[14, 14, 0] < 60
