"""Load generation and measurement against a running Triton server.

- `drive`: an asyncio load generator (tritonclient's aio HTTP or gRPC clients), one image per
  request, a fixed number of requests with a fixed number in flight; busy refusals retried as the SDK
  retries them, and timed apart from the answers.
- `PeakMemory`: samples the server's process-tree RSS (Triton plus its Python-backend stubs) and,
  on a GPU host, the GPU memory those processes hold.
- `ModelStats`: Triton's statistics API before and after a level: the mean batch the dynamic
  batcher formed, and where a request's time went (queue, each model's own compute).
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.sample_images import keepa_chart, product_image

# The mixed workload a Keepa/Amazon user sends, in this order, repeated: Keepa charts at Keepa's two
# graph sizes (PNG), product photos of 1000 to 1500 px (JPEG), and a tall image now and then.
WORKLOAD = (
    ("keepa_chart", 500, 200),
    ("product_photo", 1000, 1000),
    ("keepa_chart", 1000, 400),
    ("product_photo", 1500, 1200),
    ("keepa_chart", 500, 200),
    ("product_photo", 1200, 1500),
    ("tall_image", 300, 900),
    ("keepa_chart", 1000, 400),
)


def payloads(count: int) -> list[bytes]:
    """`count` encoded images of the mixed workload (`WORKLOAD`, cycled): PNG charts, JPEG photos."""
    out = []
    for i in range(count):
        kind, width, height = WORKLOAD[i % len(WORKLOAD)]
        buffer = io.BytesIO()
        if kind == "keepa_chart":
            keepa_chart(900 + i, width, height).save(buffer, "PNG")
        else:
            product_image(900 + i, width, height).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def workload_summary(count: int) -> str:
    kinds: dict[str, list[str]] = {}
    for i in range(count):
        kind, width, height = WORKLOAD[i % len(WORKLOAD)]
        kinds.setdefault(kind.replace("_", " ") + "s", []).append(f"{width}x{height}")
    return "; ".join(f"{len(sizes)} {kind} ({', '.join(sorted(set(sizes)))})" for kind, sizes in kinds.items())


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    return children


def process_tree(root: int) -> list[int]:
    """A process and all its descendants (Triton and its Python-backend stubs)."""
    children, tree, stack = _children(), [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of processes, each page counted in every process that maps it: the kernel's counters
    (/proc/<pid>/statm), the same figure as smaps' Rss. Not smaps_rollup, which walks the page tables: 11 ms for
    a 740 MB encoder process, so sampling a server's tree every 50 ms took a quarter of a core from the server
    it measured (2026-12-07, this 2-core machine)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
        except (OSError, IndexError, ValueError):
            continue
    return total


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size: a page shared by n of the processes counts 1/n in each, so the sum over a
    process tree is its real footprint. Triton and its Python-backend stubs share the backend's
    shared-memory pool, which RSS counts once per process that touched it."""
    return _resident(pids, "Pss:")


def _resident(pids: list[int], field: str) -> int:
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += 1024 * next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith(field)), 0)
    return total


def _nvidia_smi(*query: str) -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def gpu_memory_used_mb(pids: list[int]) -> float | None:
    """GPU memory held by these processes (MiB), or by the whole of GPU 0 where nvidia-smi cannot
    name processes (a container's own pid namespace); None without a GPU."""
    apps = {}
    for line in _nvidia_smi("--query-compute-apps=pid,used_memory"):
        pid, _, used = line.partition(",")
        try:
            apps[int(pid)] = float(used)
        except ValueError:
            continue
    if apps:
        return sum(used for pid, used in apps.items() if pid in set(pids))
    total = _nvidia_smi("--query-gpu=memory.used", "--id=0")
    try:
        return float(total[0]) if total else None
    except ValueError:
        return None


class PeakMemory:
    """Peak process-tree RSS (sampled every 50 ms) and peak GPU memory (every 250 ms, if any).

    The tree is rescanned once a second and only its members are read in between: a full /proc
    scan every 50 ms took about 3 % of this 2-core machine away from the server being measured.
    """

    def __init__(self, pid: int, gpu: bool) -> None:
        self.pid, self.gpu = pid, gpu
        self.peak_rss, self.peak_gpu_mb = 0, None if not gpu else 0.0
        self._tree = process_tree(pid)  # refreshed by the RSS thread, read by the GPU one
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss, daemon=True)]
        if gpu:
            self._threads.append(threading.Thread(target=self._gpu, daemon=True))

    def _rss(self) -> None:
        scanned = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - scanned > 1.0:
                self._tree, scanned = process_tree(self.pid), time.monotonic()
            self.peak_rss = max(self.peak_rss, rss_bytes(self._tree))
            self._stop.wait(0.05)

    def _gpu(self) -> None:
        while not self._stop.is_set():
            used = gpu_memory_used_mb(self._tree)
            if used is not None:
                self.peak_gpu_mb = max(self.peak_gpu_mb or 0.0, used)
            self._stop.wait(0.25)

    def __enter__(self) -> PeakMemory:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


