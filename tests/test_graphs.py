"""The export graphs compute `ColQwen2.forward` (before any ONNX is involved), at native resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from export.graphs import TextEncoderGraph, VisionEncoderGraph
from export.sample_images import QUERIES, keepa_chart, product_image
from model_repository.colqwen2_serving.feeds import TextItem, split_text, split_visual, text_feed, vision_feed
from model_repository.colqwen2_serving.grid import PixelLimits
from model_repository.colqwen2_serving.imaging import native
from model_repository.colqwen2_serving.preprocess import image_item
from model_repository.colqwen2_serving.prompts import PromptTokenizer

# Wide and tall charts, a photo above the pixel cap, a thumbnail below the minimum, odd sizes, 1 x 1.
IMAGES = [
    keepa_chart(1, 500, 200),
    keepa_chart(2, 1000, 400),
    product_image(3, 1500, 1500),
    product_image(4, 300, 900),
    product_image(5, 40, 40),
    keepa_chart(6, 517, 333),
    Image.new("RGB", (1, 1), (3, 200, 9)),
]


@pytest.fixture(scope="module")
def graphs(tiny_reference):
    model, processor = tiny_reference.model, tiny_reference.processor
    return VisionEncoderGraph(model, processor).eval(), TextEncoderGraph(model).eval()


def _feeds_to_torch(feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]


def test_images_of_every_grid_batched_together_match_the_reference(tiny_reference, tiny_checkpoint, graphs):
    model, processor = tiny_reference.model, tiny_reference.processor
    vision, text = graphs
    tokenizer = PromptTokenizer.from_processor_dir(tiny_checkpoint)
    limits = PixelLimits.from_processor_dir(tiny_checkpoint)
    items = [image_item(native(image, limits)) for image in IMAGES]
    assert len({item.grid for item in items}) >= 6, "six grids at least"
    with torch.no_grad():
        features = vision(*_feeds_to_torch(vision_feed(items))).numpy()
        visual = split_visual(features, items)
        prompts = [
            TextItem(np.array(tokenizer.image_prompt_ids(len(v))), v, i.grid)
            for v, i in zip(visual, items, strict=True)
        ]
        feeds = text_feed(prompts, tokenizer.pad_id, tokenizer.image_token_id, features.shape[-1])
        vectors = split_text(text(*_feeds_to_torch(feeds)).numpy(), prompts)
        for image, got in zip(IMAGES, vectors, strict=True):
            ref = model(**processor.process_images([image]))[0].numpy()
            assert got.shape == ref.shape, image.size
            assert np.abs(got - ref).max() < 1e-5, image.size


def test_query_encoder_matches_reference_with_left_padding(tiny_reference, graphs):
    model, processor = tiny_reference.model, tiny_reference.processor
    batch = processor.process_queries(["a", *QUERIES[:3], " ".join(QUERIES)])
    assert (batch["attention_mask"][:, 0] == 0).any(), "left padding must be exercised"
    rows = [ids[mask.bool()].numpy() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    items = [TextItem(row) for row in rows]
    pad, image = processor.tokenizer.pad_token_id, model.config.image_token_id
    with torch.no_grad():
        ref = model(**batch).numpy()
        out = graphs[1](*_feeds_to_torch(text_feed(items, pad, image, model.config.text_config.hidden_size)))
    assert torch.isfinite(out).all()
    for i, got in enumerate(split_text(out.numpy(), items)):
        assert np.abs(got - ref[i, ref.shape[1] - len(got) :]).max() < 1e-5
