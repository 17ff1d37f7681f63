"""Start and stop a real Triton server: the one inside the `nvidia-pytriton` wheel, or a `tritonserver`
binary given by path (NVIDIA's container, where the backends sit in their default folder).

The wheel holds Triton 2.51 with the Python backend only (see ../shared/FACTS.md). The binary runs
in place; the Python backend needs a folder with its library, utils module and the stub for the
models' Python version; the stub embeds libpython and takes `sys.prefix` from the first `python3` on
PATH, so that interpreter's `bin/` goes first. The models' interpreter is this one unless `python`
names another (`make test-container-env` runs the stubs on a venv of the image's Python and pins).
The server runs in its own process group, so Ctrl-C in a terminal reaches only this launcher, which
then shuts the server (and its stubs) down in order.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .processes import ProcessError, free_ports, http_ok, wait_until

__all__ = ["TritonError", "TritonServer", "make_backend_dir", "python_stubs", "triton_home"]


class TritonError(ProcessError):
    pass


# Triton's admin APIs: whoever reaches them can load or unload models, register shared memory, or change
# trace and log settings. Locked behind a key in the container and the chart; inference, health,
# metadata, model config and statistics stay open.
ADMIN_APIS = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_HEADER = "admin-key"  # HTTP header; over gRPC Triton expects the metadata key below
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"


def triton_home() -> Path:
    try:
        import pytriton
    except ImportError:
        raise TritonError("nvidia-pytriton is not installed: run `make setup`") from None
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


@dataclass(frozen=True)
class Interpreter:
    """The Python the Python-backend stubs run on: its executable, minor version and libpython folder."""

    executable: str
    version: str  # "3.10"
    libdir: str  # where its libpython lives ("" when it has none to share)

    @classmethod
    def current(cls) -> Interpreter:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return cls(sys.executable, version, sysconfig.get_config_var("LIBDIR") or "")

    @classmethod
    def of(cls, executable: str) -> Interpreter:
        """Ask another interpreter (a venv's `bin/python`) what it is."""
        if not executable or Path(executable).absolute() == Path(sys.executable).absolute():
            return cls.current()
        probe = "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
        probe += "print(sysconfig.get_config_var('LIBDIR') or '')"
        try:
            out = subprocess.run([executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise TritonError(f"the models' Python {executable} does not run: {exc}") from None
        version, libdir = [*out.stdout.splitlines(), "", ""][:2]
        if not re.fullmatch(r"\d+\.\d+", version.strip()):
            raise TritonError(f"the models' Python {executable} did not say its version: {out.stdout!r}")
        return cls(executable, version.strip(), libdir.strip())


def make_backend_dir(target: Path, version: str = "") -> Path:
    """`<target>/python/` with links to the Python backend and the stub for Python `version` (default: this one)."""
    home = triton_home()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = version or Interpreter.current().version
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


def python_stubs(server_pid: int) -> dict[str, int]:
    """Children of `server_pid` that are running Python-backend stubs and not zombies, by instance name.

    A stub's command line is `triton_python_backend_stub <model.py> <shm key> <sizes> <parent pid> <backend dir>
    <ipc size> <instance name> <kind>`; the instance name (for example `colqwen2_encoder_fp32_0_0`) is the
    second to last argument.
    """
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) != server_pid or state in ("Z", "X"):
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        argv = [a.decode(errors="replace") for a in argv if a]
        if argv and argv[0].endswith("triton_python_backend_stub") and len(argv) >= 3:
            found[argv[-2]] = int(proc.name)
    return found


@dataclass
class TritonServer:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    binary: str = ""  # a tritonserver with its own backends (the container); empty: the pytriton wheel's
    exit_timeout: int = 5  # seconds Triton waits for in-flight requests when asked to stop
    admin_key: str = ""  # non-empty: ADMIN_APIS answer only requests with the header `admin-key: <key>`
    backend_directory: str = ""  # backends for `binary` other than its own (a folder made by make_backend_dir)
    python: str = ""  # the interpreter (a venv's bin/python) the Python-backend stubs run on; empty: this one
    process: subprocess.Popen | None = field(default=None, init=False)
    starts: int = field(default=0, init=False)  # how many times start() ran (restarts = starts - 1)
    _backend_dir: Path | None = field(default=None, init=False)
    _interpreter: Interpreter | None = field(default=None, init=False)

    @classmethod
    def on_free_ports(cls, repository: Path, **options) -> TritonServer:
        """A server on 127.0.0.1 with three free ports (the demo, benchmarks, tests)."""
        http, grpc, metrics = free_ports(3)
        return cls(repository, http_port=http, grpc_port=grpc, metrics_port=metrics, **options)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def shm_prefix(self) -> str:
        """The Python backend's shared-memory names: unique per launcher, port and start, so two servers on one
        host never collide and a restart never meets the regions a killed server left behind."""
        return f"colqwen2_{os.getpid()}_{self.http_port}_{self.starts}_"

    def command(self, backend_dir: Path | None) -> list[str]:
        binary = self.binary or str(triton_home() / "bin" / "tritonserver")
        backends = [f"--backend-directory={backend_dir}"] if backend_dir is not None else []
        return [
            binary,
            f"--model-repository={self.repository}",
            *backends,
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--disable-auto-complete-config",  # configs are complete; halves start-up
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-verbose={self.log_verbose}",
            *self.restriction_args(),
            *self.extra_args,
        ]

    def restriction_args(self) -> list[str]:
        if not self.admin_key:
            return []
        rule = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={self.admin_key}"
        return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]

    @property
    def interpreter(self) -> Interpreter:
        if self._interpreter is None:
            self._interpreter = Interpreter.of(self.python)
        return self._interpreter

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        python = self.interpreter
        # Not resolved: a venv's bin/python is a link to its base interpreter, and the stub finds the venv
        # (its sys.prefix) only through the link's own folder.
        env["PATH"] = f"{Path(python.executable).absolute().parent}{os.pathsep}{env.get('PATH', '')}"
        if python.libdir:  # the stub then loads that interpreter's libpython, not the system's
            env["LD_LIBRARY_PATH"] = f"{python.libdir}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}".rstrip(os.pathsep)
        env.setdefault("OMP_NUM_THREADS", "1")  # ORT sets its own pools; stray OpenMP pools oversubscribe
        # glibc gives every thread that allocates an arena of its own (up to 8 per core) and keeps what
        # each one held at its peak; ORT's worker threads and the stubs' decode threads then grow memory
        # for hours (see bench/results/soak-*). Two arenas keep the peak shared.
        env.setdefault("MALLOC_ARENA_MAX", "2")
        return env

    def start(self, log: IO | None = None) -> TritonServer:
        if not (self.repository / "colqwen2_preprocess" / "config.pbtxt").exists():
            raise TritonError(f"{self.repository} is not a rendered model repository")
        self.starts += 1
        backends: Path | None = Path(self.backend_directory) if self.backend_directory else None
        if backends is None and not self.binary:
            self._backend_dir = backends = Path(tempfile.mkdtemp(prefix="colqwen2-backends-"))
            make_backend_dir(self._backend_dir, self.interpreter.version)
        self.process = subprocess.Popen(
            self.command(backends),
            env=self.environment(),
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,
        )
        return self

    def ready(self) -> bool:
        return http_ok(f"http://{self.http_url}/v2/health/ready")

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until every model is loaded; raises if the server exits or the time runs out."""
        try:
            return wait_until(self.ready, self.process, timeout, "tritonserver")
        except ProcessError as exc:
            raise TritonError(str(exc)) from None

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
            try:  # stubs a killed server left behind (its own process group)
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._backend_dir is not None:
            shutil.rmtree(self._backend_dir, ignore_errors=True)
            self._backend_dir = None
        self._remove_shared_memory()
        return code

    def _remove_shared_memory(self) -> None:
        """Regions a killed server (or stub) could not unlink; a clean exit leaves none."""
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)

    def stubs(self) -> dict[str, int]:
        """The server's live Python-backend stubs: model instance name -> pid (Linux /proc)."""
        process = self.process
        return {} if process is None or process.poll() is not None else python_stubs(process.pid)

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
