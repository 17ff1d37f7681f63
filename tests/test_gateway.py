"""`colqwen2-gateway` (uvicorn, real sockets) in front of the real Triton server: the original API."""

from __future__ import annotations

import base64
import itertools

import httpx
import numpy as np
import pytest
import schemathesis
from colqwen2_client import ColQwen2Client
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.images import encode, png_bomb, square_chart, truncated_png

CHART = encode(square_chart(448, seed=31), "PNG")
B64 = base64.b64encode(CHART).decode()
TRUNCATED_JPEG = encode(square_chart(448), "JPEG")[:3000]


@pytest.fixture(scope="module")
def http(gateway_url):
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(triton_server):
    with ColQwen2Client(f"grpc://{triton_server.grpc_url}") as client:
        yield client


def is_vector(value) -> bool:
    return isinstance(value, list) and len(value) == 128 and all(isinstance(x, float) for x in value)


def test_embed_keeps_the_original_shape(http, sdk):
    reply = http.post("/embed", json={"image": B64})
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    body = reply.json()
    # The original keys in their order, then the image's grid of visual tokens (448 x 448: 16 x 16).
    assert list(body) == ["embedding", "dim", "vectors", "num_vectors", "grid"] and body["grid"] == [16, 16]
    assert is_vector(body["embedding"]) and body["dim"] == 128 and body["num_vectors"] == 271
    assert len(body["vectors"]) == 271 and all(is_vector(v) for v in body["vectors"])
    expected = sdk.embed(CHART)
    assert np.array_equal(np.array(body["embedding"], np.float32), expected.pooled)  # float32 round-trips exactly
    assert np.array_equal(np.array(body["vectors"], np.float32), expected.vectors)


def test_embed_batch_keeps_the_original_shape(http, sdk):
    other = encode(square_chart(448, seed=32).resize((500, 200)), "JPEG")  # a Keepa chart: 7 x 18 visual tokens
    body = http.post("/embed_batch", json={"images": [B64, base64.b64encode(other).decode()]}).json()
    assert list(body) == ["embeddings", "count", "vectors", "grids"] and body["count"] == 2
    assert all(is_vector(e) for e in body["embeddings"]) and [len(v) for v in body["vectors"]] == [271, 141]
    assert body["grids"] == [[16, 16], [7, 18]]
    # Batched with a larger image, the chart's patches are padded: equal to alone up to float rounding.
    assert np.abs(np.array(body["embeddings"][1], np.float32) - sdk.embed(other).pooled).max() < 1e-6
    empty = {"embeddings": [], "count": 0, "vectors": [], "grids": []}
    assert http.post("/embed_batch", json={"images": []}).json() == empty


def test_embed_batch_partial_returns_the_good_images_and_names_the_bad(http, sdk):
    broken = base64.b64encode(truncated_png()).decode()
    images = [B64, "not base64!", broken, B64]
    whole = http.post("/embed_batch", json={"images": images})
    assert whole.status_code == 400 and "images[1]" in whole.json()["detail"]  # the original all-or-nothing stays
    reply = http.post("/embed_batch", json={"images": images, "partial": True})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["count"] == 4 and body["embeddings"][1] is None and body["embeddings"][2] is None
    expected = sdk.embed(CHART)
    for i in (0, 3):
        assert np.array_equal(np.array(body["vectors"][i], np.float32), expected.vectors)
        assert body["grids"][i] == [16, 16]
    assert [(e["index"], e["status"]) for e in body["errors"]] == [(1, 400), (2, 400)]
    assert body["errors"][0]["detail"].startswith("images[1]") and "base64" in body["errors"][0]["detail"]
    assert body["errors"][1]["detail"].startswith("images[2]")
    clean = http.post("/embed_batch", json={"images": [B64], "partial": True}).json()
    assert clean["errors"] == [] and clean["count"] == 1
    all_bad = http.post("/embed_batch", json={"images": [broken], "partial": True})
    assert all_bad.status_code == 200 and all_bad.json()["embeddings"] == [None]  # the input's fault: still 200


def test_embed_query_and_precision(http, sdk):
    body = http.post("/embed_query", json={"text": "lego price drop"}).json()
    assert body["num_vectors"] == sdk.embed_query("lego price drop").num_vectors
    int8 = http.post("/embed", json={"image": B64, "precision": "int8"}).json()
    assert (
        int8["num_vectors"] == 271 and int8["embedding"] != http.post("/embed", json={"image": B64}).json()["embedding"]
    )


def test_health_is_a_canary(http):
    reply = http.get("/health")
    assert reply.status_code == 200
    assert reply.json() == {
        "status": "healthy",
        "gpu_available": False,
        "model_loaded": True,
        "execution_provider": "cpu",
    }


