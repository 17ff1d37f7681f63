"""Serving benchmark: Triton end to end against the in-process references, on one checkpoint.

    python -m bench.serving --artifacts artifacts/medium         # what `make bench` runs
    python -m bench.serving --artifacts artifacts/tiny --smoke   # seconds: keeps the harness alive in CI
    python -m bench.serving --artifacts artifacts/real --device gpu   # on a GPU host

The workload is what a Keepa/Amazon user sends (`load.WORKLOAD`): Keepa charts of 500 x 200 and
1000 x 400 (PNG), product photos of 1000 to 1500 px (JPEG) and some tall images, one per request.
Each server configuration embeds them at native resolution (colpali-engine's own grid, up to the
checkpoint's 768 visual tokens) or letterboxed to a fixed 448 x 448 (`fixed448-*`, 256 visual
tokens each), in fp32 or int8 on a CPU host (fp16 or int8 on a GPU host). For each it starts
Triton, then an asyncio load generator sends the images over gRPC (and HTTP if asked) at each
concurrency level with a fixed request count, recording p50/p95/p99 latency, images and vectors
per second, the mean batch the encoder executed, where a request's time goes, the server's peak
RSS (Triton plus its model processes) and, on a GPU, peak device memory. Before and after the
sweep it measures the in-process references on the same images and thread budget (see
`references.py`: colpali-engine PyTorch at native resolution, and the same ONNX graphs called
directly), and reports both runs: a shared machine drifts, and a ratio is only as good as its
baseline. Writes JSON, a markdown report with every target as measured against its goal, and PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from model_repository.render import (
    PREPROCESS,
    RenderOptions,
    admission_wait_ms,
    detect_device,
    encoder_name,
    render,
)
from model_repository.server import TritonServer

from .load import ModelStats, PeakMemory, drive, payloads, workload_summary
from .references import averaged, in_process, int8_breakdown, paired_overhead, speedup_ceiling
from .timing import cpu_name

ROOT = Path(__file__).resolve().parent.parent
FIXED = 448
CONFIGS = {  # device -> name -> render overrides; every config serves its images through `colqwen2`
    "cpu": {
        "native-fp32": {},
        "native-int8": {"precisions": ("int8",)},
        "fixed448-fp32": {"fixed_image_size": FIXED},
        "fixed448-int8": {"fixed_image_size": FIXED, "precisions": ("int8",)},
        "native-fp16": {"variant_overrides": {"fp16": "fp16"}},
        "native-fp32-no-dynamic-batching": {"dynamic_batching": False},
    },
    "gpu": {
        "native-fp16": {},
        "native-int8": {"precisions": ("int8",)},
        "fixed448-fp16": {"fixed_image_size": FIXED},
        "native-fp16-no-dynamic-batching": {"dynamic_batching": False},
    },
}
DEFAULT_CONFIGS = {"cpu": ("native-fp32", "native-int8", "fixed448-fp32", "fixed448-int8"),
                   "gpu": ("native-fp16", "native-int8", "fixed448-fp16")}  # fmt: skip
OVERHEAD_CONFIG = {"cpu": "native-fp32", "gpu": "native-fp16"}  # where Triton's overhead is measured, paired
MODEL = "colqwen2"
GB_MIB = 1e9 / 2**20  # the original service's memory figures are in GB; nvidia-smi reports MiB


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
    vectors_per_s: float
    mean_ms: float
    encoder_batch: float  # requests per execution of the encoder model (Triton's statistics API)
    preprocess_ms: float  # per request: the preprocessing model's own compute
    queue_ms: float  # per request: waiting in the encoder's queue
    encoder_ms: float  # per request: the encoder's own compute (its execute(): vision and text graphs)
    peak_rss_mb: float
    peak_gpu_mb: float | None
    errors: int  # failed for another reason than busy (never retried)
    latencies_ms: list[float]  # every served request's accepted attempt, in completion order (the plots use them)
    refused: int = 0  # busy refusals (admission or a full queue), each retried as the SDK retries
    refusal_p50_ms: float = float("nan")  # how fast a refusal is answered
    refusal_p99_ms: float = float("nan")
    request_p99_ms: float = float("nan")  # a served request from its first attempt: retries and pauses included
    given_up: int = 0  # refused MAX_ATTEMPTS times
    admission_ms: float = float("nan")  # the server's admission bound (0: off)
    # served per second while `concurrency` were in flight: from the start until the last request was first sent.
    # The level's end (its last requests, some asleep before a retry, while the encoder drains) is not load at
    # that concurrency; `images_per_s` keeps it.
    window_images_per_s: float = float("nan")
    sweep: int = 0  # which pass over the levels (`--sweeps`: forward, then backward, ...)


def measure_level(server: TritonServer, config: str, protocol: str, encoder: str, data: list[bytes],
                  concurrency: int, requests: int, gpu: bool, admission_ms: float = float("nan")) -> Level:  # fmt: skip
    """One load level: `requests` images, `concurrency` in flight, with memory and server statistics."""
    url = server.grpc_url if protocol == "grpc" else server.http_url
    with PeakMemory(server.process.pid, gpu=gpu) as memory, ModelStats(server.http_url, [encoder, PREPROCESS]) as stats:
        run = asyncio.run(drive(url, protocol, MODEL, data, concurrency, requests))
    nan = np.array([float("nan")])
    ms = np.array(run.latencies) * 1e3 if run.latencies else nan
    refusals = np.array(run.refusals) * 1e3 if run.refusals else nan
    totals = np.array(run.totals) * 1e3 if run.totals else nan
    level = Level(
        config, protocol, concurrency, requests,
        float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(np.percentile(ms, 99)),
        len(run.latencies) / run.wall, run.vectors / run.wall, float(np.mean(ms)), stats.mean_batch[encoder],
        stats.compute_ms[PREPROCESS], stats.queue_ms[encoder], stats.compute_ms[encoder],
        memory.peak_rss / 2**20, memory.peak_gpu_mb, run.errors, [round(x * 1e3, 2) for x in run.latencies],
        len(run.refusals), float(np.percentile(refusals, 50)), float(np.percentile(refusals, 99)),
        float(np.percentile(totals, 99)), run.given_up, admission_ms,
        run.in_window / run.window if run.window > 0 else float("nan"),
    )  # fmt: skip
    gpu_text = f"  gpu {level.peak_gpu_mb:7.0f} MiB" if level.peak_gpu_mb is not None else ""
    print(
        f"{config:<32} {protocol:<4} c={concurrency:<3} {level.images_per_s:7.2f} img/s "
        f"{level.vectors_per_s:8.0f} vec/s  (in flight: {level.window_images_per_s:5.2f} img/s)  "
        f"p50 {level.p50_ms:8.1f} ms  p99 {level.p99_ms:8.1f} ms  "
        f"batch {level.encoder_batch:5.2f}  rss {level.peak_rss_mb:7.0f} MB{gpu_text}  "
        f"refused {level.refused} (p99 {level.refusal_p99_ms:.0f} ms)  errors {run.errors}  given up {run.given_up}",
        flush=True,
    )
    return level


def run_config(name: str, args, data: list[bytes], levels: list[int]) -> tuple[list[Level], dict | None]:
    """Start Triton for one configuration, sweep protocols and levels, and (for the overhead config)
    measure the paired overhead; returns the levels and the paired result or None."""
    gpu = args.device == "gpu"
    options = RenderOptions(
        args.artifacts, args.workdir / f"repo-{name}", device=args.device, threads=args.threads,
        **CONFIGS[args.device][name],
    )  # fmt: skip
    repository = render(options)
    admission_ms = float(admission_wait_ms(options, args.device))
    variant = json.loads((repository / "render.json").read_text())["ensembles"][MODEL]
    encoder = encoder_name(variant)
    server = TritonServer.on_free_ports(repository)
    results, paired = [], None
    with open(args.workdir / f"triton-{name}.log", "w") as log, server:
        server.start(log)
        server.wait_ready(1800 if gpu else 600)  # TensorRT builds engines at load
        for protocol in args.protocols:
            url = server.grpc_url if protocol == "grpc" else server.http_url
            started = time.perf_counter()
            asyncio.run(drive(url, protocol, MODEL, data, 2, 4))  # warm up connections and arenas
            rate = 4 / (time.perf_counter() - started)  # images/s, a first guess: sizes the levels
            for sweep, concurrency in sweep_order(levels, args.sweeps):
                # saturated levels long enough to hold their rate, and every level at least `min_level_s` long:
                # a level of a few seconds measures the machine's noise (10 % here) more than the level
                requests = max(args.requests, 4 * concurrency, math.ceil(rate * args.min_level_s))
                level = measure_level(server, name, protocol, encoder, data, concurrency, requests, gpu, admission_ms)
                level.sweep = sweep
                results.append(level)
                if math.isfinite(level.window_images_per_s):
                    rate = max(rate, level.window_images_per_s)
        if name == OVERHEAD_CONFIG[args.device]:
            threads = args.threads or os.cpu_count() or 1
            paired = paired_overhead(
                server.grpc_url, MODEL, args.artifacts, variant, data, threads, gpu, args.paired_rounds
            )
            print(
                f"{name:<32} paired at 1 in flight: Triton {paired['triton_ms']:.1f} ms, in-process "
                f"{paired['in_process_ms']:.1f} ms, overhead {paired['overhead']:.1%}",
                flush=True,
            )
    return results, paired


def _target(name: str, measured: float | None, op: str, goal: float, unit: str, why_not: str = "") -> dict:
    ok = None
    if measured is not None and not np.isnan(measured):
        ok = bool(measured >= goal if op == ">=" else measured <= goal if op == "<=" else measured < goal)
    else:
        measured, why_not = None, why_not or "its configurations were not in --configs"
    return {"target": name, "measured": measured, "goal": f"{op} {goal:g}{unit}", "met": ok, "not_measured": why_not}


def sweep_order(levels: list[int], sweeps: int) -> list[tuple[int, int]]:
    """(sweep, level) over `sweeps` passes, every other one backward (1, 4, 16, 64, 64, 16, 4, 1): a drift of the
    machine's speed over the run (up to 10 % between runs here) weighs on every level's mean alike."""
    return [(k, c) for k in range(sweeps) for c in (levels if k % 2 == 0 else levels[::-1])]


def level_means(levels: list[Level], config: str, metric: str = "images_per_s") -> dict[int, float]:
    """A configuration's `metric` per concurrency, the mean over its sweeps (NaN levels left out)."""
    by: dict[int, list[float]] = {}
    for lv in levels:
        value = getattr(lv, metric)
        if lv.config == config and value is not None and not np.isnan(value):
            by.setdefault(lv.concurrency, []).append(value)
    return {c: float(np.mean(v)) for c, v in by.items()}


