"""The offline checkpoint is a real ColQwen2 that colpali-engine loads like vidore/colqwen2-v1.0."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from export.random_checkpoint import QWEN2_VL_SPECIAL_TOKENS, SIZES
from export.sample_images import QUERIES, keepa_chart


def test_architecture_is_colqwen2(tiny_reference):
    model, processor = tiny_reference.model, tiny_reference.processor
    vision = model.visual.config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) * 2 == head_dim
    assert model.custom_text_proj.out_features == 128
    assert type(model).__name__ == "ColQwen2"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    for token in QWEN2_VL_SPECIAL_TOKENS:
        assert processor.tokenizer.convert_tokens_to_ids(token) < text.vocab_size
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")


def test_outputs_are_finite_and_normalised(tiny_reference):
    model, processor = tiny_reference.model, tiny_reference.processor
    with torch.no_grad():
        images = model(**processor.process_images([keepa_chart(0).resize((448, 448))]))
        queries = processor.process_queries(["x", QUERIES[0] * 3])  # very different lengths: left padding
        q = model(**queries)
    assert images.shape == (1, 5 + 256 + 10, 128)
    assert torch.isfinite(images).all() and torch.isfinite(q).all()
    norms = q.norm(dim=-1)
    assert torch.allclose(norms[queries["attention_mask"].bool()], torch.ones(()), atol=1e-5)
    assert (norms[~queries["attention_mask"].bool()] == 0).all()


def test_saved_like_a_hub_checkpoint(tiny_checkpoint):
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    meta = json.loads((tiny_checkpoint / "random_checkpoint.json").read_text())
    assert meta["random_weights"] is True and meta["size"] == "tiny"


def test_real_size_shapes_match_colqwen2_base():
    """The `real` preset has Qwen2-VL-2B's shapes: 2.209 B parameters, vision tower 665 M."""
    from colpali_engine.models import ColQwen2
    from transformers import Qwen2VLConfig

    real = SIZES["real"]
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": real.vocab_size,
            "hidden_size": real.text_hidden,
            "intermediate_size": real.text_intermediate,
            "num_hidden_layers": real.text_layers,
            "num_attention_heads": real.text_heads,
            "num_key_value_heads": real.text_kv_heads,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(real.mrope_section)},
        },
        vision_config={
            "depth": real.vision_depth,
            "embed_dim": real.vision_embed,
            "hidden_size": real.text_hidden,
            "num_heads": real.vision_heads,
        },
    )
    with torch.device("meta"):
        model = ColQwen2(config)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.visual.parameters())
    assert round(total / 1e9, 3) == 2.209
    assert round(vision / 1e6) == 665


def test_build_is_deterministic(tmp_path):
    from export.random_checkpoint import build_random_checkpoint

    a = build_random_checkpoint(tmp_path / "a", "tiny", seed=3)
    b = build_random_checkpoint(tmp_path / "b", "tiny", seed=3)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    from safetensors.numpy import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not (tmp_path / "a.partial").exists()


def test_tiny_image_is_a_real_rgb_pipeline(tiny_reference):
    """The processor patchifies exactly like the real one: 1176 values per patch (3 x 2 x 14 x 14)."""
    batch = tiny_reference.processor.process_images([Image.new("RGB", (448, 448), "white")])
    assert batch["pixel_values"].shape == (1, 1024, 1176)
    assert batch["image_grid_thw"].tolist() == [[1, 32, 32]]
