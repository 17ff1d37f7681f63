"""The documentation, run: every shell and Python block of README.md and client/README.md, as a newcomer runs it.

A block (or one line) that says `[not run by the docs test: <reason>]` is skipped, and the marker is visible in
the rendered README; everything else runs, in document order, from a scratch folder that looks like a fresh
clone after `make setup` (links to the repository's files and `.venv`; its own `artifacts/` and `checkpoints/`),
with HOME and XDG_DATA_HOME in that folder, so the CLI's per-user files land there, and the files the examples
name (chart.png, photo.jpg, charts/, samples/, catalog.jsonl, build/demo/catalog.jsonl).

Lines that start a server (`make serve ...`, `colqwen2-gateway ...`) are each started alone, must report
ready, and are stopped with Ctrl-C (SIGINT), which must end them cleanly. Then the README's own `make serve`
and the client README's gateway run in the background on the default ports (8000-8002 and 8080), as the
examples expect, while the other blocks run: a bash block with `set -e`, a Python block in .venv's Python.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.samples import write_catalog, write_samples
from export.sample_images import keepa_chart, product_image
from model_repository.processes import Process

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "client" / "README.md")
SKIP = re.compile(r"\[not run by the docs test: ([^\]]+)\]")
SERVER_LINE = re.compile(r"^(?:\w+=\S+\s+)*(?:make (?:serve|gateway)\b|colqwen2-gateway\b)")
DEFAULT_PORTS = (8000, 8001, 8002, 8003, 8080, 9000, 9001, 9002, 9003)


@dataclass
class Block:
    doc: str
    line: int  # where the block starts in its file
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if match.group(1) in ("bash", "python"):
                line = text[: match.start()].count("\n") + 1
                found.append(Block(str(path.relative_to(ROOT)), line, match.group(1), match.group(2)))
    return found


def runnable_lines(block: Block) -> tuple[list[str], list[str]]:
    """(lines to run, server lines) of a bash block; marked lines, and the whole of a marked block, dropped."""
    if SKIP.search(block.text.split("\n", 1)[0]):
        return [], []
    lines, servers = [], []
    for line in block.text.splitlines():
        if SKIP.search(line):
            continue
        (servers if SERVER_LINE.match(line) else lines).append(line)
    return lines, servers


def scratch_clone(tmp: Path) -> Path:
    """A folder that behaves like the clone: links to every tracked top-level entry and to the built ones."""
    work = tmp / "clone"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", "build", "tests", "artifacts", "checkpoints") and not entry.name.startswith(
            (".pytest", ".ruff", ".venv-")
        ):
            (work / entry.name).symlink_to(entry)
    # Exports of its own (the README's `make export` rewrites artifacts/tiny while `make serve` serves it): copies
    # of the repository's, when there are some, save the minutes a fresh clone spends on them.
    for name in ("artifacts", "checkpoints"):
        (work / name).mkdir()
        for size in ("tiny", "medium"):
            if (ROOT / name / size).is_dir():
                shutil.copytree(ROOT / name / size, work / name / size, symlinks=True)
    samples = write_samples(work / "build" / "demo" / "samples", charts=3, products=3)
    write_catalog(work / "build" / "demo" / "catalog.jsonl", samples)
    keepa_chart(3, 500, 200).save(work / "chart.png")
    keepa_chart(4, 1000, 400).save(work / "keepa_chart.png")
    product_image(5, 600, 600).save(work / "photo.jpg", "JPEG")
    (work / "charts").mkdir()
    for i in range(2):
        keepa_chart(10 + i, 500, 200).save(work / "charts" / f"chart{i}.png")
    (work / "samples").symlink_to(work / "build" / "demo" / "samples")
    write_catalog(work / "catalog.jsonl", [work / "chart.png", work / "photo.jpg"])
    return work


def environment(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLQWEN2_", "QDRANT_", "PYTEST", "VIRTUAL_ENV"))}
    env["HOME"] = str(work / "home")
    env["XDG_DATA_HOME"] = str(work / "home" / ".local" / "share")  # never the developer's own index
    # a user who installed the client (client/README.md) has its commands on PATH; README.md says .venv/bin/
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(work)
    return env


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """One server line in the background: started in its own process group, ready when its output says so,
    stopped with Ctrl-C to the group (a server that ignores it is killed, and its exit code says so)."""

    def __init__(self, line: str, work: Path, env: dict[str, str], log: Path) -> None:
        self.line = line
        self.process = Process(["bash", "-c", line], log, env=env, cwd=work, name=f"`{line}`").start()

    def ready(self) -> bool:
        if "make " in self.line:
            return "is ready in" in self.process.tail(1 << 30)  # make serve's own line, once every model is loaded
        port = re.search(r"--port (\d+)", self.line)
        return port_open(int(port.group(1)) if port else 8080)

    def wait_ready(self, timeout: float) -> None:
        self.process.wait_ready(check=self.ready, timeout=timeout)

    def stop(self) -> int | None:
        return self.process.stop(60, sig=signal.SIGINT, group=True)  # Ctrl-C in a terminal reaches the group

    def tail(self) -> str:
        return self.process.tail(4000)


def test_the_docs_name_their_skips_and_nothing_else_is_skipped():
    all_blocks = blocks()
    assert len(all_blocks) >= 12
    reasons = [SKIP.search(b.text).group(1) for b in all_blocks if SKIP.search(b.text)]
    for reason in reasons:
        assert re.search(r"internet|cluster|GPU|CI runs|checkpoint|make setup|values file", reason), reason


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and /proc: Linux")
def test_every_documented_command_runs(tmp_path, tiny_artifacts):
    """`tiny_artifacts` first: the session's export of the tiny checkpoint is in the export cache, so the README's
    `make export` and `make serve` take it from there (one export per checkpoint per run)."""
    busy = [port for port in DEFAULT_PORTS if port_open(port)]
    assert not busy, f"the README's examples use fixed ports, and {busy} are taken on this host: free them"
    work = scratch_clone(tmp_path)
    env = environment(work)
    all_blocks = blocks()
    ran: list[str] = []

    # 1. every server line alone: ready, then Ctrl-C ends it cleanly
    for block in all_blocks:
        if block.lang != "bash":
            continue
        for line in runnable_lines(block)[1]:
            started = time.monotonic()
            server = Server(line, work, env, tmp_path / f"server-{len(ran)}.log")
            try:
                server.wait_ready(900 if "MODEL=" in line else 300)  # a missing checkpoint is built and exported
            finally:
                code = server.stop()
            assert code in (0, -signal.SIGINT, 130), f"`{line}` ended with {code} on Ctrl-C:\n{server.tail()}"
            ran.append(f"{time.monotonic() - started:6.1f} s  {block.where} (server) {line}")

    # 2. the default server and gateway in the background, then every other block in document order
    triton = Server("make serve", work, env, tmp_path / "triton.log")
    gateway = None
    try:
        triton.wait_ready(300)
        line = "colqwen2-gateway --triton-url grpc://127.0.0.1:8001 --port 8080"
        gateway = Server(line, work, env, tmp_path / "gateway.log")
        gateway.wait_ready(60)
        for block in all_blocks:
            started = time.monotonic()
            if block.lang == "bash":
                lines = runnable_lines(block)[0]
                if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
                    continue
                script = "set -euo pipefail\n" + "\n".join(lines)
                result = subprocess.run(
                    ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900
                )
            else:
                if SKIP.search(block.text.split("\n", 1)[0]):
                    continue
                result = subprocess.run(
                    [str(ROOT / ".venv" / "bin" / "python"), "-c", block.text], cwd=work, env=env,
                    capture_output=True, text=True, timeout=300,
                )  # fmt: skip
            output = result.stdout[-3000:] + result.stderr[-3000:]
            assert result.returncode == 0, f"{block.where} failed:\n{block.text}\n---\n{output}"
            ran.append(f"{time.monotonic() - started:6.1f} s  {block.where}")
    finally:
        if gateway is not None:
            gateway.stop()
        triton.stop()
    print("\n".join(ran))
    # the CLI's files went to the per-user folder, never to the folder it ran in
    assert (work / "home" / ".local" / "share" / "colqwen2" / "qdrant").is_dir()
    assert not (work / "qdrant_data").exists() and not (work / "results.html").exists()
