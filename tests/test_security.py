"""Locked-down defaults against real processes: the gateway's token, limits and deadline; Triton's admin APIs.

Bad input of every kind (no token, a wrong or malformed one, a huge header, a body sent byte by byte,
an unknown model) gets a clear 4xx without a traceback, and the service keeps answering others.
"""

from __future__ import annotations

import base64
import io
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from colqwen2_client import ColQwen2Client
from tritonclient.utils import InferenceServerException

from model_repository.server import ADMIN_APIS, GRPC_ADMIN_HEADER, TritonServer
from tests.conftest import gateway, serving_python
from tests.images import square_chart

TOKEN = "s3cret-token-for-tests"


def _png(size: tuple[int, int] = (448, 448), seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    square_chart(512, seed=seed).resize(size).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def locked(triton_server, tmp_path_factory):
    work = tmp_path_factory.mktemp("locked")
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    with gateway(
        f"grpc://{triton_server.grpc_url}", "--token-file", str(token_file), "--request-timeout", "3",
        log=work / "gateway.log",
    ) as (url, process):  # fmt: skip
        yield url, process, work / "gateway.log"


def embed_body(seed: int = 0) -> dict:
    return {"image": base64.b64encode(_png(seed=seed)).decode()}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"bearer{TOKEN}",
        f"Basic {TOKEN}",
        "Bearer",
        f"Bearer  {TOKEN}",
        "x" * 4000,
    ],
)
def test_no_or_bad_token_is_401_and_echoes_nothing(locked, authorization):
    url, _, _ = locked
    headers = {"authorization": authorization} if authorization is not None else {}
    reply = httpx.post(f"{url}/embed", json=embed_body(), headers=headers, timeout=30)
    assert reply.status_code == 401
    assert reply.json() == {"detail": "missing or invalid bearer token"}
    assert reply.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in reply.text and "wrong" not in reply.text


