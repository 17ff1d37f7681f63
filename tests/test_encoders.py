"""The export wrappers compute `ColQwen2.forward` (before any ONNX is involved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from export.encoders import ImageEncoder, QueryEncoder
from export.sample_images import QUERIES, validation_set
from model_repository.colqwen2_serving.imaging import letterbox


@pytest.mark.parametrize("size", [224, 448])
def test_image_encoder_matches_reference(tiny_reference, size):
    model, processor = tiny_reference.model, tiny_reference.processor
    pixels = np.stack([letterbox(s.image, size) for s in validation_set(1)[:3]])
    with torch.no_grad():
        ref = model(**processor.process_images([Image.fromarray(p) for p in pixels]))
        out = ImageEncoder(model, processor, size)(torch.from_numpy(pixels))
    assert out.shape == ref.shape == (3, 15 + (size // 28) ** 2, 128)
    assert (out - ref).abs().max() < 1e-5


def test_query_encoder_matches_reference_with_left_padding(tiny_reference):
    model, processor = tiny_reference.model, tiny_reference.processor
    batch = processor.process_queries(["a", *QUERIES[:3], " ".join(QUERIES)])
    assert (batch["attention_mask"][:, 0] == 0).any(), "left padding must be exercised"
    with torch.no_grad():
        ref = model(**batch)
        out = QueryEncoder(model)(batch["input_ids"], batch["attention_mask"])
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < 1e-5


def test_image_size_must_be_a_multiple_of_28(tiny_reference):
    with pytest.raises(ValueError, match="multiple of 28"):
        ImageEncoder(tiny_reference.model, tiny_reference.processor, 450)
