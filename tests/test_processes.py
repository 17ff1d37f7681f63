"""The one process helper (model_repository/processes.py): free ports, ready by URL, log line or check, stop."""

from __future__ import annotations

import signal
import sys

import pytest

from model_repository.processes import Process, ProcessError, answers, free_ports, http_ok


def test_free_ports_are_distinct():
    ports = free_ports(8)
    assert len(set(ports)) == 8 and all(1024 <= p < 65536 for p in ports)


def test_ready_by_url_then_stopped(tmp_path):
    (port,) = free_ports(1)
    (tmp_path / "index.html").write_text("ok")
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with Process(command, tmp_path / "server.log") as server:
        waited = server.wait_ready(url=f"http://127.0.0.1:{port}/index.html", timeout=30)
        assert waited < 30 and server.running()
        assert http_ok(f"http://127.0.0.1:{port}/") and answers(f"http://127.0.0.1:{port}/missing")
        assert not http_ok(f"http://127.0.0.1:{port}/missing"), "a 404 is up, not ok"
    assert not server.running()
    assert not answers(f"http://127.0.0.1:{port}/")


def test_ready_by_log_line_and_stopped_by_ctrl_c_to_the_group(tmp_path):
    # A server sets its own Ctrl-C handler (model_repository/serve.py does): a child of a pytest-xdist worker is
    # born with SIGINT ignored, which Python keeps unless told.
    script = "import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); print('warming', " \
             "flush=True); time.sleep(0.5); print('is ready in 0.5 s', flush=True); time.sleep(60)"  # fmt: skip
    server = Process([sys.executable, "-c", script], tmp_path / "log").start()
    server.wait_ready(line="is ready in", timeout=30)
    assert server.stop(10, sig=signal.SIGINT, group=True) in (1, -signal.SIGINT)  # Ctrl-C ended it, not SIGKILL
    assert "warming" in server.tail()


def test_a_child_that_exits_first_is_an_error_with_its_log(tmp_path):
    script = "import sys; print('port 8000 is taken'); sys.exit(3)"
    with Process([sys.executable, "-c", script], tmp_path / "log", name="server") as server:
        with pytest.raises(ProcessError, match=r"(?s)server exited with code 3.*port 8000 is taken"):
            server.wait_ready(check=lambda: False, timeout=30)


def test_a_child_that_never_gets_ready_is_stopped_by_the_caller(tmp_path):
    with Process([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log", name="sleeper") as server:
        with pytest.raises(ProcessError, match="sleeper not ready after 1 s"):
            server.wait_ready(check=lambda: False, timeout=1)
    assert not server.running()


def test_a_line_needs_a_log():
    with pytest.raises(ValueError, match="needs a log"):
        Process(["true"]).wait_ready(line="ready")
