"""`colqwen2_serving.grid` against transformers' own Qwen2-VL processor and model, function by function."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference_resize
from transformers.vision_utils import get_vision_position_ids

from model_repository.colqwen2_serving import grid
from model_repository.colqwen2_serving.errors import InputError

PUBLISHED = grid.PixelLimits(3136, 602112)  # vidore/colqwen2-v1.0


def test_smart_resize_is_the_processors_on_every_kind_of_size():
    rng = np.random.default_rng(0)
    sizes = [
        (1, 1), (1, 200), (200, 1), (40, 40), (55, 57), (14, 14), (42, 42), (70, 98),  # below the minimum
        (200, 500), (400, 1000), (500, 800), (1500, 1500), (4000, 3000), (120, 1600),  # charts, photos
        (333, 517), (517, 333), (899, 301), (10, 1999), (2000, 10),  # odd sizes, extreme aspects
    ]  # fmt: skip
    sizes += [tuple(int(x) for x in rng.integers(1, 4000, 2)) for _ in range(300)]
    sizes += [(28 * k + 14, 28 * j + 14) for k, j in itertools.product(range(1, 12), repeat=2)]  # halves round to even
    for limits in (PUBLISHED, grid.PixelLimits(3136, 1003520), grid.PixelLimits(200704, 200704)):
        for h, w in sizes:
            if max(h, w) / min(h, w) > 200:
                continue
            expected = reference_resize(h, w, 28, limits.min_pixels, limits.max_pixels)
            assert grid.smart_resize(h, w, limits) == expected, (h, w, limits)


def test_extreme_aspect_ratios_are_refused_by_name():
    with pytest.raises(InputError, match=r"1000x4, an aspect ratio of 250\.0:1; ColQwen2 takes at most 200:1"):
        grid.smart_resize(4, 1000, PUBLISHED)
    assert grid.smart_resize(5, 1000, PUBLISHED)  # exactly 200:1 is allowed, as in the processor


@pytest.mark.parametrize(("rows", "cols"), [(2, 2), (7, 18), (32, 11), (2, 3)])
def test_patchify_is_the_processors_patch_order(tiny_reference, rows, cols):
    """An image already at grid size goes through the processor unresized: its normalised patches are
    ours, normalised, repeated over time."""
    processor = tiny_reference.processor
    rng = np.random.default_rng(rows * cols)
    pixels = rng.integers(0, 256, (rows * 28, cols * 28, 3), dtype=np.uint8)
    batch = processor.image_processor(images=[Image.fromarray(pixels)], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, rows * 2, cols * 2]]
    reference = batch["pixel_values"].reshape(-1, 3, 2, 14, 14)  # (channel, time, row, col) per patch
    ours = grid.patchify(pixels).reshape(-1, 3, 14, 14).astype(np.float32)
    mean = np.array(processor.image_processor.image_mean, dtype=np.float32)[None, :, None, None] * 255
    std = np.array(processor.image_processor.image_std, dtype=np.float32)[None, :, None, None] * 255
    for t in (0, 1):
        assert np.allclose((ours - mean) / std, reference[:, :, t].numpy(), atol=1e-5)


@pytest.mark.parametrize(("rows", "cols"), [(2, 2), (7, 18), (32, 11)])
def test_patch_positions_are_the_vision_towers(rows, cols):
    expected = get_vision_position_ids(torch.tensor([[1, rows * 2, cols * 2]]), 2)
    assert np.array_equal(grid.patch_positions(rows, cols), expected.numpy())


@pytest.mark.parametrize("size", [(500, 200), (300, 900), (40, 40), (1500, 1500)])
def test_prompt_positions_are_get_rope_index(tiny_reference, size):
    model, processor = tiny_reference.model, tiny_reference.processor
    batch = processor.process_images([Image.new("RGB", size, (200, 10, 10))])
    expected, _ = model.get_rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    ids = batch["input_ids"][0].numpy()
    _, h, w = batch["image_grid_thw"][0].tolist()
    ours = grid.sequence_positions(ids, model.config.image_token_id, (h // 2, w // 2))
    assert np.array_equal(ours, expected[:, 0].numpy())


def test_a_prompt_must_hold_its_grid_of_image_tokens():
    with pytest.raises(ValueError, match="not one run of 2 x 2"):
        grid.sequence_positions(np.array([1, 9, 9, 9, 2]), 9, (2, 2))
    assert grid.sequence_positions(np.array([5, 6, 7]), 9, None).tolist() == [[0, 1, 2]] * 3


def test_limits_come_from_the_saved_processor_and_caps_stay_inside_them(tiny_checkpoint):
    limits = grid.PixelLimits.from_processor_dir(tiny_checkpoint)
    assert limits == PUBLISHED and limits.max_visual_tokens == 768
    assert grid.PixelLimits.from_processor_config({"min_pixels": 3136, "max_pixels": 12845056}).max_pixels == 12845056
    assert limits.capped(256) == grid.PixelLimits(3136, 256 * 784)
    assert limits.capped(None) is limits
    for bad in (3, 769):
        with pytest.raises(ValueError, match=rf"max_visual_tokens {bad} is outside \[4, 768\]"):
            limits.capped(bad)