def _best(levels: list[Level], config: str, metric: str = "images_per_s", min_concurrency: int = 1) -> float:
    """The best level's `metric` (each level the mean of its sweeps)."""
    means = level_means(levels, config, metric)
    return max((v for c, v in means.items() if c >= min_concurrency), default=float("nan"))


def _peak_rss(levels: list[Level], config: str | None = None) -> float:
    return max((lv.peak_rss_mb for lv in levels if config is None or lv.config == config), default=float("nan"))


def targets(levels: list[Level], baselines: dict, device: str, paired: dict | None) -> list[dict]:
    """Every target of the benchmark issues, as measured here; those for the other host kind are listed unmeasured."""

    def p50_alone(config: str) -> float:
        """The best protocol's p50 with 1 in flight."""
        return min((lv.p50_ms for lv in levels if lv.config == config and lv.concurrency == 1), default=float("nan"))

    def peak_gpu(config: str) -> float:
        return max(
            (lv.peak_gpu_mb for lv in levels if lv.config == config and lv.peak_gpu_mb is not None),
            default=float("nan"),
        )

    cpu, gpu = device == "cpu", device == "gpu"
    on_cpu = "" if cpu else "a CPU-host target"
    on_gpu = "" if gpu else "needs a GPU host"
    torch_rate = baselines.get("colpali-engine pytorch", {}).get("images_per_s", float("nan"))
    return [
        _target(
            "Triton int8 end to end vs colpali-engine PyTorch in-process, native resolution (images/s ratio)",
            _best(levels, "native-int8") / torch_rate if cpu else None, ">=", 2.5, "x", on_cpu,
        ),
        _target(
            "Triton overhead vs the same preprocessing + ONNX in one process (fp32, 1 in flight, calls alternated)",
            paired["overhead"] if cpu and paired else None, "<=", 0.15, "",
            on_cpu,
        ),
        _target(
            "int8 vs fp32 end to end, native resolution (best throughput each)",
            _best(levels, "native-int8") / _best(levels, "native-fp32") if cpu else None, ">=", 1.5, "x", on_cpu,
        ),
        _target(
            "peak server RSS of every configuration (MiB; 4 GB = 3815 MiB)", _peak_rss(levels) if levels else None,
            "<=", round(4 * GB_MIB), " MiB",
        ),
        _target(
            "fp16 images/s with 32 or more in flight (batches up to 32)",
            _best(levels, "native-fp16", min_concurrency=32) if gpu else None, ">=", 200, " img/s", on_gpu,
        ),
        _target("fp16 single-image p50 latency (1 in flight)", p50_alone("native-fp16") if gpu else None,
                "<=", 15, " ms", on_gpu),
        _target("fp16 peak GPU memory", peak_gpu("native-fp16") if gpu else None, "<", round(8 * GB_MIB), " MiB",
                on_gpu),
        _target("int8 peak GPU memory", peak_gpu("native-int8") if gpu else None, "<", round(4 * GB_MIB), " MiB",
                on_gpu),
        *overload_targets(levels),
    ]  # fmt: skip


