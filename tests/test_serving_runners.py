"""The encoder runners' batching with real ONNX Runtime sessions on the tiny export."""

from __future__ import annotations

import numpy as np
import pytest

from export.sample_images import keepa_chart, product_image
from model_repository.colqwen2_serving.errors import InputError
from model_repository.colqwen2_serving.feeds import plan_calls
from model_repository.colqwen2_serving.grid import PixelLimits
from model_repository.colqwen2_serving.imaging import native
from model_repository.colqwen2_serving.preprocess import image_item
from model_repository.colqwen2_serving.prompts import PromptTokenizer, left_pad
from model_repository.colqwen2_serving.runners import (
    Budget,
    TextRunner,
    VisionRunner,
    pooled_vectors,
    run_calls,
    text_profile,
    vision_profile,
)
from model_repository.colqwen2_serving.sessions import SessionConfig, create_session, parse_providers, provider_chain

HIDDEN = 64  # the tiny checkpoint's text width


class Counting:
    """A session that records the batch and padded length of every call."""

    def __init__(self, session, axis_input: str) -> None:
        self.session, self.axis_input, self.calls = session, axis_input, []

    def run(self, outputs, feeds):
        self.calls.append(feeds[self.axis_input].shape[:2])
        return self.session.run(outputs, feeds)


@pytest.fixture(scope="module")
def parts(tiny_artifacts):
    tokenizer = PromptTokenizer.from_processor_dir(tiny_artifacts / "processor")
    cpu = SessionConfig(providers=("cpu",))
    vision = create_session(tiny_artifacts / "fp32" / "vision_encoder.onnx", cpu)
    text = create_session(tiny_artifacts / "fp32" / "text_encoder.onnx", cpu)
    limits = PixelLimits.from_processor_dir(tiny_artifacts / "processor")
    return tokenizer, vision, text, limits


def image_request(items):
    """What the preprocess model sends for these images: PATCHES [n, N, 588], GRID [n, 2]."""
    longest = max(i.n_patches for i in items)
    patches = np.zeros((len(items), longest, 588), np.uint8)
    for k, item in enumerate(items):
        patches[k, : item.n_patches] = item.patches
    return patches, np.array([i.grid for i in items], dtype=np.int32)


def test_pooled_is_the_normalised_mean_of_valid_rows():
    vectors = np.zeros((1, 4, 128), np.float32)
    vectors[0, 0, 0] = 1
    vectors[0, 1, 1] = 1
    vectors[0, 2:, 2] = 100  # padding rows must not count
    pooled = pooled_vectors(vectors, np.array([2]))
    assert np.allclose(pooled[0, :3], [2**-0.5, 2**-0.5, 0])


def test_plan_calls_groups_by_size_within_the_budget():
    costs = [1000, 100, 3000, 120, 900, 5000]
    calls = plan_calls(costs, budget=2400, max_items=3)
    assert sorted(i for call in calls for i in call) == list(range(6))
    for call in calls:
        assert len(call) <= 3 and (len(call) == 1 or len(call) * max(costs[i] for i in call) <= 2400)
    assert calls == [[1, 3], [4, 0], [2], [5]]  # small ones together; those over budget alone


def test_mixed_grids_batch_in_budgeted_calls_and_match_alone(parts):
    _, vision, _, limits = parts
    images = [
        product_image(1, 1500, 1500),
        keepa_chart(2, 500, 200),
        keepa_chart(3, 1000, 400),
        product_image(4, 40, 40),
    ]
    items = [image_item(native(image, limits)) for image in images]
    counting = Counting(vision, "patches")
    runner = VisionRunner(counting, HIDDEN, Budget(4096, 8))
    together = runner.run([image_request(items[:2]), image_request(items[2:3]), image_request(items[3:])])
    assert counting.calls[0][0] == 2 and all(b * n <= 4096 or b == 1 for b, n in counting.calls)
    assert together[0].shape == (2, items[0].grid[0] * items[0].grid[1], HIDDEN)
    alone = VisionRunner(vision, HIDDEN, Budget(4096, 8))
    for request, (k, item) in [(0, (0, items[0])), (0, (1, items[1])), (1, (0, items[2])), (2, (0, items[3]))]:
        n = item.grid[0] * item.grid[1]
        single = alone.run([image_request([item])])[0][0]
        assert np.abs(together[request][k, :n] - single).max() < 1e-5
        assert (together[request][k, n:] == 0).all()