class ModelStats:
    """Triton's statistics API for some models, differenced over a `with` block.

    Per model: `mean_batch` (requests per execution), and per request the mean milliseconds
    waiting in the queue and inside execute() (`compute_infer`, the model's own work).
    """

    def __init__(self, http_url: str, models: list[str]) -> None:
        import tritonclient.http as httpclient

        self._client = httpclient.InferenceServerClient(http_url)
        self.models = models
        self.mean_batch: dict[str, float] = {}
        self.queue_ms: dict[str, float] = {}
        self.compute_ms: dict[str, float] = {}

    def _read(self) -> dict[str, tuple[int, int, int, int]]:
        out = {}
        for model in self.models:
            stats = self._client.get_inference_statistics(model)["model_stats"][0]
            infer = stats.get("inference_stats", {})
            out[model] = (
                int(stats.get("inference_count", 0)),
                int(stats.get("execution_count", 0)),
                int(infer.get("queue", {}).get("ns", 0)),
                int(infer.get("compute_infer", {}).get("ns", 0)),
            )
        return out

    def _settled(self, timeout: float = 3.0) -> dict[str, tuple[int, int, int, int]]:
        """Counts once they stop moving: Triton updates a model's statistics after its responses have gone
        out, so a read right after the last answer can miss the last execution (or catch the previous
        level's in this one)."""
        before = self._read()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self._read()
            if now == before:
                return now
            before = now
        return before

    def __enter__(self) -> ModelStats:
        self._start = self._settled()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._settled()
        for model in self.models:
            requests, executions, queue_ns, compute_ns = (
                b - a for a, b in zip(self._start[model], end[model], strict=True)
            )
            nan = float("nan")
            self.mean_batch[model] = requests / executions if executions else nan
            self.queue_ms[model] = queue_ns / requests / 1e6 if requests else nan
            self.compute_ms[model] = compute_ns / requests / 1e6 if requests else nan
        self._client.close()


@dataclass
class Driven:
    """One load level's outcome. Every request ends in exactly one of: served, failed (an error that is not a
    refusal) or given up (refused `MAX_ATTEMPTS` times); refusals are the busy answers on the way, timed apart."""

    latencies: list[float]  # s, each served request's accepted attempt: what the admission bound promises
    totals: list[float]  # s, each served request from its first attempt, retries and their pauses included
    refusals: list[float]  # s, each busy refusal's own answer time
    wall: float
    errors: int
    given_up: int
    vectors: int
    window: float = 0.0  # s from the start until the last request was first sent: `concurrency` were in flight
    in_window: int = 0  # requests served within it


MAX_ATTEMPTS = 50


async def drive(url: str, protocol: str, model: str, data: list[bytes], concurrency: int, requests: int) -> Driven:
    """`requests` single-image requests, `concurrency` in flight. A request refused as busy is retried as the SDK
    does (when the server's `retry in` hint says, else with backoff, claiming the place in line the refusal gave),
    so the level measures goodput at saturation; other errors are counted and not retried."""
    from colqwen2_client._constants import PLACE_PARAMETER
    from colqwen2_client._retry import Retry, retry_delay
    from colqwen2_client._transport import translate
    from colqwen2_client.errors import ServerBusyError

    if protocol == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module
    client = module.InferenceServerClient(url)
    retry = Retry(MAX_ATTEMPTS - 1)  # what a retry claims; the delays are the SDK's (`retry_delay`)
    out = Driven([], [], [], 0.0, 0, 0, 0)
    next_index = 0
    served_at: list[float] = []
    last_issued = 0.0

    async def one(i: int) -> None:
        first, place = time.perf_counter(), retry.first_place  # "": it comes back with the place it is given
        for attempt in range(MAX_ATTEMPTS):
            tensor = module.InferInput("image", [1, 1], "BYTES")
            array = np.array([[data[i % len(data)]]], dtype=object)
            if protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            start = time.perf_counter()
            try:
                result = await client.infer(model, [tensor], parameters={PLACE_PARAMETER: place})
            except Exception as exc:
                error = translate(exc, model)
                if not isinstance(error, ServerBusyError):
                    out.errors += 1
                    return
                out.refusals.append(time.perf_counter() - start)
                place = retry.place(attempt, error, place)
                await asyncio.sleep(retry_delay(attempt, error))
                continue
            now = time.perf_counter()
            served_at.append(now)
            out.latencies.append(now - start)
            out.totals.append(now - first)
            out.vectors += int(result.as_numpy("num_vectors").sum())
            return
        out.given_up += 1

    async def worker() -> None:
        nonlocal next_index, last_issued
        while next_index < requests:
            i = next_index
            next_index += 1
            if next_index == requests:
                last_issued = time.perf_counter()
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.wall = time.perf_counter() - start
    out.window = last_issued - start
    out.in_window = sum(t <= last_issued for t in served_at)
    await client.close()
    return out
