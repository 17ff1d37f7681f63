"""Overload: admission refuses at once what would wait past its bound, a bounded queue refuses its overflow,
by name, and nothing else breaks.

A real Triton serves a tiny repository rendered with `max_queue_size` 2 and a long batching
delay, so that a burst of concurrent requests overflows the queue. Those overflowing requests get
UNAVAILABLE ("Exceeds maximum queue size") immediately instead of waiting; every accepted request
returns correct vectors; the server stays ready; and the SDK, which retries a busy server with
backoff, gets every image of a burst embedded.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from colqwen2_client import ColQwen2Client, ServerBusyError
from colqwen2_client._constants import PLACE_PARAMETER
from tritonclient.utils import InferenceServerException

from model_repository.colqwen2_serving.admission import Ledger, ledger_folder
from model_repository.render import RenderOptions, render
from model_repository.server import TritonServer
from tests.conftest import serving_python
from tests.images import square_chart


@pytest.fixture(scope="module")
def bounded_server(tiny_artifacts, tmp_path_factory):
    work = tmp_path_factory.mktemp("overload")
    options = RenderOptions(
        tiny_artifacts, work / "repo", device="cpu", max_queue_size=2, preprocess_max_queue=0,
        encoder_queue_delay_us=300_000, preferred_batch_sizes=(32,), preprocess_instances=1,
    )  # fmt: skip
    yield from _serve(options, work)


def _serve(options: RenderOptions, work):
    """A Triton serving `options`' repository, ready, until the fixture ends."""
    server = TritonServer.on_free_ports(render(options), python=serving_python())
    with open(work / "triton.log", "w") as log:
        server.start(log)
        server.wait_ready(180)
        yield server
        server.stop()


def _png() -> bytes:
    buffer = io.BytesIO()
    square_chart(448, seed=3).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_burst_overflows_the_queue_cleanly(bounded_server):
    image = _png()
    client = grpcclient.InferenceServerClient(bounded_server.grpc_url)

    def one(_: int) -> np.ndarray | InferenceServerException:
        tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=object))
        try:
            return client.infer("colqwen2", [tensor]).as_numpy("embeddings")
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, range(24)))
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    served = [r for r in results if isinstance(r, np.ndarray)]
    assert refused, "24 concurrent requests against a queue of 2 should overflow it"
    assert served, "the requests the queue accepted should be served"
    for exc in refused:
        # a full queue, or (on a loaded host) preprocessing's 500 ms queue bound: both busy, both at once
        message = exc.message()
        assert exc.status() == "StatusCode.UNAVAILABLE", exc
        assert "maximum queue size" in message or "Request timeout expired" in message, message
    # Every accepted request got the same, complete vectors: the overflow touched no one else.
    for vectors in served:
        np.testing.assert_array_equal(vectors, served[0])
    assert client.is_server_ready() and client.is_model_ready("colqwen2")


def test_the_sdk_reports_busy_and_retries_through_it(bounded_server):
    image = _png()
    url = f"grpc://{bounded_server.grpc_url}"
    with ColQwen2Client(url, max_retries=0) as impatient:

        def one(_: int):
            try:
                return impatient.embed(image)
            except ServerBusyError as exc:
                return exc

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(one, range(24)))
    busy = [r for r in results if isinstance(r, ServerBusyError)]
    assert busy and "server busy (colqwen2)" in str(busy[0])
    assert "maximum queue size" in str(busy[0]) or "Request timeout expired" in str(busy[0])
    assert busy[0].retryable
    # embed_batch sends the burst with a window, then re-sends what the server refused as busy.
    with ColQwen2Client(url, max_retries=3) as patient:
        results = patient.embed_batch([image] * 24, batch_size=24, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results), [r for r in results if isinstance(r, Exception)]
    assert {r.vectors.shape for r in results} == {results[0].vectors.shape}


def test_a_request_that_waited_too_long_is_refused_as_busy(tiny_artifacts, tmp_path):
    """The queue's time bound: requests still waiting after `queue_timeout_ms` are refused, named busy."""
    options = RenderOptions(
        tiny_artifacts, tmp_path / "repo", device="cpu", max_queue_size=0, queue_timeout_ms=100, admission_wait_ms=0,
        encoder_queue_delay_us=300_000, preferred_batch_sizes=(2,), max_batch_size=2,
    )  # fmt: skip
    server = TritonServer.on_free_ports(render(options), python=serving_python())
    with open(tmp_path / "triton.log", "w") as log:
        server.start(log)
        try:
            server.wait_ready(180)
            with ColQwen2Client(f"grpc://{server.grpc_url}", max_retries=0) as client:
                results = client._transport.infer_each("colqwen2", "image", [_png()] * 24, 24)
        finally:
            server.stop()
    refused = [r for r in results if isinstance(r, ServerBusyError)]
    assert refused and "timeout" in str(refused[0]).lower(), [str(r)[:120] for r in results]
    assert all(isinstance(r, dict) or isinstance(r, ServerBusyError) for r in results)