def test_malformed_vision_requests_fail_alone(parts):
    _, vision, _, limits = parts
    good = image_request([image_item(native(keepa_chart(1, 500, 200), limits))])
    runner = VisionRunner(vision, HIDDEN, Budget(4096, 8))
    results = runner.run([good, (good[0], np.array([[99, 99]], np.int32)), (good[0].astype(np.int32), good[1])])
    assert results[0].shape[0] == 1
    assert isinstance(results[1], InputError) and "needs 39204 patches" in str(results[1])
    assert isinstance(results[2], InputError) and "PATCHES must be uint8" in str(results[2])


def test_image_prompts_and_queries_share_the_text_runner(parts):
    tokenizer, vision, text, limits = parts
    item = image_item(native(keepa_chart(5, 500, 200), limits))
    visual = VisionRunner(vision, HIDDEN, Budget(4096, 8)).run([image_request([item])])[0]
    ids, mask = left_pad([tokenizer.image_prompt_ids(item.grid[0] * item.grid[1])], tokenizer.pad_id)
    image_request_ = (ids, mask, visual, np.array([item.grid], np.int32))
    queries = tokenizer.encode([b"a much longer query about prices", b"lego"])
    counting = Counting(text, "input_ids")
    runner = TextRunner(counting, tokenizer.pad_id, tokenizer.image_token_id, HIDDEN, Budget(8192, 32))
    together = runner.run([(*queries, None, None), image_request_])
    assert together[1].num_vectors.tolist() == [[len(ids[0])]] and together[0].embeddings.shape[0] == 2
    alone = TextRunner(text, tokenizer.pad_id, tokenizer.image_token_id, HIDDEN, Budget(8192, 32))
    assert np.abs(together[1].embeddings - alone.run([image_request_])[0].embeddings).max() < 1e-5
    assert np.abs(together[0].embeddings - alone.run([(*queries, None, None)])[0].embeddings).max() < 1e-5
    n = int(together[0].num_vectors[1, 0])
    assert (together[0].embeddings[1, n:] == 0).all()  # rows past num_vectors are zero
    bad = runner.run([(ids, mask, visual, None), (ids, mask, visual[:, :3], np.array([item.grid], np.int32))])
    assert "VISUAL and GRID come together" in str(bad[0]) and "image tokens for grids" in str(bad[1])


def test_a_failing_call_is_retried_one_by_one():
    def call(batch):
        if any(item == "bad" for item in batch):
            raise RuntimeError("boom")
        return [item.upper() for item in batch]

    results = run_calls(["a", "bad", "c"], [1, 1, 1], Budget(10), call)
    assert results[0] == "A" and results[2] == "C" and isinstance(results[1], RuntimeError)


def test_tensorrt_profiles_follow_the_budgets():
    vision = dict((name, (lo, opt, hi)) for name, lo, opt, hi in vision_profile(Budget(6144, 2), 768))
    assert vision["patches"][2] == (2, 3072, 588) and vision["patch_mask"][0] == (1, 4)
    text = dict((name, (lo, opt, hi)) for name, lo, opt, hi in text_profile(Budget(8192, 32), 783, 1536))
    assert text["position_ids"][2] == (3, 32, 783) and text["visual_features"][2] == (8192, 1536)


def test_provider_chain_keeps_what_the_host_has(tmp_path):
    config = SessionConfig(precision="int8", profile=(("x", (1, 2), (4, 2), (8, 2)),))
    chain = provider_chain(config, tmp_path / "m.onnx", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert [c if isinstance(c, str) else c[0] for c in chain] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    full = provider_chain(config, tmp_path / "m.onnx", ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    options = full[0][1]
    assert options["trt_int8_enable"] and options["trt_profile_max_shapes"] == "x:8x2"
    with pytest.raises(RuntimeError, match="none of the execution providers"):
        provider_chain(SessionConfig(providers=("tensorrt",)), tmp_path / "m.onnx", ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="execution_providers"):
        parse_providers("cuda,metal")
