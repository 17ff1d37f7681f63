"""Image URLs through the gateway: `colqwen2-gateway` (uvicorn) in front of the real Triton, fetching from a real
image host on loopback that this gateway's operator allowed (`--url-allow-host`, `--url-allow-network`)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import gateway
from tests.image_server import IMAGE, Handler, serve


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    with serve() as url:
        yield url


@pytest.fixture(scope="module")
def allowed(triton_server, tmp_path_factory) -> Iterator[httpx.Client]:
    """A gateway that fetches from 127.0.0.1 (a host name and a network an operator names)."""
    folder = tmp_path_factory.mktemp("url-gateway")
    args = ("--url-allow-host", "127.0.0.1", "--url-allow-network", "127.0.0.1/32", "--url-timeout", "5",
            "--max-body-mb", "4", "--qdrant-path", str(folder / "qdrant"))  # fmt: skip
    with gateway(f"grpc://{triton_server.grpc_url}", *args, log=folder / "gateway.log") as (url, _):
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def vectors(reply: httpx.Response) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    return np.array(reply.json()["vectors"], np.float32)


def test_embed_by_url_answers_the_vectors_of_the_same_bytes(allowed, host):
    by_bytes = vectors(allowed.post("/embed", json={"image": base64.b64encode(IMAGE).decode()}))
    by_url = vectors(allowed.post("/embed", json={"url": f"{host}/image.png?signature=s3cr3t"}))
    assert by_url.shape == (271, 128) and np.array_equal(by_url, by_bytes)


def test_embed_batch_by_url_keeps_the_good_images_and_names_the_bad(allowed, host):
    urls = [f"{host}/image.png", f"{host}/missing.png", f"{host}/to/metadata", f"{host}/page.html",
            f"{host}/bomb.png", f"{host}/loop-a"]  # fmt: skip
    whole = allowed.post("/embed_batch", json={"urls": urls})
    assert whole.status_code == 400 and whole.json()["detail"].startswith(
        "urls[1]: cannot fetch the image at 127.0.0.1"
    )
    body = allowed.post("/embed_batch", json={"urls": urls, "partial": True}).json()
    assert body["count"] == 6 and body["grids"][0] == [16, 16] and body["embeddings"][1:] == [None] * 5
    details = [(e["index"], e["status"], e["detail"]) for e in body["errors"]]
    assert [d[:2] for d in details] == [(i, 400) for i in range(1, 6)]
    for (_, _, detail), reason in zip(
        details, ["HTTP 404", "169.254.169.254: the host is not on this service's allow-list",
                  "not an image (an HTML page)", "decompression bomb", "a redirect loop"], strict=True):  # fmt: skip
        assert reason in detail and "secret" not in detail
    refused = allowed.post("/embed_batch", json={"urls": [f"{host}/image.png"], "images": []})
    assert refused.status_code == 422 and "exactly one of `images` (base64) or `urls`" in refused.text


def test_one_of_image_or_url(allowed, host):
    both = allowed.post("/embed", json={"image": base64.b64encode(IMAGE).decode(), "url": f"{host}/image.png"})
    neither = allowed.post("/embed", json={})
    for reply in (both, neither):  # a malformed body, as a missing `image` was before URLs: 422
        assert reply.status_code == 422 and "give exactly one of `image` (base64) or `url`" in reply.text
    ftp = allowed.post("/embed", json={"url": "ftp://127.0.0.1/image.png"})
    assert ftp.status_code == 400 and "only http and https" in ftp.json()["detail"]
    elsewhere = allowed.post("/embed", json={"url": "http://localhost:9/image.png"})  # a host not on the list
    assert elsewhere.status_code == 400 and "not on this service's allow-list" in elsewhere.json()["detail"]


def test_index_and_search_by_url(allowed, host):
    url = f"{host}/image.png"
    indexed = allowed.post("/index", json={"key": "chart-by-url", "url": url, "payload": {"kind": "keepa_chart"}})
    assert indexed.status_code == 200, indexed.text
    assert indexed.json()["status"] == "new"
    hits = allowed.post("/search", json={"url": url, "limit": 1}).json()["hits"]
    assert hits[0]["key"] == "chart-by-url" and hits[0]["payload"]["source"] == url
    again = allowed.post("/index", json={"key": "chart-by-url", "image": base64.b64encode(IMAGE).decode()})
    assert again.json()["status"] in ("unchanged", "updated")  # the same bytes: nothing embedded again


def test_a_gateway_without_an_allow_list_fetches_no_url(gateway_url, host):
    """The default (and the chart's default render): URLs are refused before any connection is made."""
    Handler.seen.clear()
    with httpx.Client(base_url=gateway_url, timeout=60) as client:
        reply = client.post("/embed", json={"url": f"{host}/image.png"})
        batch = client.post("/embed_batch", json={"urls": [f"{host}/image.png"], "partial": True})
    assert reply.status_code == 400 and "fetches no image URLs" in reply.json()["detail"]
    assert batch.status_code == 200 and batch.json()["errors"][0]["status"] == 400
    assert Handler.seen == []
