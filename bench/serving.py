"""Serving benchmark: Triton end to end against the in-process references, on one checkpoint.

    python -m bench.serving --artifacts artifacts/medium-448         # what `make bench` runs
    python -m bench.serving --artifacts artifacts/tiny --smoke       # seconds: keeps the harness alive in CI

For each server configuration (fp32, int8, fp16 and fp32 with dynamic batching off) it starts
Triton, then an asyncio load generator sends encoded images (PNG/JPEG bytes, one image per
request) over gRPC and HTTP at each concurrency level with a fixed request count, recording
p50/p95/p99 latency, images per second and the server's peak RSS (Triton plus its model
processes). In the same run it measures the in-process references on the same images and the
same thread budget: colpali-engine PyTorch (bytes -> PIL -> processor -> model), ONNX Runtime
called directly (bytes -> the service's own preprocessing -> the same ONNX file) and the
preprocessing alone. Writes JSON, a markdown report with the targets, and PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from export.sample_images import keepa_chart, product_image
from model_repository.render import RenderOptions, render
from model_repository.server import TritonServer, free_port

from .encoders import _cpu_name

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {  # name -> (render overrides, ensemble)
    "fp32": ({}, "colqwen2"),
    "int8": ({}, "colqwen2_int8"),
    "fp16": ({"ensemble_variants": {"colqwen2": "fp16"}}, "colqwen2"),
    "fp32-no-dynamic-batching": ({"dynamic_batching": False}, "colqwen2"),
}


@dataclass
class Level:
    config: str
    protocol: str
    concurrency: int
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    images_per_s: float
    peak_rss_mb: float
    errors: int


def payloads(count: int) -> list[bytes]:
    """Encoded images as users send them: PNG charts and JPEG product photos, 800x500 and 600x600."""
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        if i % 2 == 0:
            keepa_chart(900 + i).save(buffer, "PNG")
        else:
            product_image(900 + i).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def tree_rss_bytes(root: int) -> int:
    """RSS of a process and all its descendants (Triton and its Python-backend stubs)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            status = (proc / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue
        pid = int(proc.name)
        children.setdefault(ppid, []).append(pid)
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        rss[pid] = kb * 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def drive(url: str, protocol: str, model: str, data: list[bytes], concurrency: int, requests: int):
    """`requests` single-image requests, `concurrency` in flight: (latencies in s, wall s, errors)."""
    if protocol == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module
    client = module.InferenceServerClient(url)
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, errors
        while next_index < requests:
            i = next_index
            next_index += 1
            tensor = module.InferInput("image", [1, 1], "BYTES")
            array = np.array([[data[i % len(data)]]], dtype=object)
            if protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            start = time.perf_counter()
            try:
                await client.infer(model, [tensor])
                latencies.append(time.perf_counter() - start)
            except Exception:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    return latencies, wall, errors


def run_config(name: str, args, data: list[bytes], levels: list[int]) -> list[Level]:
    overrides, model = CONFIGS[name]
    repo = render(
        RenderOptions(args.artifacts, args.workdir / f"repo-{name}", device="cpu", threads=args.threads, **overrides)
    )
    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    results = []
    with open(args.workdir / f"triton-{name}.log", "w") as log, server:
        server.start(log)
        server.wait_ready(600)
        for protocol in args.protocols:
            url = server.grpc_url if protocol == "grpc" else server.http_url
            asyncio.run(drive(url, protocol, model, data, 2, 4))  # warm up connections and arenas
            for concurrency in levels:
                requests = max(args.requests, 2 * concurrency)
                with PeakRss(server.process.pid) as rss:
                    latencies, wall, errors = asyncio.run(drive(url, protocol, model, data, concurrency, requests))
                ms = np.array(latencies) * 1e3
                level = Level(
                    name, protocol, concurrency, requests,
                    float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(np.percentile(ms, 99)),
                    len(latencies) / wall, rss.peak / 2**20, errors,
                )  # fmt: skip
                print(
                    f"{name:<26} {protocol:<4} c={concurrency:<3} {level.images_per_s:7.2f} img/s  "
                    f"p50 {level.p50_ms:8.1f} ms  p99 {level.p99_ms:8.1f} ms  rss {level.peak_rss_mb:7.0f} MB",
                    flush=True,
                )
                results.append(level)
    return results


def _rate(fn, items: list, repeats: int = 1) -> float:
    fn(items[:1])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn(items)
    return repeats * len(items) / (time.perf_counter() - start)


def in_process(args, data: list[bytes]) -> dict[str, float]:
    """Images per second, bytes to vectors, one process, batch 1, the same thread budget."""
    import onnxruntime as ort
    import torch
    from PIL import Image

    from export.checkpoint import load_checkpoint
    from model_repository.colqwen2_serving.imaging import letterbox, preprocess_image

    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    size = manifest["image_size"]
    threads = args.threads or os.cpu_count() or 1
    out: dict[str, float] = {}
    out["preprocess"] = _rate(lambda items: [preprocess_image(d, size) for d in items], data)
    for variant in ("fp32", "int8_dynamic", "fp16"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(args.artifacts / variant / "image_encoder.onnx"), opts)

        def onnx(items, session=session):
            for d in items:
                session.run(None, {"pixel_values": preprocess_image(d, size)[None]})

        out[f"onnxruntime {variant}"] = _rate(onnx, data)
    torch.set_num_threads(threads)
    loaded = load_checkpoint(str(Path(manifest["checkpoint"])))

    def pytorch(items):
        with torch.no_grad():
            for d in items:
                image = Image.fromarray(letterbox(Image.open(io.BytesIO(d)), size))
                loaded.model(**loaded.processor.process_images([image]))

    out["colpali-engine pytorch"] = _rate(pytorch, data)
    return out


def targets(levels: list[Level], baselines: dict[str, float], threads: int) -> list[dict]:
    def best(config: str) -> float:
        return max((lv.images_per_s for lv in levels if lv.config == config), default=float("nan"))

    def single(config: str) -> float:
        return next((lv.images_per_s for lv in levels if lv.config == config and lv.concurrency == 1), float("nan"))

    torch_rate = baselines.get("colpali-engine pytorch", float("nan"))
    overhead = baselines.get("onnxruntime fp32", float("nan")) / single("fp32") - 1
    rows = [
        ("Triton int8 end to end vs colpali-engine PyTorch in-process", best("int8") / torch_rate, ">=", 2.5, "x"),
        (
            "Triton overhead vs the same preprocessing + ONNX in one process (fp32, 1 in flight)",
            overhead,
            "<=",
            0.15,
            "",
        ),
        ("int8 vs fp32 end to end (best throughput each)", best("int8") / best("fp32"), ">=", 1.5, "x"),
    ]
    return [
        {"target": t, "measured": m, "goal": f"{op} {g}{unit}", "met": bool(m >= g if op == ">=" else m <= g)}
        for t, m, op, g, unit in rows
    ]


def plots(levels: list[Level], out_prefix: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for (config, protocol), group in _groups(levels).items():
        ax.plot(
            [g.concurrency for g in group], [g.images_per_s for g in group], marker="o", label=f"{config} {protocol}"
        )
    ax.set(xscale="log", xlabel="concurrent requests", ylabel="images / s", title="Throughput against concurrency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_prefix.with_name(out_prefix.name + "-throughput.png"), dpi=110)
    files.append(out_prefix.name + "-throughput.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for (config, protocol), group in _groups(levels).items():
        ax.plot([g.concurrency for g in group], [g.p50_ms for g in group], marker="o", label=f"{config} {protocol} p50")
        ax.plot([g.concurrency for g in group], [g.p99_ms for g in group], ls="--", label=f"{config} {protocol} p99")
    ax.set(xscale="log", yscale="log", xlabel="concurrent requests", ylabel="latency (ms)", title="Latency p50 / p99")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out_prefix.with_name(out_prefix.name + "-latency.png"), dpi=110)
    files.append(out_prefix.name + "-latency.png")
    plt.close("all")
    return files


def _groups(levels: list[Level]) -> dict[tuple[str, str], list[Level]]:
    groups: dict[tuple[str, str], list[Level]] = {}
    for level in levels:
        groups.setdefault((level.config, level.protocol), []).append(level)
    return groups


def report(result: dict, figures: list[str]) -> str:
    lines = [
        f"# Serving benchmark: {result['checkpoint']} ({result['parameters'] / 1e6:.1f} M parameters"
        f"{', random weights' if result['random_weights'] else ''}), {result['image_size']} x {result['image_size']}",
        "",
        f"`{result['command']}`, {result['date']}, {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"ONNX Runtime threads {result['threads']}. Images: PNG charts and JPEG photos, one per request.",
        "",
        "## Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['measured']:.3f} | {t['goal']} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "## In-process references (bytes to vectors, batch 1)", "", "| runtime | images / s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["in_process"].items()]
    lines += [
        "",
        "## Triton",
        "",
        "| config | protocol | concurrency | requests | images / s | p50 ms | p95 ms | p99 ms | peak RSS MB | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in result["levels"]:
        lines.append(
            f"| {lv['config']} | {lv['protocol']} | {lv['concurrency']} | {lv['requests']} | {lv['images_per_s']:.2f} "
            f"| {lv['p50_ms']:.1f} | {lv['p95_ms']:.1f} | {lv['p99_ms']:.1f} "
            f"| {lv['peak_rss_mb']:.0f} | {lv['errors']} |"
        )
    lines += ["", *[f"![{f}]({f})" for f in figures], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/medium-448"))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    parser.add_argument("--requests", type=int, default=32, help="per level (at least 2 x concurrency)")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime / torch threads (0: all cores)")
    parser.add_argument("--smoke", action="store_true", help="two levels, few requests: seconds on tiny")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-serving"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.concurrency, args.requests, args.images = "1,4", 8, 4
    args.protocols = [p for p in args.protocols.split(",") if p]
    args.workdir.mkdir(parents=True, exist_ok=True)
    levels_list = [int(c) for c in args.concurrency.split(",")]
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    data = payloads(args.images)

    levels: list[Level] = []
    for name in args.configs.split(","):
        levels += run_config(name, args, data, levels_list)
    baselines = in_process(args, data)
    for name, rate in baselines.items():
        print(f"in-process {name:<26} {rate:7.2f} img/s", flush=True)
    threads = args.threads or os.cpu_count() or 1
    tag = f"serving-{Path(manifest['checkpoint']).name}-{manifest['image_size']}-cpu{os.cpu_count()}"
    result = {
        "command": "python -m bench.serving " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "threads": threads,
        "checkpoint": manifest["checkpoint"],
        "parameters": manifest["parameters"],
        "random_weights": manifest.get("random_weights", False),
        "image_size": manifest["image_size"],
        "levels": [asdict(lv) for lv in levels],
        "in_process": baselines,
        "targets": targets(levels, baselines, threads),
        "median_request_bytes": statistics.median(len(d) for d in data),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / tag
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=2))
    figures = plots(levels, prefix)
    prefix.with_suffix(".md").write_text(report(result, figures))
    print(f"\nreport: {prefix.with_suffix('.md')}")
    for t in result["targets"]:
        print(f"  {'MET ' if t['met'] else 'MISS'} {t['target']}: {t['measured']:.3f} (goal {t['goal']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
