"""`python -m model_repository.serve` (what `make serve` runs): ready, answers, stops cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from model_repository.processes import Process, free_ports


def test_serve_starts_answers_and_stops_on_sigint(tiny_artifacts, tmp_path):
    ports = free_ports(3)
    command = [
        sys.executable, "-m", "model_repository.serve", "--artifacts", str(tiny_artifacts),
        "--repository", str(tmp_path / "repo"), "--device", "cpu",
        "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    process = Process(command, log, name="serve").start()
    try:
        process.wait_ready(line="is ready in", timeout=60)  # the bound for the tiny checkpoint here
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/colqwen2/ready") as reply:
            assert reply.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/metrics") as reply:
            assert b"nv_inference_request_success" in reply.read()
        assert process.stop(30, sig=signal.SIGINT) == 0
    finally:
        process.stop(5, sig=signal.SIGKILL)
    text = log.read_text()
    assert "SIGINT: stopping Triton" in text and "successfully unloaded 'colqwen2_preprocess'" in text
    # a CPU host: no GPU metrics or pinned-memory errors, and one line explaining the CUDA lines that remain
    assert "NVML" not in text and "DCGM" not in text and "Unable to allocate pinned" not in text
    assert "CPU-only host" in text and "harmless" in text
    assert not processes_mentioning(str(tmp_path / "repo")), "processes left behind"


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def test_serve_refuses_an_unexported_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "model_repository.serve", "--artifacts", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no manifest.json" in result.stderr


def test_every_serve_and_render_option_says_what_it_does_and_its_default():
    from model_repository import render, serve

    for parser in (serve.build_parser(), render.build_parser()):
        assert parser.prog.startswith("python -m model_repository.")
        for action in parser._actions:
            if action.dest == "help":
                continue
            text = action.help or ""
            assert len(text) > 12 and ("default" in text or "required" in text), (parser.prog, action.dest, text)
