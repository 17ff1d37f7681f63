"""Soak: hours of mixed traffic against `make serve` and the gateway; fails on an error for a good input or
on memory that keeps growing.

    python -m bench.soak --artifacts artifacts/tiny --duration 1800      # make soak DURATION=1800

It starts the server as `make serve` does (`python -m model_repository.serve`: render, Triton, the
supervisor) and `colqwen2-gateway` in front of it, then for `--duration` seconds keeps `--workers`
clients busy with the traffic users send: images of the mixed Keepa/Amazon workload and thumbnails
through the SDK (gRPC) and through the gateway (`/embed`, `/embed_batch`), text queries both ways,
about 5 % bad inputs (truncated files, garbage, empty queries: each must be refused as bad input,
4xx or InvalidInputError), and health calls. Every `--sample` seconds it reads the memory of Triton,
its stubs and the gateway as PSS (proportional set size: a page shared by n processes counts 1/n in
each; Triton and its stubs share the Python backend's shared-memory pool, which a sum of RSS counts
once per process), and the Triton tree's RSS for reference.

Verdict:
- any failure of a good input (an error, a wrong-shaped result) fails the soak;
- memory: a least-squares line through the total PSS after the warm-up gives the growth rate. The
  warm-up (`--warmup`, 60 s of the same traffic before the measured `--duration`, or 20 % of a long
  run if that is more) is when ONNX Runtime's arenas grow to the largest batch shapes the mixed
  sizes produce: on the tiny checkpoint with 8 clients the Triton tree goes from 215 MB to about
  1.1 GB in the first minute, then stays there, give or take the ~100 MB one new large batch shape
  adds. Runs of 10 minutes or more fail above `--max-slope-mb-per-hour` (default 40 MB/h: about
  1 GB a day, which a pod with 8-16 GiB would carry for days, not weeks, so it must be found);
  shorter runs cannot tell a slope from such steps and fail only on a gross leak: fitted growth within
  the window over `--max-growth-mb` (256 MB: two such steps).

Reports: JSON, markdown and a plot (PSS over time, the fitted line) at `--out` (a path prefix).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from colqwen2_client._constants import EMBEDDING_DIM
from PIL import Image

from bench.load import payloads, process_tree, pss_bytes, rss_bytes
from model_repository.processes import Process, free_ports
from model_repository.server import python_stubs

WARMUP_FRACTION = 0.2  # of a long run, when that is longer than --warmup
LONG_RUN = 600.0  # seconds: from here the slope is judged
QUERIES = ("lego price drop", "keepa chart of a camera", "price history with a spike", "wireless earbuds", "toy")


@dataclass
class Traffic:
    counts: Counter = field(default_factory=Counter)  # (kind, outcome) -> n
    failures: list[str] = field(default_factory=list)  # good inputs that failed
    latencies: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, outcome: str, seconds: float, failure: str = "") -> None:
        with self.lock:
            self.counts[(kind, outcome)] += 1
            self.latencies.setdefault(kind, []).append(seconds)
            if failure and len(self.failures) < 50:
                self.failures.append(f"{kind}: {failure[:300]}")


def bad_inputs(good: bytes) -> list[bytes]:
    return [good[: len(good) // 3], b"not an image at all", b"\x89PNG\r\n\x1a\n" + os.urandom(64)]


def thumbnail() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def worker(seed: int, grpc_url: str, gateway: str, images: list[bytes], stop: threading.Event, traffic: Traffic):
    """One client: a weighted random mix of the requests users send, until `stop`."""
    from colqwen2_client import ColQwen2Client, ColQwen2Error, InvalidInputError

    rng = random.Random(seed)
    client = ColQwen2Client(grpc_url, timeout=120)
    http = httpx.Client(timeout=120)
    kinds = ["sdk_image", "gateway_image", "gateway_batch", "sdk_query", "gateway_query", "bad", "health"]
    weights = [40, 20, 5, 15, 8, 5, 7]
    try:
        while not stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            image = rng.choice(images)
            started = time.monotonic()
            outcome, failure = "ok", ""
            try:
                if kind == "sdk_image":
                    result = client.embed(image)
                    if result.vectors.shape[1] != EMBEDDING_DIM or not result.grid:
                        outcome, failure = "wrong", f"shape {result.vectors.shape}, grid {result.grid}"
                elif kind == "gateway_image":
                    reply = http.post(f"{gateway}/embed", json={"image": base64.b64encode(image).decode()})
                    if reply.status_code != 200 or reply.json()["num_vectors"] < 1:
                        outcome, failure = "error", f"HTTP {reply.status_code}: {reply.text[:200]}"
                elif kind == "gateway_batch":
                    batch = [base64.b64encode(rng.choice(images)).decode() for _ in range(3)]
                    reply = http.post(f"{gateway}/embed_batch", json={"images": batch})
                    if reply.status_code != 200 or reply.json()["count"] != 3:
                        outcome, failure = "error", f"HTTP {reply.status_code}: {reply.text[:200]}"
                elif kind == "sdk_query":
                    if client.embed_query(rng.choice(QUERIES)).vectors.shape[1] != EMBEDDING_DIM:
                        outcome, failure = "wrong", "query vectors of the wrong width"
                elif kind == "gateway_query":
                    reply = http.post(f"{gateway}/embed_query", json={"text": rng.choice(QUERIES)})
                    if reply.status_code != 200:
                        outcome, failure = "error", f"HTTP {reply.status_code}: {reply.text[:200]}"
                elif kind == "health":
                    via_gateway = http.get(f"{gateway}/health")
                    if via_gateway.status_code != 200 or client.health()["status"] != "healthy":
                        outcome, failure = "error", f"unhealthy: {via_gateway.text[:200]}"
                else:  # bad input: must be refused as bad input, and nothing else
                    bad = rng.choice(bad_inputs(image))
                    if rng.random() < 0.5:
                        try:
                            client.embed(bad)
                            outcome, failure = "accepted_bad", "a bad image was embedded"
                        except InvalidInputError:
                            outcome = "refused"
                    else:
                        reply = http.post(f"{gateway}/embed", json={"image": base64.b64encode(bad).decode()})
                        outcome = "refused" if reply.status_code == 400 else "error"
                        failure = "" if outcome == "refused" else f"HTTP {reply.status_code}: {reply.text[:200]}"
            except ColQwen2Error as exc:
                outcome, failure = "error", f"{type(exc).__name__}: {exc}"
            except httpx.HTTPError as exc:
                outcome, failure = "error", f"{type(exc).__name__}: {exc}"
            traffic.record(kind, outcome, time.monotonic() - started, failure)
    finally:
        client.close()
        http.close()


def fitted_growth(times: np.ndarray, rss_mb: np.ndarray) -> tuple[float, float]:
    """(slope in MB per hour, fitted growth in MB over the window) of a least-squares line."""
    if len(times) < 3 or times[-1] - times[0] <= 0:
        return 0.0, 0.0
    slope, _ = np.polyfit(times, rss_mb, 1)  # MB per second
    return float(slope * 3600), float(slope * (times[-1] - times[0]))


def triton_parts(serve_pid: int) -> dict[str, list[int]]:
    """The processes under `make serve`, by part: the launcher and supervisor, tritonserver, each model's stubs."""
    tree = [pid for pid in process_tree(serve_pid) if pid != serve_pid]  # parents come before their children
    models: dict[int, str] = {}
    for pid in tree:
        if pid not in models:  # a stub has no stubs of its own; tritonserver has them all
            models |= {stub: instance.rsplit("_", 2)[0] for instance, stub in python_stubs(pid).items()}
    parts: dict[str, list[int]] = {"supervisor": [serve_pid]}
    for pid in tree:
        parts.setdefault(models.get(pid, "tritonserver"), []).append(pid)
    return parts


