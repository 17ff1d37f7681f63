"""colqwen2_client against the real Triton server: sync and async, HTTP and gRPC."""

from __future__ import annotations

import asyncio
import base64
import inspect

import numpy as np
import pytest
import tritonclient.http as httpclient
from colqwen2_client import (
    AsyncColQwen2Client,
    ColQwen2Client,
    Embedding,
    InvalidInputError,
    ModelNotFoundError,
    ServerUnavailableError,
    maxsim,
)
from colqwen2_client._transport import parse_url, translate

from tests.images import encode, square_chart, truncated_png

CHARTS = [encode(square_chart(448, seed), "PNG") for seed in (11, 12, 13)]


def raw_embedding(triton_server, data: bytes, model: str = "colqwen2", name: str = "image") -> dict[str, np.ndarray]:
    """The same call made directly with tritonclient: the ground truth for the SDK."""
    with httpclient.InferenceServerClient(triton_server.http_url) as client:
        tensor = httpclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=object), binary_data=True)
        result = client.infer(model, [tensor])
        return {k: result.as_numpy(k) for k in ("embeddings", "num_vectors", "pooled")}


def urls(server) -> list[str]:
    return [f"http://{server.http_url}", f"grpc://{server.grpc_url}"]


def assert_same(embedding: Embedding, raw: dict[str, np.ndarray]) -> None:
    n = int(raw["num_vectors"][0, 0])
    assert embedding.vectors.shape == (n, 128) and embedding.vectors.dtype == np.float32
    assert np.array_equal(embedding.vectors, raw["embeddings"][0, :n])
    assert np.array_equal(embedding.pooled, raw["pooled"][0])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sync_client_returns_what_tritonclient_returns(triton_server, protocol, tmp_path):
    url = dict(zip(["http", "grpc"], urls(triton_server), strict=True))[protocol]
    raw = raw_embedding(triton_server, CHARTS[0])
    path = tmp_path / "chart.png"
    path.write_bytes(CHARTS[0])
    from PIL import Image

    with ColQwen2Client(url) as client:
        for form in (CHARTS[0], str(path), path, base64.b64encode(CHARTS[0]).decode(), Image.open(path)):
            assert_same(client.embed(form), raw)
        batch = client.embed_batch(CHARTS)
        assert_same(batch[0], raw)
        assert all(np.array_equal(batch[i].vectors, client.embed(CHARTS[i]).vectors) for i in (1, 2))
        query = client.embed_query("lego price drop")
        assert_same(query, raw_embedding(triton_server, b"lego price drop", "colqwen2_query", "text"))
        assert [q.num_vectors for q in client.embed_queries(["a", "lego price drop"])] == [11, query.num_vectors]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_async_client_returns_what_tritonclient_returns(triton_server, protocol):
    url = dict(zip(["http", "grpc"], urls(triton_server), strict=True))[protocol]
    raw = raw_embedding(triton_server, CHARTS[0])

    async def run() -> None:
        async with AsyncColQwen2Client(url) as client:
            assert_same(await client.embed(CHARTS[0]), raw)
            batch = await client.embed_batch(CHARTS)
            assert_same(batch[0], raw)
            query = await client.embed_query("lego price drop")
            assert_same(query, raw_embedding(triton_server, b"lego price drop", "colqwen2_query", "text"))
            scores = await client.score(query, batch)
            assert np.allclose(scores, [maxsim(query.vectors, b.vectors) for b in batch])
            assert (await client.health())["status"] == "healthy"

    asyncio.run(run())


def test_int8_precision_picks_the_int8_ensembles(triton_server):
    with ColQwen2Client(urls(triton_server)[1], precision="int8") as client:
        assert_same(client.embed(CHARTS[1]), raw_embedding(triton_server, CHARTS[1], "colqwen2_int8"))
        assert client.server_info()["precision"] == "int8_dynamic"


def test_score_is_maxsim(triton_server):
    with ColQwen2Client(urls(triton_server)[0]) as client:
        pages = client.embed_batch(CHARTS)
        query = client.embed_query("price history")
        expected = [(query.vectors @ p.vectors.T).max(axis=1).sum() for p in pages]
        assert np.allclose(client.score("price history", pages), expected, rtol=1e-5)
        assert np.allclose(client.score(query, CHARTS), expected, rtol=1e-5)  # raw images embedded on the way


def test_a_bad_image_in_a_batch(triton_server):
    with ColQwen2Client(urls(triton_server)[1]) as client:
        results = client.embed_batch([CHARTS[0], truncated_png(), CHARTS[1]], return_exceptions=True)
        assert isinstance(results[1], InvalidInputError) and "corrupt or truncated PNG" in str(results[1])
        assert "in ensemble" not in str(results[1])
        assert results[0].num_vectors == results[2].num_vectors == 271
        with pytest.raises(InvalidInputError, match=r"^image 1: corrupt or truncated"):
            client.embed_batch([CHARTS[0], truncated_png()])


