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
    EncoderRunner,
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


def test_plan_calls_bounds_padding_where_the_host_computes_it():
    # a CPU host's vision calls: one grid size per call (padding 0); its text calls: at most 25 % padding
    costs = [504, 2916, 504, 504, 3072, 2916]
    assert plan_calls(costs, budget=16384, max_padding=0.0) == [[0, 2, 3], [1, 5], [4]]
    assert plan_calls(costs, budget=16384) == [[0, 2, 3, 1, 5], [4]]  # a GPU's: any padding
    assert plan_calls([20, 22, 25, 40], budget=8192, max_padding=0.25) == [[0, 1, 2], [3]]


def encoder(parts, vision_session=None, text_session=None, cap: int = 768) -> EncoderRunner:
    tokenizer, vision, text, _ = parts
    return EncoderRunner(
        VisionRunner(vision_session or vision, HIDDEN, Budget(4096, 8)),
        TextRunner(text_session or text, tokenizer.pad_id, tokenizer.image_token_id, HIDDEN, Budget(8192, 32)),
        max_visual_tokens=cap,
    )


def image_requests(parts, images) -> tuple:
    """What the preprocess model sends for these images in one request: prompts, PATCHES, GRID."""
    tokenizer, _, _, limits = parts
    items = [image_item(native(image, limits)) for image in images]
    patches, grids = image_request(items)
    ids, mask = left_pad([tokenizer.image_prompt_ids(r * c) for r, c in grids.tolist()], tokenizer.pad_id)
    return ids, mask, patches, grids


def test_mixed_grids_batch_in_budgeted_calls_and_match_alone(parts):
    images = [
        product_image(1, 1500, 1500),
        keepa_chart(2, 500, 200),
        keepa_chart(3, 1000, 400),
        product_image(4, 40, 40),
    ]
    requests = [
        image_requests(parts, images[:2]),
        image_requests(parts, images[2:3]),
        image_requests(parts, images[3:]),
    ]
    counting = Counting(parts[1], "patches")
    together = encoder(parts, vision_session=counting).run(requests)
    assert counting.calls[0][0] == 2 and all(b * n <= 4096 or b == 1 for b, n in counting.calls)
    assert together[0].embeddings.shape[0] == 2 and together[0].num_vectors[1, 0] == 7 * 18 + 15
    alone = encoder(parts)
    for r, k, image in [(0, 0, images[0]), (0, 1, images[1]), (1, 0, images[2]), (2, 0, images[3])]:
        single = alone.run([image_requests(parts, [image])])[0]
        n = int(single.num_vectors[0, 0])
        assert together[r].num_vectors[k, 0] == n and (together[r].embeddings[k, n:] == 0).all()
        assert np.abs(together[r].embeddings[k, :n] - single.embeddings[0]).max() < 1e-5


def test_malformed_requests_fail_alone(parts):
    good = image_requests(parts, [keepa_chart(1, 500, 200)])
    ids, mask, patches, grids = good
    runner = encoder(parts)
    results = runner.run(
        [
            good,
            (ids, mask, patches, np.array([[99, 99]], np.int32)),
            (ids, mask, patches.astype(np.int32), grids),
            (ids, mask, patches, None),
            (*left_pad([parts[0].image_prompt_ids(7 * 18 - 1)], parts[0].pad_id), patches, grids),
        ]
    )
    assert results[0].num_vectors.tolist() == [[141]]
    assert isinstance(results[1], InputError) and "needs 39204 patches" in str(results[1])
    assert isinstance(results[2], InputError) and "PATCHES must be uint8" in str(results[2])
    assert isinstance(results[3], InputError) and "PATCHES and GRID come together" in str(results[3])
    assert isinstance(results[4], InputError) and "image tokens for grids" in str(results[4])
    capped = encoder(parts, cap=100).run([good])[0]  # 7 x 18 = 126 visual tokens, over a cap of 100
    assert isinstance(capped, InputError) and "over the limit of 100 visual tokens" in str(capped)


def test_image_prompts_and_queries_share_the_text_calls(parts):
    tokenizer = parts[0]
    image = image_requests(parts, [keepa_chart(5, 500, 200)])
    queries = tokenizer.encode([b"a much longer query about prices", b"lego"])
    counting = Counting(parts[2], "input_ids")
    together = encoder(parts, text_session=counting).run([(*queries, None, None), image])
    assert len(counting.calls) == 1 and counting.calls[0][0] == 3  # two queries and one image prompt, one call
    assert together[1].num_vectors.tolist() == [[141]] and together[0].embeddings.shape[0] == 2
    alone = encoder(parts)
    assert np.abs(together[1].embeddings - alone.run([image])[0].embeddings).max() < 1e-5
    assert np.abs(together[0].embeddings - alone.run([(*queries, None, None)])[0].embeddings).max() < 1e-5
    n = int(together[0].num_vectors[1, 0])
    assert (together[0].embeddings[1, n:] == 0).all()  # rows past num_vectors are zero


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


def test_waves_answer_queries_first_then_images_every_few_in_arrival_order(parts):
    image = image_requests(parts, [keepa_chart(1, 500, 200)])
    two = image_requests(parts, [keepa_chart(2, 500, 200), keepa_chart(3, 1000, 400)])
    tokenizer = parts[0]
    query = (*left_pad([tokenizer.token_ids("lego")], tokenizer.pad_id), None, None)
    requests = [image, query, image, two, query, image, image, image]
    runner = encoder(parts)
    assert runner.waves(requests) == [list(range(8))] and runner.waves([]) == []  # a GPU's: the batch together
    runner.answer_every = 2  # a CPU host's (budgets.ANSWER_EVERY)
    assert runner.waves(requests) == [[1, 4], [0, 2], [3], [5, 6], [7]]
    assert runner.waves([image, image]) == [[0, 1]] and runner.waves([query]) == [[0]]
    runner.answer_every = 1
    assert runner.waves(requests) == [[1, 4], [0], [2], [3], [5], [6], [7]]
    waves = runner.waves(requests)
    answered = {i: a for wave in waves for i, a in zip(wave, runner.run([requests[i] for i in wave]), strict=True)}
    together = encoder(parts).run(requests)
    for i in range(len(requests)):
        assert np.abs(answered[i].embeddings - together[i].embeddings).max() < 1e-5


def test_served_cpu_sessions_do_not_spin(tiny_artifacts):
    path = tiny_artifacts / "fp32" / "text_encoder.onnx"
    key = "session.intra_op.allow_spinning"
    served = create_session(path, SessionConfig(providers=("cpu",), threads=1, spin=False))
    assert served.get_session_options().get_session_config_entry(key) == "0"
    default = create_session(path, SessionConfig(providers=("cpu",), threads=1))
    with pytest.raises(Exception, match="does not have"):  # ONNX Runtime's default: spinning
        default.get_session_options().get_session_config_entry(key)