def run(args: argparse.Namespace) -> dict:
    work = Path("build/soak") / args.out.name  # logs and the rendered repository; reports go to --out
    work.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port, gateway_port = free_ports(4)
    bin_dir = Path(sys.executable).parent
    serve = Process(
        [sys.executable, "-m", "model_repository.serve", "--artifacts", str(args.artifacts), "--device", "cpu",
         "--repository", str(work / "repository"), "--http-port", str(http_port),
         "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--supervisor-port", "0"],
        work / "triton.log", name="serve",
    ).start()  # fmt: skip
    gateway = None
    try:
        serve.wait_ready(url=f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=600)
        gateway = Process(
            [str(bin_dir / "colqwen2-gateway"), "--triton-url", f"grpc://127.0.0.1:{grpc_port}",
             "--port", str(gateway_port)],
            work / "gateway.log",
        ).start()  # fmt: skip
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        gateway.wait_ready(url=f"{gateway_url}/health", timeout=60)
        images = [*payloads(8), thumbnail()]
        traffic, stop = Traffic(), threading.Event()
        threads = [
            threading.Thread(
                target=worker, args=(i, f"grpc://127.0.0.1:{grpc_port}", gateway_url, images, stop, traffic)
            )
            for i in range(args.workers)
        ]
        samples: list[dict] = []
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while time.monotonic() - started < args.warmup + args.duration:
            tree = triton_parts(serve.pid)
            parts = {part: pss_bytes(pids) / 2**20 for part, pids in tree.items()}
            triton_pss = sum(mb for part, mb in parts.items() if part != "supervisor")
            triton_rss = rss_bytes([pid for part, pids in tree.items() if part != "supervisor" for pid in pids]) / 2**20
            gateway_pss = pss_bytes(process_tree(gateway.pid)) / 2**20
            samples.append({"t": round(time.monotonic() - started, 2), "triton_mb": round(triton_pss, 1),
                            "gateway_mb": round(gateway_pss, 1), "triton_rss_mb": round(triton_rss, 1),
                            "parts_mb": {k: round(v, 1) for k, v in sorted(parts.items())}})  # fmt: skip
            time.sleep(args.sample)
        stop.set()
        for thread in threads:
            thread.join(300)
        if not serve.running():
            traffic.failures.append(f"the server exited with code {serve.process.returncode}")
    finally:
        for process in (gateway, serve):
            if process is not None:
                process.stop(60)
    return verdict(args, samples, traffic)