def test_errors_are_the_sdks_own(triton_server, tmp_path):
    with ColQwen2Client(urls(triton_server)[0]) as client:
        with pytest.raises(InvalidInputError, match="empty image"):
            client.embed(b"")
        with pytest.raises(InvalidInputError, match="no such image file"):
            client.embed(str(tmp_path / "missing.png"))
        with pytest.raises(InvalidInputError, match="not valid base64"):
            client.embed("definitely not base64!")
        with pytest.raises(InvalidInputError, match="empty query"):
            client.embed_query(" ")
    for url in ("http://127.0.0.1:9", "grpc://127.0.0.1:9"):
        with ColQwen2Client(url, max_retries=1, timeout=5) as dead:
            with pytest.raises(ServerUnavailableError):
                dead.embed(CHARTS[0])
            assert dead.health() == {"status": "unhealthy", "gpu_available": False, "model_loaded": False}


def test_health_proves_the_models_with_a_canary(triton_server):
    for url in urls(triton_server):
        with ColQwen2Client(url) as client:
            assert client.health() == {
                "status": "healthy",
                "gpu_available": False,
                "model_loaded": True,
                "execution_provider": "cpu",
            }


def test_sync_and_async_clients_have_the_same_surface():
    def public(cls) -> dict[str, inspect.Signature]:
        return {n: inspect.signature(f) for n, f in vars(cls).items() if not n.startswith("_") and callable(f)}

    sync, async_ = public(ColQwen2Client), public(AsyncColQwen2Client)
    assert sync.keys() == async_.keys()
    for name in sync:
        assert list(sync[name].parameters) == list(async_[name].parameters), name
        coroutine = inspect.iscoroutinefunction(getattr(AsyncColQwen2Client, name))
        assert coroutine == (name != "with_options"), name
    assert hasattr(ColQwen2Client, "__enter__") and hasattr(AsyncColQwen2Client, "__aenter__")


def test_url_schemes():
    assert parse_url("http://h:1").protocol == "http" and parse_url("h").address == "h:8000"
    assert parse_url("grpc://h").address == "h:8001" and parse_url("grpcs://h:9").ssl
    with pytest.raises(ValueError, match="unsupported scheme"):
        parse_url("ftp://h")


def test_transport_errors_never_leak():
    from tritonclient.utils import InferenceServerException

    cases = {
        ("400", "bad"): InvalidInputError,
        ("StatusCode.UNAVAILABLE", "x"): ServerUnavailableError,
        ("404", "Request for unknown model: 'colqwen2_int8' is not found"): ModelNotFoundError,
    }
    for (status, message), expected in cases.items():
        assert type(translate(InferenceServerException(message, status=status))) is expected
    assert isinstance(translate(ConnectionRefusedError()), ServerUnavailableError)
    busy = translate(InferenceServerException("Exceeds maximum queue size", status="503"))
    assert busy.retryable and type(busy).__name__ == "ServerBusyError" and busy.retry_after is None
    # the server's admission: refused before any work, with how long to wait; the gateway passes that on
    from colqwen2_client.gateway.models import retry_headers, status_for

    message = "in ensemble 'colqwen2', busy: 14.2 s of encoder work ahead of this image; retry in 5 s"
    refused = translate(InferenceServerException(message, status="StatusCode.UNAVAILABLE"), "colqwen2")
    assert type(refused).__name__ == "ServerBusyError" and refused.retry_after == 5.0
    assert str(refused) == "server busy: 14.2 s of encoder work ahead of this image; retry in 5 s (colqwen2)"
    assert status_for(refused) == 503 and retry_headers(refused) == {"Retry-After": "5"}
    assert retry_headers(busy) == {"Retry-After": "1"} and retry_headers(InvalidInputError("x")) == {}
    # a place in line is the gateway's own client's: translated into the error, never shown to the gateway's callers
    from colqwen2_client.gateway.models import public_detail

    placed = translate(
        InferenceServerException(message + " with place 0a1b2c3d4e5f6789 due in 4.37 s", status="503"), "colqwen2"
    )
    assert refused.place == "" and placed.place == "0a1b2c3d4e5f6789" and placed.retry_after == 4.37  # not rounded
    assert public_detail(placed) == str(refused)


def test_image_inputs_without_a_server(tmp_path):
    from colqwen2_client.inputs import image_bytes

    data = CHARTS[0]
    assert image_bytes("data:image/png;base64," + base64.b64encode(data).decode()) == data
    assert image_bytes(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    assert image_bytes(memoryview(data)) == data
    with pytest.raises(InvalidInputError, match=r"unexpected character '\.'"):
        image_bytes("not base64.")
    with pytest.raises(InvalidInputError, match="unsupported image input of type int"):
        image_bytes(42)  # type: ignore[arg-type]


def test_the_client_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys, colqwen2_client, colqwen2_client.cli, colqwen2_client.gateway;"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnxruntime'));"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_health_names_the_provider_and_a_gpu_render_on_the_cpu_provider_is_unhealthy():
    from colqwen2_client._base import health_verdict

    gpu = {"device": "gpu", "allow_cpu_fallback": "false"}
    assert health_verdict(True, gpu, "tensorrt") == {
        "status": "healthy", "gpu_available": True, "model_loaded": True, "execution_provider": "tensorrt",
    }  # fmt: skip
    fell_back = health_verdict(True, gpu, "cpu")
    assert fell_back["status"] == "unhealthy" and fell_back["gpu_available"] is False
    assert fell_back["execution_provider"] == "cpu" and fell_back["model_loaded"] is True
    assert health_verdict(True, gpu | {"allow_cpu_fallback": "true"}, "cpu")["status"] == "healthy"
    assert health_verdict(True, {"device": "cpu"}, "cpu")["status"] == "healthy"
