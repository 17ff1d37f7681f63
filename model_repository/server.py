"""Start and stop the real Triton server that ships inside the `nvidia-pytriton` wheel.

The wheel holds Triton 2.51 with the Python backend only (see ../shared/FACTS.md). The binary runs
in place; the Python backend needs a folder with its library, utils module and the stub for this
Python version; the stub embeds libpython and takes `sys.prefix` from the first `python3` on PATH,
so this interpreter's `bin/` goes first. The server runs in its own process group, so Ctrl-C in a
terminal reaches only this launcher, which then shuts the server (and its stubs) down in order.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class TritonError(RuntimeError):
    pass


def triton_home() -> Path:
    try:
        import pytriton
    except ImportError:
        raise TritonError("nvidia-pytriton is not installed: run `make setup`") from None
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers started beside others)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_backend_dir(target: Path) -> Path:
    """`<target>/python/` with links to the Python backend and the stub for this Python."""
    home = triton_home()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {
        "libtriton_python.so": home / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": home / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": home / "python_backend_stubs" / version / "triton_python_backend_stub",
    }
    for name, source in sources.items():
        if not source.exists():
            raise TritonError(f"{source} is missing from nvidia-pytriton (Python {version} unsupported?)")
        link = python_dir / name
        if not link.exists():
            link.symlink_to(source)
    return target


@dataclass
class TritonServer:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = field(default=None, init=False)
    _backend_dir: Path | None = field(default=None, init=False)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self, backend_dir: Path) -> list[str]:
        return [
            str(triton_home() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--disable-auto-complete-config",  # configs are complete; halves start-up
            "--exit-timeout-secs=5",
            # Unique shared-memory names, so two servers on one host never collide.
            f"--backend-config=python,shm-region-prefix-name=colqwen2_{os.getpid()}_{self.http_port}_",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    @staticmethod
    def environment() -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        libdir = sysconfig.get_config_var("LIBDIR")  # the stub then loads this interpreter's libpython
        if libdir:
            env["LD_LIBRARY_PATH"] = f"{libdir}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}".rstrip(os.pathsep)
        env.setdefault("OMP_NUM_THREADS", "1")  # ORT sets its own pools; stray OpenMP pools oversubscribe
        return env

    def start(self, log: IO | None = None) -> TritonServer:
        if not (self.repository / "colqwen2_preprocess" / "config.pbtxt").exists():
            raise TritonError(f"{self.repository} is not a rendered model repository")
        self._backend_dir = Path(tempfile.mkdtemp(prefix="colqwen2-backends-"))
        make_backend_dir(self._backend_dir)
        self.process = subprocess.Popen(
            self.command(self._backend_dir),
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,
        )
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until every model is loaded; raises if the server exits or the time runs out."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise TritonError(f"tritonserver exited with code {code} before it was ready")
            if self.ready():
                return time.monotonic() - start
            time.sleep(0.25)
        raise TritonError(f"tritonserver not ready after {timeout:.0f} s")

    def interrupt(self, force: bool = False) -> None:
        """Ask the server to shut down (SIGINT), or kill its whole process group; never waits."""
        process = self.process
        if process is not None and process.poll() is None:
            if force:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.send_signal(signal.SIGINT)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGINT (Triton's graceful shutdown), then SIGKILL to the whole group if it hangs."""
        process, self.process = self.process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
        if self._backend_dir is not None:
            shutil.rmtree(self._backend_dir, ignore_errors=True)
            self._backend_dir = None
        return code

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