def overload_targets(levels: list[Level]) -> list[dict]:
    """Issue 25's: goodput at saturation per configuration, refusals fast, accepted requests within the bound,
    a user's 4 in flight never refused, and every request answered."""
    rows = []
    configs = list(dict.fromkeys(lv.config for lv in levels))
    for config in configs:
        means = level_means(levels, config, "window_images_per_s")
        loaded = [v for c, v in means.items() if c in (16, 64)]
        best = max(means.values(), default=float("nan"))
        ratio = min(loaded) / best if loaded and best > 0 else None
        name = f"{config}: goodput at 16 and 64 in flight (the lower) vs its best level, while in flight, each level "
        rows.append(_target(name + "the mean of its sweeps", ratio, ">=", 0.95, "x", "no level at 16 or 64 in flight"))
    refusals = [lv.refusal_p99_ms for lv in levels if lv.refused]
    rows.append(_target("busy refusals answered within (p99, the slowest level)", max(refusals, default=None),
                        "<=", 1000, " ms", "no request was refused"))  # fmt: skip
    # The bound an accepted request is promised: the admission bound (work ahead, its own included) plus one
    # image's own time, taken as the p99 of the same configuration at 1 in flight.
    over = []
    for lv in levels:
        alone = [x.p99_ms for x in levels if (x.config, x.protocol, x.concurrency) == (lv.config, lv.protocol, 1)]
        if lv.admission_ms > 0 and alone and not np.isnan(lv.p99_ms):
            over.append(lv.p99_ms / (lv.admission_ms + alone[0]))
    why_not = "admission off, or no level at 1 in flight"
    rows.append(_target("accepted p99 vs its bound (admission bound + the p99 alone), the worst level",
                        max(over, default=None), "<=", 1.0, "x", why_not))  # fmt: skip
    four = [lv.refused for lv in levels if lv.concurrency == 4]
    rows.append(_target("busy refusals with 4 in flight (a single user's batch)", sum(four) if four else None,
                        "<=", 0, "", "no level at 4 in flight"))  # fmt: skip
    lost = [lv.requests - len(lv.latencies_ms) - lv.errors - lv.given_up for lv in levels]
    rows.append(_target("requests without an answer (served, failed or given up)", sum(lost) if lost else None,
                        "<=", 0, ""))  # fmt: skip
    return rows