@pytest.mark.parametrize(
    ("path", "body", "status", "detail"),
    [
        ("/embed", {"image": "%%% not base64"}, 400, "image is not valid base64"),
        (
            "/embed",
            {"image": base64.b64encode(encode(square_chart(448), "JPEG")[:3000]).decode()},
            400,
            "truncated JPEG",
        ),
        ("/embed", {"image": base64.b64encode(png_bomb()).decode()}, 400, "refused before decoding"),
        ("/embed", {"image": ""}, 400, "empty image"),
        ("/embed_batch", {"images": [B64, base64.b64encode(truncated_png()).decode()]}, 400, "images[1]: corrupt"),
        ("/embed_batch", {"images": [B64, "@@"]}, 400, "images[1] is not valid base64"),
        ("/embed_batch", {"images": [B64] * 9}, 422, "at most 8 items"),
        ("/embed_query", {"text": ""}, 400, "empty query"),
        ("/embed_query", {"text": "lego " * 600}, 400, "over the limit of 512"),
        ("/embed", {"images": B64}, 422, "give exactly one of `image` (base64) or `url`"),
        ("/embed", {"image": B64, "precision": "fp64"}, 422, "fp16"),
    ],
)
def test_bad_requests_get_clear_4xx(http, path, body, status, detail):
    reply = http.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert detail in reply.text
    assert "input" not in reply.json() and len(reply.content) < 2000  # no echo of megabytes of base64


def test_body_size_limit_gives_413(http):
    big = base64.b64encode(b"\0" * (4 * 2**20)).decode()
    reply = http.post("/embed", json={"image": big})
    assert reply.status_code == 413 and "over the limit" in reply.json()["detail"]

    def chunks():
        for _ in range(6):
            yield b" " * 2**20

    chunked = http.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_index_and_search_through_the_gateway(http, sdk):
    """POST /index keys items (new, unchanged, updated, replaced); POST /search filters both stages."""
    from colqwen2_client.catalog import point_id

    chart, redrawn = encode(square_chart(448, seed=40), "PNG"), encode(square_chart(448, seed=41), "PNG")
    photo = encode(square_chart(224, seed=42), "JPEG")
    key = "DE:B0GATEWAY1:keepa_chart"
    fields = {"asin": "B0GATEWAY1", "marketplace": "DE", "kind": "keepa_chart"}

    def index(image: bytes, payload: dict, item_key: str = key) -> dict:
        body = {"key": item_key, "image": base64.b64encode(image).decode(), "payload": payload}
        reply = http.post("/index", json=body)
        assert reply.status_code == 200, reply.text
        return reply.json()

    first = index(chart, fields)
    assert first["status"] == "new" and first["id"] == point_id(key)
    assert index(chart, fields)["status"] == "unchanged"
    assert index(chart, fields | {"category": "toys"})["status"] == "updated"
    assert index(redrawn, fields | {"category": "toys"})["status"] == "replaced"
    assert index(photo, {"kind": "product_image"}, "photo-1")["status"] == "new"

    b64 = base64.b64encode(redrawn).decode()
    found = http.post("/search", json={"image": b64, "where": {"kind": "keepa_chart"}, "limit": 5})
    assert found.status_code == 200, found.text
    hits = found.json()["hits"]
    assert [h["key"] for h in hits] == [key] and hits[0]["payload"]["category"] == "toys"
    assert hits[0]["score"] == pytest.approx(sdk.embed(redrawn).num_vectors, abs=1e-2)  # itself: 1 per vector
    text = http.post("/search", json={"text": "price chart", "where": {"key": [key, "photo-1"]}, "limit": 1})
    assert text.status_code == 200 and len(text.json()["hits"]) == 1
    for body, detail in [
        ({"text": "x", "where": {"colour": "red"}}, "unknown filter field 'colour'"),
        ({"text": "x", "where": {"marketplace": 4}}, "filter 'marketplace' is a keyword field"),
        ({"text": "x", "image": b64}, "exactly one of `text`, `image` or `url`"),
    ]:
        reply = http.post("/search", json=body)
        assert reply.status_code == 400 and detail in reply.json()["detail"], reply.text
    clash = http.post("/index", json={"key": "k", "image": b64, "payload": {"sha256": "x"}})
    assert clash.status_code == 400 and "'sha256' is written by the index" in clash.json()["detail"]


def test_openapi_documents_the_api(http):
    spec = http.get("/openapi.json").json()
    assert {"/embed", "/embed_batch", "/embed_query", "/health", "/search", "/index"} <= set(spec["paths"])
    assert {"400", "413", "503"} <= set(spec["paths"]["/embed"]["post"]["responses"])


def test_fuzzing_the_openapi_finds_no_server_error(gateway_url):
    """Bounded property-based fuzz of every operation with schema-valid and schema-breaking data
    (schemathesis strategies, 30 examples per operation and mode, fixed seed): never a 5xx.
    schemathesis' pytest plugin does not load under pytest 9, so hypothesis drives it directly."""
    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/embed", "/embed_batch", "/embed_query", "/health", "/search", "/index"}
    statuses: list[int] = []
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):
        if operation.path == "/health" and mode is schemathesis.GenerationMode.NEGATIVE:
            continue  # no parameters to break

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def no_server_error(case) -> None:
            statuses.append(case.call_and_validate(checks=[not_a_server_error]).status_code)

        no_server_error()
    assert len(statuses) >= 180 and max(statuses) < 500, sorted(set(statuses))
    assert {200, 400, 422} <= set(statuses)  # the fuzz reached both success and validation paths
