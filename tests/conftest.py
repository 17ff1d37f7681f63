"""Shared fixtures: one tiny checkpoint and one full export per test session."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from model_repository.processes import Process, answers, free_port

logging.getLogger("transformers").setLevel(logging.ERROR)

# `make test-container-env` sets this to a venv of the image's Python and pins (scripts/container_env.py):
# Triton's Python-backend stubs, the gateway and the CLI then run on it, while references stay here.
SERVING_VENV = os.environ.get("COLQWEN2_SERVING_VENV", "")


def serving_python() -> str:
    """The interpreter the servers' Python-backend stubs run on ("" = this one)."""
    return str(Path(SERVING_VENV).absolute() / "bin" / "python") if SERVING_VENV else ""


# `make test` runs pytest-xdist workers. A module's tests stay on one worker, so the servers a module starts are
# started once; the TIMED modules are one unit, so they run one after another on one worker: they measure time
# (deadlines, queue waits, a soak's memory slope) and would measure each other. (xdist's own `loadgroup` marks do
# not reach the scheduler under pytest 9, so the scheduler is this one.)
TIMED = {"test_overload", "test_security", "test_supervisor", "test_soak", "test_health"}


# The order units are handed out in (the rest follow in collection order). xdist gives each of N workers two units
# at the start, unit i and unit i + N, and then one at a time: with 3 workers, the timed suites (~330 s in a
# `make test` run) pair with a short unit, the docs run (~200 s) with gpu_check, export_errors with stores. The
# timed suites' worker makes the tiny export while gpu_check and export_errors, which do not need it, run.
LONGEST = ["timed", "test_gpu_check", "test_export_errors", "test_catalog", "test_docs", "test_stores",
           "test_qdrant", "test_triton_server", "test_bench", "test_memory", "test_demo", "test_cli",
           "test_container_env"]  # fmt: skip


def _unit(nodeid: str) -> str:
    """The unit a test is scheduled in: its module's name, or "timed"."""
    module = Path(nodeid.split("::", 1)[0]).stem
    return "timed" if module in TIMED else module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))  # stable: modules stay whole


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ModuleScheduling(config, log)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.random_checkpoint import build_random_checkpoint

    return build_random_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny", "tiny")


@pytest.fixture(scope="session")
def tiny_reference(tiny_checkpoint: Path):
    """colpali-engine's own model and processor for the tiny checkpoint."""
    from export.checkpoint import load_checkpoint

    return load_checkpoint(str(tiny_checkpoint))


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four variants exported and validated, exactly as `make export` does."""
    from export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    return run_export(ExportOptions(checkpoint=str(tiny_checkpoint), out_dir=out))


@pytest.fixture(scope="session")
def tiny_repository(tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU model repository for the tiny export, serving both precisions (fp32 and dynamic int8 on a
    CPU host), with the fp16 and QDQ int8 encoders (a GPU host's) loaded too.

    Its queues hold a request up to 30 s instead of 2 s: the suites sharing it run beside others on a loaded
    2-core host, where a burst of 32 photos waits longer than 2 s, and refusing it would test the host, not the
    service (the 2 s bound is tested on servers of its own, tests/test_overload.py).
    The encoder queue delay is 10 ms instead of 1 ms: the tiny encoder finishes an image faster
    than two preprocess instances decode the next, so without it batches rarely form here and
    the dynamic-batching test would be a coin toss. Real-size encoders queue on their own.
    """
    from model_repository.render import RenderOptions, render

    out = tmp_path_factory.mktemp("repository") / "tiny"
    options = RenderOptions(
        tiny_artifacts,
        out,
        device="cpu",
        precisions=("fp16", "int8"),
        extra_variants=("fp16", "int8"),
        encoder_queue_delay_us=10_000,
        queue_timeout_ms=30_000,
        preprocess_max_queue=0,  # the 128 of max_queue_size: bursts here are larger than one user's window
        admission_wait_ms=0,  # bursts here test calls and answers; admission has servers of its own (test_overload)
    )
    return render(options)


@pytest.fixture(scope="session")
def triton_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real Triton server (from the nvidia-pytriton wheel) serving the tiny repository."""
    from model_repository.server import TritonServer

    log_file = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer.on_free_ports(tiny_repository, python=serving_python())
    with open(log_file, "w") as log:
        server.start(log)
        try:
            server.wait_ready(180)
        except Exception:
            server.stop()
            print(log_file.read_text()[-5000:])
            raise
        yield server
        server.stop()


def _console_script(name: str) -> str:
    """A console script of the serving environment (the image's venv under `make test-container-env`)."""
    bin_dir = Path(SERVING_VENV).absolute() / "bin" if SERVING_VENV else Path(sys.executable).parent
    return str(bin_dir / name)


@contextmanager
def gateway(triton_url: str, *args: str, log: Path | None = None, env: dict[str, str] | None = None,
            ready: str = "/openapi.json"):  # fmt: skip
    """`colqwen2-gateway` as users run it (uvicorn, real sockets) on a free port: yields (url, Process)."""
    port = free_port()
    command = [_console_script("colqwen2-gateway"), "--triton-url", triton_url, "--port", str(port), *args]
    with Process(command, log, env=env, name="colqwen2-gateway") as process:
        url = f"http://127.0.0.1:{port}"
        process.wait_ready(check=lambda: answers(url + ready), timeout=30)
        yield url, process


@pytest.fixture(scope="session")
def gateway_url(triton_server, tmp_path_factory: pytest.TempPathFactory):
    """The gateway in front of the session's Triton, with its own embedded index."""
    args = ("--health-ttl", "0", "--max-body-mb", "4", "--max-batch", "8",
            "--qdrant-path", str(tmp_path_factory.mktemp("gateway-qdrant") / "qdrant"))  # fmt: skip
    with gateway(f"grpc://{triton_server.grpc_url}", *args, log=tmp_path_factory.mktemp("gateway") / "gateway.log") as (
        url,
        _,
    ):
        yield url
