"""`/health` infers: it turns unhealthy when a Python model's process dies, healthy once reloaded.

Triton itself keeps saying READY for a model whose stub process was killed; this test shows
that and shows the SDK's and the gateway's canary telling the truth. It runs its own server
and restarts it, leaving the shared one alone.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
import tritonclient.http as httpclient
from colqwen2_client import ColQwen2Client

from model_repository.server import TritonServer, python_stubs
from tests.conftest import gateway, serving_python


def stub_pids(server_pid: int, model: str) -> list[int]:
    """The Python-backend stub processes of `model` started by this server (not by another one)."""
    return [pid for name, pid in python_stubs(server_pid).items() if name.startswith(f"{model}_")]


@pytest.fixture(scope="module")
def own_server(tiny_repository, tmp_path_factory):
    server = TritonServer.on_free_ports(tiny_repository, python=serving_python())
    with open(tmp_path_factory.mktemp("health") / "triton.log", "w") as log:
        server.start(log)
        server.wait_ready(180)
        yield server, log
        server.stop()


@pytest.fixture(scope="module")
def own_gateway(own_server):
    own_server, _ = own_server
    with gateway(f"http://{own_server.http_url}", "--health-ttl", "0", "--timeout", "20") as (url, _):
        yield url


def test_health_follows_a_dead_model_and_its_recovery(own_server, own_gateway):
    own_server, log = own_server
    client = ColQwen2Client(f"grpc://{own_server.grpc_url}", timeout=20, max_retries=0)
    triton = httpclient.InferenceServerClient(own_server.http_url)
    assert client.health()["status"] == "healthy"
    assert httpx.get(f"{own_gateway}/health").status_code == 200

    pids = stub_pids(own_server.process.pid, "colqwen2_preprocess")
    assert pids, "no preprocess stub process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(1)

    assert triton.is_model_ready("colqwen2_preprocess") and triton.is_model_ready("colqwen2")  # Triton's view
    assert client.health() == {"status": "unhealthy", "gpu_available": False, "model_loaded": False}
    reply = httpx.get(f"{own_gateway}/health", timeout=30)
    assert reply.status_code == 503
    assert reply.json() == {"status": "unhealthy", "gpu_available": False, "model_loaded": False}

    # Recovery is a restart, as Kubernetes' liveness probe would do; the gateway keeps running.
    # (Reloading the model in place does not replace every dead instance in Triton 2.51.)
    own_server.stop()
    own_server.start(log)
    own_server.wait_ready(180)
    assert client.health() == {
        "status": "healthy",
        "gpu_available": False,
        "model_loaded": True,
        "execution_provider": "cpu",
    }
    reply = httpx.get(f"{own_gateway}/health", timeout=30)
    assert reply.status_code == 200 and reply.json()["model_loaded"] is True
    client.close()
    triton.close()
