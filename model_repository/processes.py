"""Child processes for the launcher, the demo, the benchmarks and the tests: free ports, start with a log, wait
until ready (a URL that answers 200, a line in the log, or any check), stop (SIGINT, then SIGKILL to the whole
process group), and errors that carry the log's tail."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

TAIL = 3000  # characters of the log an error quotes


class ProcessError(RuntimeError):
    """A child exited before it was ready, or was not ready in time; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port nobody listens on right now (for servers started beside others)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (all held until each is known, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200
    except OSError:
        return False


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether anything answers HTTP at `url` now (any status: a server that refuses without a token is up)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def tail(log: Path | None, chars: int = TAIL) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-chars:]


def wait_until(
    ready: Callable[[], bool],
    process: subprocess.Popen | None,
    timeout: float,
    name: str,
    log: Path | None = None,
    interval: float = 0.25,
) -> float:
    """Poll `ready` until it holds; seconds waited. Raises ProcessError if `process` exits first or time runs
    out, quoting the log."""
    start = time.monotonic()
    while True:
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            raise ProcessError(f"{name} exited with code {code} before it was ready\n{tail(log)}")
        if ready():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise ProcessError(f"{name} not ready after {timeout:.0f} s\n{tail(log)}")
        time.sleep(interval)


class Process:
    """One command in its own process group, its output in `log` (or discarded)."""

    def __init__(
        self,
        command: Sequence[str],
        log: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        name: str = "",
    ) -> None:
        self.command, self.log, self.env, self.cwd = list(command), log, env, cwd
        self.name = name or Path(self.command[0]).name
        self.process: subprocess.Popen | None = None
        self._out: IO | None = None

    def start(self) -> Process:
        self._out = open(self.log, "w") if self.log is not None else None
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, env=None if self.env is None else dict(self.env),
            stdout=self._out or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def wait_ready(self, *, url: str = "", line: str = "", check: Callable[[], bool] | None = None,
                   timeout: float = 60.0) -> float:  # fmt: skip
        """Seconds until `url` answers 200, `line` is in the log, or `check()` holds."""
        if line and self.log is None:
            raise ValueError("waiting for a log line needs a log")

        def ready() -> bool:
            if url:
                return http_ok(url, timeout=1)
            if line:
                return line in tail(self.log, chars=1 << 30)
            return check is not None and check()

        return wait_until(ready, self.process, timeout, self.name, self.log, interval=0.2)

    def send(self, sig: int = signal.SIGINT, group: bool = False) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM, group: bool = False) -> int | None:
        """`sig` (to the group with `group`), then SIGKILL to the whole group if it has not exited in `timeout`;
        the exit code (None if it never started)."""
        process = self.process
        if process is None:
            return None
        self.send(sig, group)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait()
        if self._out is not None:
            self._out.close()
            self._out = None
        return code

    def tail(self, chars: int = TAIL) -> str:
        return tail(self.log, chars)

    def __enter__(self) -> Process:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