def test_the_right_token_embeds_and_health_stays_open(locked, triton_server):
    url, _, _ = locked
    reply = httpx.post(f"{url}/embed", json=embed_body(), headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert reply.status_code == 200
    with ColQwen2Client(f"grpc://{triton_server.grpc_url}") as client:
        want = client.embed(_png())
    np.testing.assert_allclose(np.asarray(reply.json()["vectors"]), want.vectors, atol=1e-5)
    health = httpx.get(f"{url}/health", timeout=30)  # no token: the original probe keeps working
    assert health.status_code == 200 and health.json()["status"] == "healthy"


def test_cors_is_off(locked):
    url, _, _ = locked
    preflight = httpx.options(
        f"{url}/embed", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_a_huge_header_is_refused_cleanly(locked):
    url, process, _ = locked
    reply = httpx.get(f"{url}/health", headers={"x-padding": "a" * 40_000}, timeout=30)
    assert reply.status_code == 431 and reply.json() == {"detail": "request headers over 16384 bytes"}
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200 and process.running()


def _whole(reply: bytes) -> bool:
    """Whether `reply` holds a whole HTTP response: its headers and Content-Length bytes of body."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    return bool(sep) and (length is None or len(body) >= int(length.group(1)))


def test_a_body_sent_byte_by_byte_ends_at_the_deadline(locked):
    url, process, _ = locked
    port = int(url.rsplit(":", 1)[1])
    body = b'{"image": "' + b"A" * 200 + b'"}'
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        reply = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.25)
            try:
                reply += sock.recv(65536)
            except TimeoutError:
                continue
            if reply:
                break
        sock.settimeout(10)
        while not _whole(reply):  # the headers and the body may come in separate segments
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    took = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"not received within 3 s" in reply
    assert took < 10
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200 and process.running()


def test_unknown_precision_and_unknown_model_are_clear_4xx(locked, triton_server):
    url, _, _ = locked
    reply = httpx.post(
        f"{url}/embed", json=embed_body() | {"precision": "fp8"}, headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert (reply.status_code == 422 and "fp8" not in reply.text.split("input")[0]) or reply.status_code == 422
    direct = httpx.post(f"http://{triton_server.http_url}/v2/models/colqwen3/infer", json={"inputs": []})
    assert 400 <= direct.status_code < 500 and "colqwen3" in direct.json()["error"]


def test_overload_is_503_at_once_and_memory_stays_bounded(triton_server, tmp_path):
    """10x the gateway's limit at once: every request answered, 200 or 503, within the deadline."""
    image = {"image": base64.b64encode(_png((1200, 1200), seed=5)).decode()}
    with gateway(f"grpc://{triton_server.grpc_url}", "--max-concurrency", "2", "--request-timeout", "60") as (
        url,
        process,
    ):

        def rss_mb() -> float:
            return int(Path(f"/proc/{process.pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024

        def one(_: int) -> tuple[int, float]:
            started = time.monotonic()
            reply = httpx.post(f"{url}/embed", json=image, timeout=120)
            return reply.status_code, time.monotonic() - started

        httpx.post(f"{url}/embed", json=image, timeout=120)  # warm
        before = rss_mb()
        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(one, range(20)))
        after = rss_mb()
    codes = [code for code, _ in results]
    assert set(codes) <= {200, 503} and codes.count(200) >= 2 and 503 in codes, codes
    assert max(seconds for code, seconds in results if code == 503) < 2.0  # refused at once, not queued
    assert max(seconds for _, seconds in results) < 60
    assert after - before < 150, (before, after)


def test_a_silent_triton_is_504_at_the_deadline(tmp_path):
    """Triton that accepts connections and never answers: the gateway answers 504 at its deadline."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        with gateway(f"http://127.0.0.1:{port}", "--request-timeout", "2") as (url, _):
            started = time.monotonic()
            reply = httpx.post(f"{url}/embed", json=embed_body(), timeout=30)
            took = time.monotonic() - started
    assert reply.status_code == 504 and reply.json() == {"detail": "no answer within 2 s"}
    assert took < 5


# -- Triton's admin APIs ----------------------------------------------------------------------------
ADMIN_KEY = "admin-key-for-tests"


@pytest.fixture(scope="module")
def restricted(tiny_repository, tmp_path_factory):
    server = TritonServer.on_free_ports(tiny_repository, admin_key=ADMIN_KEY, python=serving_python())
    with open(tmp_path_factory.mktemp("restricted") / "triton.log", "w") as log:
        server.start(log)
        server.wait_ready(180)
        yield server
        server.stop()


HTTP_ADMIN_CALLS = {  # one call per restricted API
    "model-repository": ("POST", "/v2/repository/index"),
    "shared-memory": ("GET", "/v2/systemsharedmemory/status"),
    "trace": ("GET", "/v2/trace/setting"),
    "logging": ("GET", "/v2/logging"),
}


@pytest.mark.parametrize("api", ADMIN_APIS)
def test_admin_apis_need_the_key_over_http(restricted, api):
    method, path = HTTP_ADMIN_CALLS[api]
    url = f"http://{restricted.http_url}{path}"
    refused = httpx.request(method, url)
    assert refused.status_code == 403, (api, refused.status_code, refused.text)
    assert httpx.request(method, url, headers={"admin-key": "wrong"}).status_code == 403
    assert httpx.request(method, url, headers={"admin-key": ADMIN_KEY}).status_code == 200


def test_admin_apis_need_the_key_over_grpc_and_inference_stays_open(restricted):
    client = grpcclient.InferenceServerClient(restricted.grpc_url)
    for call in (client.get_log_settings, client.get_trace_settings, client.get_system_shared_memory_status):
        with pytest.raises(InferenceServerException, match=r"(?i)restricted|admin-key|permission"):
            call()
        call(headers={GRPC_ADMIN_HEADER: ADMIN_KEY})
    with pytest.raises(InferenceServerException):
        client.update_log_settings({"log_verbose_level": 1})
    # inference, health, metadata and config need no key
    assert client.is_server_ready() and client.is_model_ready("colqwen2")
    assert client.get_model_config("colqwen2", as_json=True)["config"]["name"] == "colqwen2"
    with ColQwen2Client(f"grpc://{restricted.grpc_url}") as sdk:
        assert sdk.embed(_png()).vectors.shape[1] == 128
        assert sdk.health()["status"] == "healthy"
    client.close()
