"""Encoder batching logic with real ONNX Runtime sessions on the tiny export."""

from __future__ import annotations

import numpy as np
import pytest

from model_repository.colqwen2_serving.encoders import ImageEncoder, QueryEncoder, pooled_vectors, run_isolated
from model_repository.colqwen2_serving.errors import InputError
from model_repository.colqwen2_serving.queries import QueryTokenizer
from model_repository.colqwen2_serving.sessions import SessionConfig, create_session, parse_providers, provider_chain
from tests.images import square_chart


@pytest.fixture(scope="module")
def image_encoder(tiny_artifacts) -> ImageEncoder:
    return ImageEncoder(create_session(tiny_artifacts / "fp32" / "image_encoder.onnx", SessionConfig()), 448)


@pytest.fixture(scope="module")
def query_parts(tiny_artifacts):
    tokenizer = QueryTokenizer.from_processor_dir(tiny_artifacts / "processor")
    session = create_session(tiny_artifacts / "fp32" / "query_encoder.onnx", SessionConfig(providers=("cpu",)))
    return tokenizer, QueryEncoder(session, tokenizer.pad_id)


def test_pooled_is_the_normalised_mean_of_valid_rows():
    vectors = np.zeros((1, 4, 128), np.float32)
    vectors[0, 0, 0] = 1
    vectors[0, 1, 1] = 1
    vectors[0, 2:, 2] = 100  # padding rows must not count
    pooled = pooled_vectors(vectors, np.array([2]))
    assert np.allclose(pooled[0, :3], [2**-0.5, 2**-0.5, 0])


def test_image_requests_are_batched_and_split_back(image_encoder):
    pixels = [np.asarray(square_chart(448, seed))[None] for seed in range(3)]
    together = image_encoder.embed([np.concatenate(pixels[:2]), pixels[2]])
    alone = [image_encoder.embed([p])[0] for p in pixels]
    assert together[0].embeddings.shape == (2, 271, 128)
    assert together[1].num_vectors.tolist() == [[271]]
    assert np.abs(together[0].embeddings[1] - alone[1].embeddings[0]).max() < 1e-5
    assert np.abs(together[1].embeddings - alone[2].embeddings).max() < 1e-5
    assert np.allclose(np.linalg.norm(together[1].pooled, axis=-1), 1, atol=1e-5)


def test_malformed_pixels_fail_alone(image_encoder):
    good = np.asarray(square_chart(448))[None]
    results = image_encoder.embed([good, np.zeros((1, 224, 224, 3), np.uint8), good.astype(np.float32)])
    assert results[0].embeddings.shape == (1, 271, 128)
    assert isinstance(results[1], InputError) and "[n, 448, 448, 3]" in str(results[1])
    assert isinstance(results[2], InputError)


def test_queries_of_different_lengths_batch_like_alone(query_parts):
    tokenizer, encoder = query_parts
    requests = [tokenizer.encode([b"price"]), tokenizer.encode([b"a much longer query about prices", b"lego"])]
    together = encoder.embed(requests)
    alone = encoder.embed([requests[0]])[0]
    assert together[1].embeddings.shape[0] == 2
    assert together[0].num_vectors.tolist() == [[int(requests[0][1].sum())]]
    assert np.abs(together[0].embeddings - alone.embeddings).max() < 1e-5
    n = int(together[1].num_vectors[1, 0])
    assert (together[1].embeddings[1, n:] == 0).all()  # rows past num_vectors are zero


def test_a_failing_batch_is_retried_one_by_one():
    def run(batch):
        if any(item == "bad" for item in batch):
            raise RuntimeError("boom")
        return [item.upper() for item in batch]

    results = run_isolated(["a", "bad", "c"], run)
    assert results[0] == "A" and results[2] == "C" and isinstance(results[1], RuntimeError)


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


def test_a_large_batch_runs_in_bounded_session_calls(tiny_artifacts):
    calls = []

    class Counting:
        def __init__(self, session):
            self.session = session

        def run(self, outputs, feeds):
            calls.append(len(feeds["pixel_values"]))
            return self.session.run(outputs, feeds)

    session = create_session(tiny_artifacts / "fp32" / "image_encoder.onnx", SessionConfig(providers=("cpu",)))
    pixels = [np.asarray(square_chart(448, seed))[None] for seed in range(5)]
    chunked = ImageEncoder(Counting(session), 448, max_session_batch=2).embed(pixels)
    whole = ImageEncoder(session, 448).embed(pixels)
    assert calls == [2, 2, 1]
    for a, b in zip(chunked, whole, strict=True):
        assert np.abs(a.embeddings - b.embeddings).max() < 1e-5