def verdict(args: argparse.Namespace, samples: list[dict], traffic: Traffic) -> dict:
    times = np.array([s["t"] for s in samples], dtype=float)
    total = np.array([s["triton_mb"] + s["gateway_mb"] for s in samples], dtype=float)
    total_s = args.warmup + args.duration
    warmup = max(args.warmup, WARMUP_FRACTION * total_s)
    settled = times >= warmup
    slope, growth = fitted_growth(times[settled], total[settled])
    long_run = args.duration >= LONG_RUN
    names = sorted({name for sample in samples for name in sample.get("parts_mb", {})} | {"gateway"})
    parts: dict[str, dict] = {}
    for name in names:
        values = np.array(
            [s["gateway_mb"] if name == "gateway" else s.get("parts_mb", {}).get(name, np.nan) for s in samples]
        )
        keep = settled & np.isfinite(values)
        part_slope, _ = fitted_growth(times[keep], values[keep])
        window = values[keep]
        parts[name] = {
            "slope_mb_per_hour": round(part_slope, 2),
            "end_mb": round(float(window[-1]), 1) if len(window) else None,
            "peak_mb": round(float(window.max()), 1) if len(window) else None,
        }
    problems = list(traffic.failures)
    if long_run and slope > args.max_slope_mb_per_hour:
        problems.append(f"memory grows {slope:.1f} MB/h after the warm-up (limit {args.max_slope_mb_per_hour})")
    if not long_run and growth > args.max_growth_mb:
        problems.append(f"memory grew {growth:.1f} MB within the window (limit {args.max_growth_mb})")
    requests = sum(traffic.counts.values())
    by_kind: dict[str, dict] = {}
    for (kind, outcome), n in sorted(traffic.counts.items()):
        by_kind.setdefault(kind, {"outcomes": {}})["outcomes"][outcome] = n
    for kind, values in traffic.latencies.items():
        by_kind[kind]["p50_ms"] = round(float(np.percentile(values, 50)) * 1000, 1)
        by_kind[kind]["p99_ms"] = round(float(np.percentile(values, 99)) * 1000, 1)
    return {
        "command": " ".join(["python -m bench.soak", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_threads": os.cpu_count()},
        "artifacts": str(args.artifacts),
        "duration_s": args.duration,
        "traffic_s": total_s,
        "workers": args.workers,
        "requests": requests,
        "requests_per_s": round(requests / max(args.warmup + args.duration, 1e-9), 2),
        "by_kind": by_kind,
        "memory": {
            "start_mb": round(float(total[0]), 1) if len(total) else None,
            "end_mb": round(float(total[-1]), 1) if len(total) else None,
            "peak_mb": round(float(total.max()), 1) if len(total) else None,
            "slope_mb_per_hour": round(slope, 2),
            "fitted_growth_mb": round(growth, 2),
            "judged_by": "slope" if long_run else "growth within the window",
            "warmup_s": round(warmup, 1),
            "parts": parts,
        },
        "samples": samples,
        "failures": problems,
        "passed": not problems,
    }


def write_reports(report: dict, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".json"), out.with_suffix(".md"), out.with_suffix(".png")]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    m = report["memory"]
    lines = [
        f"Soak: {report['traffic_s']:.0f} s of traffic, memory judged after the first "
        f"{report['memory']['warmup_s']:.0f} s (warm-up), "
        f"{report['workers']} clients, artifacts `{report['artifacts']}`, "
        f"{report['machine']['cpu_threads']} CPU threads. `{report['command']}`, {report['date']}.",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**: {report['requests']} requests "
        f"({report['requests_per_s']}/s); memory (PSS of Triton, its stubs and the gateway) {m['start_mb']} MB at the "
        f"start, {m['end_mb']} MB at the end, peak {m['peak_mb']} MB; fitted after the {m['warmup_s']} s warm-up: "
        f"{m['slope_mb_per_hour']} MB/h, {m['fitted_growth_mb']} MB over the window (judged by {m['judged_by']}).",
        "",
        *(
            [
                "Memory by part after the warm-up: "
                + "; ".join(
                    f"{name} {row['end_mb']} MB at the end, peak {row['peak_mb']}, {row['slope_mb_per_hour']} MB/h"
                    for name, row in m["parts"].items()
                )
                + ".",
                "",
            ]
            if m.get("parts")
            else []
        ),
        "| request | outcomes | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for kind, row in report["by_kind"].items():
        outcomes = ", ".join(f"{k} {v}" for k, v in row["outcomes"].items())
        lines.append(f"| {kind} | {outcomes} | {row['p50_ms']} | {row['p99_ms']} |")
    if report["failures"]:
        lines += ["", "Failures:", *(f"- {f}" for f in report["failures"])]
    paths[1].write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = np.array([s["t"] for s in samples]) / 60
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [s["triton_mb"] for s in samples], label="Triton + stubs")
    ax.plot(t, [s["gateway_mb"] for s in samples], label="gateway")
    total = np.array([s["triton_mb"] + s["gateway_mb"] for s in samples])
    ax.plot(t, total, label="total")
    settled = t >= report["memory"]["warmup_s"] / 60
    if settled.sum() >= 3:
        fit = np.polyfit(t[settled], total[settled], 1)
        ax.plot(
            t[settled], np.polyval(fit, t[settled]), "--", label=f"fit: {report['memory']['slope_mb_per_hour']} MB/h"
        )
    ax.set_xlabel("minutes")
    ax.set_ylabel("PSS (MB)")
    ax.set_title(f"Soak: {report['requests']} requests, {'passed' if report['passed'] else 'FAILED'}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/tiny"), help="(default: %(default)s)")
    parser.add_argument("--duration", type=float, default=1800, help="seconds of traffic (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--sample", type=float, default=2.0, help="seconds between RSS samples (default: %(default)s)")
    parser.add_argument("--max-slope-mb-per-hour", type=float, default=40.0, help="(default: %(default)s)")
    parser.add_argument("--max-growth-mb", type=float, default=256.0, help="short runs (default: %(default)s)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds of traffic before the measured window (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=None, help="report path prefix (default: bench/results/soak-<s>s)")
    args = parser.parse_args(argv)
    args.out = args.out or Path("bench/results") / f"soak-{args.duration:.0f}s-cpu{os.cpu_count()}"
    report = run(args)
    paths = write_reports(report, args.out)
    print((args.out.with_suffix(".md")).read_text())
    print("reports: " + ", ".join(map(str, paths)))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