@pytest.fixture(scope="module")
def admitting_server(tiny_artifacts, tmp_path_factory):
    """Admission with a bound of 1 ms: past the floor of 2 image requests in flight, every image is refused."""
    work = tmp_path_factory.mktemp("admission")
    options = RenderOptions(
        tiny_artifacts, work / "repo", device="cpu", admission_wait_ms=1, admission_min_in_flight=2,
        encoder_queue_delay_us=200_000, preferred_batch_sizes=(32,),
    )  # fmt: skip
    yield from _serve(options, work)


def test_admission_refuses_at_once_and_keeps_nothing(admitting_server):
    image = _png()
    client = grpcclient.InferenceServerClient(admitting_server.grpc_url)

    def one(_: int) -> tuple[float, np.ndarray | InferenceServerException]:
        tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=object))
        start = time.perf_counter()
        try:
            return time.perf_counter() - start, client.infer("colqwen2", [tensor]).as_numpy("embeddings")
        except InferenceServerException as exc:
            return time.perf_counter() - start, exc

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    refused = [(t, r) for t, r in results if isinstance(r, InferenceServerException)]
    served = [r for _, r in results if isinstance(r, np.ndarray)]
    assert refused and len(served) >= 2, [str(r)[:100] for _, r in results]
    for seconds, exc in refused:
        assert exc.status() == "StatusCode.UNAVAILABLE", exc
        # admission's refusal, or preprocessing's queue full (16 waiting): both busy, both at once
        message = exc.message()
        assert ("busy: " in message and "retry in" in message) or "maximum queue size" in message, message
        assert seconds < 1.0  # answered before any decode or queue
    for vectors in served:
        np.testing.assert_array_equal(vectors, served[0])
    # every admitted request's ticket was released by the encoder that answered it
    assert Ledger(ledger_folder(admitting_server.process.pid)).tickets() == []
    assert client.is_server_ready()


def test_under_admission_the_sdk_retries_the_canary_passes_and_the_gateway_says_when(admitting_server):
    image = _png()
    url = f"grpc://{admitting_server.grpc_url}"
    with ColQwen2Client(url, max_retries=0) as impatient, ThreadPoolExecutor(12) as pool:
        health = pool.submit(impatient.health)  # the canary's 56 x 40 image passes the bound, whatever is ahead

        def one(_: int):
            try:
                return impatient.embed(image)
            except ServerBusyError as exc:
                return exc

        results = list(pool.map(one, range(12)))
        assert health.result()["status"] == "healthy"
    busy = [r for r in results if isinstance(r, ServerBusyError)]
    assert busy and str(busy[0]).startswith("server busy: ") and busy[0].retry_after >= 1
    assert busy[0].place == ""  # a client that does not retry is held no place
    with ColQwen2Client(url, max_retries=6) as patient:
        results = patient.embed_batch([image] * 12, batch_size=12, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results), [r for r in results if isinstance(r, Exception)]


def test_a_place_in_line_travels_through_the_ensemble_and_is_claimed(admitting_server):
    """The request parameter reaches preprocessing through the ensemble: a client that says it comes back ("")
    is refused with a place the ledger holds, and the retry that names it claims it."""
    image = _png()
    client = grpcclient.InferenceServerClient(admitting_server.grpc_url)
    ledger = Ledger(ledger_folder(admitting_server.process.pid))

    def one(place: str) -> str:
        tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=object))
        try:
            client.infer("colqwen2", [tensor], parameters={PLACE_PARAMETER: place})
            return ""
        except InferenceServerException as exc:
            return exc.message()

    with ThreadPoolExecutor(12) as pool:
        messages = [m for m in pool.map(one, [""] * 12) if m]
    held = {p.token for p in ledger.places()}
    tokens = [m.rsplit("with place ", 1)[1].split()[0] for m in messages if "with place " in m]
    assert tokens and set(tokens) <= held, messages
    assert one(tokens[0]) == ""  # nothing in flight now: admitted, and its place claimed
    assert tokens[0] not in {p.token for p in ledger.places()}


def test_the_bench_load_generator_retries_refusals_with_their_places(admitting_server):
    """`make bench`'s load generator (bench/load.py) against refusals: each refused request comes back at its hint
    with its place, and every request ends served; every admitted request's ticket released."""
    import asyncio

    from bench.load import drive

    out = asyncio.run(drive(admitting_server.grpc_url, "grpc", "colqwen2", [_png()], concurrency=6, requests=12))
    assert out.refusals and out.errors == 0 and out.given_up == 0 and len(out.latencies) == 12
    assert all(seconds < 1.0 for seconds in out.refusals)  # answered at once
    assert Ledger(ledger_folder(admitting_server.process.pid)).tickets() == []
