"""Self-healing against a real Triton: faults during a burst, busy is not dead, the supervisor's endpoint.

Each fault is injected with SIGKILL while 64 requests are in flight (32 through an SDK client that
retries, 32 through one that does not): a preprocess stub, the encoder stub, tritonserver itself.
Stated bounds, checked here on the tiny checkpoint: every in-flight request ends (a result or a
clear error) within IN_FLIGHT_BOUND seconds; the retrying client gets every image embedded, equal
to the vectors from before the fault; the service answers a canary correctly again within
RECOVERY_BOUND seconds of the kill, with no operator.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from colqwen2_client import ColQwen2Client, ColQwen2Error, Embedding, ServerBusyError
from colqwen2_client._transport import translate
from PIL import Image
from tritonclient.utils import InferenceServerException

from model_repository.processes import free_port
from model_repository.render import RenderOptions, render
from model_repository.server import TritonServer
from model_repository.supervisor import (
    Observation,
    Supervisor,
    SupervisorSettings,
    canary_outcome,
    dead_reason,
)
from tests.conftest import serving_python
from tests.images import square_chart

IN_FLIGHT_BOUND = 60.0  # seconds: every request of the burst has ended (result or error)
RECOVERY_BOUND = 30.0  # seconds from the kill until a canary passes again


# -- the verdict, as plain data ---------------------------------------------------------------------
def test_busy_is_never_dead_and_each_death_is_named():
    settings = SupervisorSettings(failures=3, hang_after=60)
    assert dead_reason(Observation(pending_for=59, failed_canaries=2), settings) is None  # slow, not dead
    assert dead_reason(Observation(exit_code=-9), settings)[0] == "server_exited"
    assert dead_reason(Observation(missing_stubs=("colqwen2_encoder_fp32_0_0",)), settings) == (
        "stub_died",
        "Python backend stub died: colqwen2_encoder_fp32_0_0",
    )
    assert dead_reason(Observation(failed_canaries=3, last_error="boom"), settings)[0] == "canary_failed"
    assert dead_reason(Observation(pending_for=60), settings)[0] == "canary_hung"


def test_a_full_queue_or_a_slow_answer_is_busy_anything_else_failed():
    from colqwen2_client.errors import RequestTimeoutError, ServerError, ServerUnavailableError

    assert canary_outcome(None) == "ok"
    assert canary_outcome(ServerBusyError("queue full")) == "busy"
    assert canary_outcome(RequestTimeoutError("slow")) == "busy"
    assert canary_outcome(ServerUnavailableError("model process down")) == "failed"
    assert canary_outcome(ServerError("wrong vectors")) == "failed"
    with pytest.raises(ValueError):
        SupervisorSettings(failures=0)


# -- against a real server --------------------------------------------------------------------------
def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def burst_images() -> list[bytes]:
    """32 images users send: square photos, wide charts, tall images, a large photo."""
    shapes = [(448, 448), (500, 200), (300, 900), (1000, 400), (1200, 1200), (517, 333), (1600, 120), (800, 800)]
    return [_png(square_chart(512, seed=i).resize(shapes[i % len(shapes)])) for i in range(32)]


def supervised(tiny_artifacts, work, restart: bool, **render_overrides) -> Supervisor:
    options = RenderOptions(tiny_artifacts, work / "repo", device="cpu", **render_overrides)
    server = TritonServer.on_free_ports(render(options), python=serving_python())
    settings = SupervisorSettings(
        interval=0.5, failures=2, hang_after=30, tick=0.2, restart=restart, port=free_port(), max_restarts=10
    )
    return Supervisor(server, settings, server_log=open(work / "triton.log", "w"))


@pytest.fixture(scope="module")
def healing(tiny_artifacts, tmp_path_factory):
    supervisor = supervised(tiny_artifacts, tmp_path_factory.mktemp("healing"), restart=True)
    with supervisor:
        yield supervisor
    supervisor.server_log.close()


@pytest.fixture(scope="module")
def reference(healing) -> list[Embedding]:
    with ColQwen2Client(f"grpc://{healing.server.grpc_url}") as client:
        return client.embed_batch(burst_images())


def kill(supervisor: Supervisor, target: str) -> None:
    if target == "tritonserver":
        os.kill(supervisor.server.process.pid, signal.SIGKILL)
        return
    pids = [pid for name, pid in supervisor.server.stubs().items() if name.startswith(f"{target}_")]
    assert pids, f"no {target} stub running"
    os.kill(pids[0], signal.SIGKILL)


def wait_for_canary(url: str, since: float, bound: float) -> float:
    """Seconds from `since` until a canary passes through both ensembles."""
    with ColQwen2Client(url, timeout=10, max_retries=0) as client:
        while time.monotonic() - since < bound:
            try:
                client.canary()
                return time.monotonic() - since
            except ColQwen2Error:
                time.sleep(0.2)
    raise AssertionError(f"no correct answer within {bound} s of the fault")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("colqwen2_preprocess", "stub_died"),
        ("colqwen2_encoder_fp32", "stub_died"),
        ("tritonserver", "server_exited"),
    ],
)
def test_a_fault_during_a_burst_heals_without_an_operator(healing, reference, target, reason):
    url = f"grpc://{healing.server.grpc_url}"
    images = burst_images()
    restarts_before = healing.restarts[reason]
    retrying = ColQwen2Client(url, timeout=IN_FLIGHT_BOUND, max_retries=8)
    impatient = ColQwen2Client(url, timeout=IN_FLIGHT_BOUND, max_retries=0)
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        patient_burst = pool.submit(retrying.embed_batch, images, batch_size=32, return_exceptions=True)
        raw_burst = pool.submit(impatient.embed_batch, images, batch_size=32, return_exceptions=True)
        time.sleep(0.3)
        assert not (patient_burst.done() and raw_burst.done()), "the burst ended before the fault"
        killed = time.monotonic()
        kill(healing, target)
        patient, raw = patient_burst.result(IN_FLIGHT_BOUND), raw_burst.result(IN_FLIGHT_BOUND)
        ended = time.monotonic() - started
    recovery = wait_for_canary(url, killed, RECOVERY_BOUND)
    retrying.close()
    impatient.close()

    assert ended < IN_FLIGHT_BOUND
    for got, want in zip(patient, reference, strict=True):  # retries turned every failure into a result
        assert isinstance(got, Embedding), got
        np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
    errors = [r for r in raw if not isinstance(r, Embedding)]
    for error in errors:  # without retries: a clear, retryable error, never a hang or a wrong vector
        assert isinstance(error, ColQwen2Error) and error.retryable, repr(error)
    for got, want in zip(raw, reference, strict=True):
        if isinstance(got, Embedding):
            np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
    assert healing.restarts[reason] == restarts_before + 1
    assert healing.state == "live"
    figures = {"fault": target, "burst_seconds": round(ended, 2), "recovery_seconds": round(recovery, 2),
               "errors_without_retries": len(errors), "results_with_retries": len(patient)}  # fmt: skip
    print(json.dumps(figures))


def test_the_supervisor_reports_restarts_as_metrics(healing):
    base = f"http://{healing.settings.host}:{healing.settings.port}"
    text = httpx.get(f"{base}/metrics").text
    assert 'colqwen2_supervisor_restarts_total{reason="stub_died"}' in text
    assert "colqwen2_supervisor_live 1" in text
    live = httpx.get(f"{base}/livez")
    assert live.status_code == 200 and live.json()["state"] == "live"
    assert httpx.get(f"{base}/anything").status_code == 404


def test_a_saturated_server_stays_live_and_a_dead_one_does_not(tiny_artifacts, tmp_path):
    """Queue bound 2 and a slow-to-batch encoder: bursts keep user requests refused (busy) while the canary's
    own lane still answers; /livez stays 200 throughout. Then, restarts off, a dead encoder reads dead in seconds."""
    supervisor = supervised(
        tiny_artifacts, tmp_path, restart=False, max_queue_size=2, preprocess_max_queue=0,
        encoder_queue_delay_us=300_000, preferred_batch_sizes=(32,),
    )  # fmt: skip
    livez = f"http://{supervisor.settings.host}:{supervisor.settings.port}/livez"
    big = _png(square_chart(512, seed=9).resize((1500, 1500)))
    with supervisor:
        done = threading.Event()
        codes: list[int] = []

        def probe() -> None:
            while not done.is_set():
                codes.append(httpx.get(livez, timeout=5).status_code)
                time.sleep(0.2)

        users = grpcclient.InferenceServerClient(supervisor.server.grpc_url)  # raw: the SDK would retry the busy

        def user(_: int) -> str:
            tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[big]], dtype=object))
            try:
                users.infer("colqwen2", [tensor], client_timeout=120)
                return "ok"
            except InferenceServerException as exc:
                return "busy" if isinstance(translate(exc), ServerBusyError) else str(exc)

        prober = threading.Thread(target=probe)
        prober.start()
        ok_before = supervisor.status()["canary"]["results"].get("ok", 0)
        deadline = time.monotonic() + 8
        outcomes: Counter = Counter()
        with ThreadPoolExecutor(48) as pool:
            while time.monotonic() < deadline:
                outcomes.update(pool.map(user, range(48)))
        done.set()
        prober.join()
        users.close()
        busy = outcomes["busy"]
        assert set(outcomes) <= {"ok", "busy"}, outcomes
        status = supervisor.status()
        assert busy > 0, "the burst never filled the queue: not saturated"
        assert codes and set(codes) == {200}, codes
        assert status["canary"]["results"].get("ok", 0) > ok_before  # the lane answered under load
        assert status["canary"]["results"].get("failed", 0) == 0

        kill(supervisor, "colqwen2_encoder_fp32")
        killed = time.monotonic()
        while httpx.get(livez, timeout=5).status_code == 200:
            assert time.monotonic() - killed < 5, "a dead encoder still reads live"
            time.sleep(0.1)
        reply = httpx.get(livez, timeout=5).json()
        assert reply["state"] == "dead" and "colqwen2_encoder_fp32_0_0" in reply["reason"]
    supervisor.server_log.close()