def comparison(levels: list[Level], baselines: dict) -> list[dict]:
    """Native against fixed 448 and against colpali-engine in-process, one row each: the issue's table."""
    rows = []
    for config in dict.fromkeys(lv.config for lv in levels):
        loaded = [lv for lv in levels if lv.config == config]
        top = max(loaded, key=lambda lv: lv.concurrency)
        rows.append(
            {
                "runtime": f"Triton {config}",
                "images_per_s": _best(levels, config),
                "vectors_per_s": _best(levels, config, "vectors_per_s"),
                "concurrency": top.concurrency,
                "p50_ms": top.p50_ms,
                "p99_ms": top.p99_ms,
                "p50_alone_ms": min((lv.p50_ms for lv in loaded if lv.concurrency == 1), default=float("nan")),
                "peak_rss_mb": top.peak_rss_mb,
            }
        )
    for name, rates in baselines.items():
        if name != "preprocess":
            rows.append({"runtime": f"in-process {name}", **rates})
    return rows


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
    # The distribution itself: every request's latency as a CDF, alone (1 in flight) and fully loaded.
    # One colour per config; solid at 1 in flight, dashed at the most; gRPC thick, HTTP thin.
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {config: f"C{i}" for i, config in enumerate(dict.fromkeys(lv.config for lv in levels))}
    for (config, protocol), group in _groups(levels).items():
        for level, style in ((group[0], "-"), (group[-1], "--")):
            values = np.sort(level.latencies_ms)
            if not len(values):
                continue
            cdf = np.arange(1, len(values) + 1) / len(values)
            ax.step(
                values, cdf, where="post", ls=style, color=colours[config], lw=2.0 if protocol == "grpc" else 1.0,
                label=f"{config} {protocol} c={level.concurrency}",
            )  # fmt: skip
    ax.set(xscale="log", xlabel="latency (ms)", ylabel="fraction of requests", title="Latency distribution (CDF)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out_prefix.with_name(out_prefix.name + "-latency-cdf.png"), dpi=110)
    files.append(out_prefix.name + "-latency-cdf.png")
    plt.close("all")
    return files


def _groups(levels: list[Level]) -> dict[tuple[str, str], list[Level]]:
    """Levels per (config, protocol), by concurrency (a later sweep's level after the first's)."""
    groups: dict[tuple[str, str], list[Level]] = {}
    for level in sorted(levels, key=lambda lv: (lv.concurrency, lv.sweep)):
        groups.setdefault((level.config, level.protocol), []).append(level)
    return groups


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def report(result: dict, figures: list[str]) -> str:
    """The Markdown report of a run: every section in turn, then the figures."""
    lines = [
        *_header_md(result),
        *_targets_md(result),
        *_comparison_md(result),
        *_in_process_md(result),
        *_int8_md(result),
        *_levels_md(result),
        *_time_split_md(result),
        "",
        *[f"![{f}]({f})" for f in figures],
        "",
    ]
    return "\n".join(lines)


def _header_md(result: dict) -> list[str]:
    """Title and the line saying what ran where."""
    machine = result["machine"]
    return [
        f"# Serving benchmark: {result['checkpoint']} ({result['parameters'] / 1e6:.1f} M parameters"
        f"{', random weights' if result['random_weights'] else ''}), mixed workload",
        "",
        f"`{result['command']}`, {result['date']}, {machine['cpu']}, {machine['cores']} cores"
        f"{', ' + machine['gpu'] if machine.get('gpu') else ', no GPU'}, device {result['device']}, "
        f"ONNX Runtime threads {result['threads']}. Workload, one image per request: {result['workload']}. "
        f"Native resolution: each image on colpali-engine's own grid, at most {result['max_visual_tokens']} visual "
        f"tokens; fixed448: letterboxed to 448 x 448, 256 visual tokens each.",
    ]


def _targets_md(result: dict) -> list[str]:
    """Every target against its goal, then the paired overhead measurement if there is one."""
    lines = [
        "",
        "## Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for t in result["targets"]:
        met = "not measured: " + t["not_measured"] if t["met"] is None else "yes" if t["met"] else "no"
        lines.append(f"| {t['target']} | {_fmt(t['measured'])} | {t['goal']} | {met} |")
    paired = result.get("paired_overhead")
    if paired:
        lines += [
            "",
            f"Overhead: {result['paired_rounds']} single-image calls each way, alternated call by call so that the "
            f"machine's drift cancels; medians, bytes to vectors: Triton {paired['triton_ms']:.1f} ms (gRPC), "
            f"the same preprocessing + ONNX files in one process {paired['in_process_ms']:.1f} ms.",
        ]
    return lines


def _comparison_md(result: dict) -> list[str]:
    """Native, fixed 448 and colpali-engine in-process side by side."""
    lines = [
        "",
        "## Native against fixed 448 and against colpali-engine in-process",
        "",
        "Triton: best images/s and vectors/s over the concurrency levels; p50, p99 and peak RSS at the highest "
        "level; p50 alone at 1 in flight. In-process: one image per call, the mean of the runs before and after "
        "the sweep.",
        "",
        "| runtime | images / s | vectors / s | at concurrency | p50 ms | p99 ms | p50 alone ms | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["comparison"]:
        lines.append(
            f"| {row['runtime']} | {row['images_per_s']:.2f} | {row['vectors_per_s']:.0f} "
            f"| {row.get('concurrency', '')} | {_fmt(row.get('p50_ms'), 1)} | {_fmt(row.get('p99_ms'), 1)} "
            f"| {_fmt(row.get('p50_alone_ms'), 1)} | {_fmt(row.get('peak_rss_mb'), 0)} |"
        )
    return lines


def _in_process_md(result: dict) -> list[str]:
    """The in-process references before and after the Triton sweep, and their mean."""
    refs = result["in_process_runs"]
    lines = [
        "",
        "## In-process references (bytes to vectors, one image per call)",
        "",
        "Measured before and after the Triton sweep; the targets use the mean.",
        "",
        "| runtime | images / s before | after | mean | vectors / s mean |",
        "|---|---|---|---|---|",
    ]
    for key, mean in result["in_process"].items():
        before, after = refs[0].get(key, {}), refs[-1].get(key, {})
        lines.append(
            f"| {key} | {before.get('images_per_s', float('nan')):.2f} | {after.get('images_per_s', float('nan')):.2f} "
            f"| {mean['images_per_s']:.2f} | {mean['vectors_per_s']:.0f} |"
        )
    return lines


def _int8_md(result: dict) -> list[str]:
    """The int8 encoders' kernel time shares and speed-up ceiling; nothing when not profiled."""
    shares = result.get("int8_breakdown")
    if not shares:
        return []
    return [
        "",
        "## Where the int8 encoders' time goes",
        "",
        "ONNX Runtime profiler, int8_dynamic vision and text graphs on the workload's images, share of kernel "
        "time. Dynamic quantization reaches only the weight matmuls; attention's activation x activation "
        "matmuls and softmax stay float32.",
        "",
        "| kernels | share |",
        "|---|---|",
        *[f"| {k} | {v:.1%} |" for k, v in shares.items()],
        "",
        f"Ceiling for int8 vs PyTorch if the int8 matmuls took no time at all: "
        f"**{result['int8_speedup_ceiling']:.2f}x** (PyTorch time over the int8 in-process time less its int8 "
        "matmul share).",
    ]


def _levels_md(result: dict) -> list[str]:
    """One row per Triton level: goodput, latency percentiles, refusals apart, batching, memory, errors."""
    lines = [
        "",
        "## Triton",
        "",
        "Images/s and vectors/s: served requests only (goodput), over the whole level; images/s in flight: served "
        "per second from the start until the last request was first sent, while `concurrency` requests were in "
        "flight (the level's end, its last requests draining, is not load at that concurrency; the overload "
        "targets use this rate). p50/p95/p99: a served request's accepted attempt. "
        "Refused: busy answers (admission or a full queue), each retried by the load generator as the SDK retries "
        "(its backoff, or the server's `retry in` hint); refusal p50/p99: how fast those answers came; request "
        "p99: a served request from its first attempt, its refusals and pauses included. Errors: failures other "
        "than busy; given up: refused 50 times. Batch: requests per execution of the encoder model (Triton's "
        "statistics API) during the level.",
        "",
        "| config | protocol | concurrency | sweep | requests | images / s | images / s in flight | vectors / s "
        "| p50 ms | p95 ms | p99 ms | refused | refusal p50 ms | refusal p99 ms | request p99 ms | encoder batch "
        "| peak RSS MB | peak GPU MiB | errors | given up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in result["levels"]:
        lines.append(
            f"| {lv['config']} | {lv['protocol']} | {lv['concurrency']} | {lv.get('sweep', 0) + 1} | {lv['requests']} "
            f"| {lv['images_per_s']:.2f} "
            f"| {_fmt(lv.get('window_images_per_s'), 2)} | {lv['vectors_per_s']:.0f} | {lv['p50_ms']:.1f} "
            f"| {lv['p95_ms']:.1f} | {lv['p99_ms']:.1f} | {lv.get('refused', 0)} | {_fmt(lv.get('refusal_p50_ms'), 1)} "
            f"| {_fmt(lv.get('refusal_p99_ms'), 1)} | {_fmt(lv.get('request_p99_ms'), 1)} "
            f"| {_fmt(lv['encoder_batch'], 2)} | {lv['peak_rss_mb']:.0f} "
            f"| {_fmt(lv['peak_gpu_mb'], 0)} | {lv['errors']} | {lv.get('given_up', 0)} |"
        )
    return lines


def _time_split_md(result: dict) -> list[str]:
    """Per level, a request's mean latency split into queue, preprocess, encoder and the rest."""
    lines = [
        "",
        "## Where a request's time goes",
        "",
        "Per request, mean ms. Client: the load generator's latency. Queue, preprocess and encoder: Triton's "
        "statistics API (queue wait at the encoder; each model's own compute, which in a batch is the "
        "batch's). Rest: the client latency less those, i.e. transport, (de)serialisation, the preprocessing "
        "queue and ensemble scheduling; negative where batches are large, because every request of a batch is "
        "attributed the whole batch's compute.",
        "",
        "| config | protocol | concurrency | client | queue | preprocess | encoder | rest | rest share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in result["levels"]:
        rest = lv["mean_ms"] - lv["queue_ms"] - lv["preprocess_ms"] - lv["encoder_ms"]
        lines.append(
            f"| {lv['config']} | {lv['protocol']} | {lv['concurrency']} | {lv['mean_ms']:.1f} | {lv['queue_ms']:.1f} "
            f"| {lv['preprocess_ms']:.1f} | {lv['encoder_ms']:.1f} | {rest:.1f} | {rest / lv['mean_ms']:.1%} |"
        )
    return lines


def _gpu_name() -> str | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"], capture_output=True, text=True
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/medium"))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--configs", default="", help="comma-separated; default: native and fixed448, each precision")
    parser.add_argument("--protocols", default="grpc")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=32, help="per level (at least 4 x concurrency)")
    parser.add_argument("--images", type=int, default=16, help="distinct images of the mixed workload")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime / torch threads (0: all cores)")
    parser.add_argument("--paired-rounds", type=int, default=16, help="alternated calls for the overhead target")
    parser.add_argument(
        "--min-level-s",
        type=float,
        default=40.0,
        help="requests per level at least this many seconds at the warmup's rate (default: %(default)s)",
    )
    parser.add_argument("--sweeps", type=int, default=2, help="passes over the levels, every other one backward, "
                        "averaged per level (default: %(default)s)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="two levels, few requests: seconds on tiny")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-serving"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.concurrency, args.requests, args.images, args.paired_rounds, args.min_level_s = "1,4", 8, 8, 4, 0
        args.sweeps = 1
    args.device = detect_device() if args.device == "auto" else args.device
    gpu = args.device == "gpu"
    args.protocols = [p for p in args.protocols.split(",") if p]
    configs = [c for c in (args.configs.split(",") if args.configs else DEFAULT_CONFIGS[args.device]) if c]
    unknown = sorted(set(configs) - set(CONFIGS[args.device]))
    if unknown:
        parser.error(f"unknown configs {unknown} for a {args.device} host; choose from {sorted(CONFIGS[args.device])}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    levels_list = [int(c) for c in args.concurrency.split(",")]
    manifest = json.loads((args.artifacts / "manifest.json").read_text())
    data = payloads(args.images)
    threads = args.threads or os.cpu_count() or 1

    runs = [in_process(args.artifacts, data, threads, gpu)]
    levels: list[Level] = []
    paired = None
    for name in configs:
        config_levels, config_paired = run_config(name, args, data, levels_list)
        levels += config_levels
        paired = config_paired or paired
    runs.append(in_process(args.artifacts, data, threads, gpu))
    baselines = averaged(runs)
    for name in baselines:
        before, after = runs[0][name]["images_per_s"], runs[-1][name]["images_per_s"]
        print(f"in-process {name:<26} {before:7.2f} -> {after:7.2f} img/s", flush=True)
    shares = None if gpu else int8_breakdown(args.artifacts, data, threads)
    suffix = f"gpu-{(_gpu_name() or 'unknown').split()[-1].lower()}" if gpu else f"cpu{os.cpu_count()}"
    tag = f"serving-{Path(manifest['checkpoint']).name}-mixed-{suffix}"
    result = {
        "command": "python -m bench.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": _gpu_name() if gpu else None,
                    "python": platform.python_version()},
        "device": args.device,
        "threads": threads,
        "checkpoint": manifest["checkpoint"],
        "parameters": manifest["parameters"],
        "random_weights": manifest.get("random_weights", False),
        "max_visual_tokens": manifest["max_visual_tokens"],
        "workload": workload_summary(args.images),
        "levels": [asdict(lv) for lv in levels],
        "comparison": comparison(levels, baselines),
        "in_process": baselines,
        "in_process_runs": runs,
        "int8_breakdown": shares,
        "int8_speedup_ceiling": speedup_ceiling(shares, baselines) if shares else None,
        "paired_overhead": paired,
        "paired_rounds": args.paired_rounds,
        "targets": targets(levels, baselines, args.device, paired),
        "median_request_bytes": statistics.median(len(d) for d in data),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / tag
    prefix.with_suffix(".json").write_text(json.dumps(result, indent=2))
    figures = plots(levels, prefix)
    prefix.with_suffix(".md").write_text(report(result, figures))
    print(f"\nreport: {prefix.with_suffix('.md')}")
    for t in result["targets"]:
        state = "----" if t["met"] is None else "MET " if t["met"] else "MISS"
        shown = _fmt(t["measured"]) or "not measured (" + t["not_measured"] + ")"
        print(f"  {state} {t['target']}: {shown} (goal {t['goal']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
