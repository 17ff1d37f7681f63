"""The serving benchmark's smoke run on the tiny export, so the harness never rots."""

from __future__ import annotations

import json

import pytest

from bench.serving import main


def test_serving_benchmark_smoke(tiny_artifacts, tmp_path):
    out = tmp_path / "results"
    args = ["--artifacts", str(tiny_artifacts), "--smoke", "--configs", "native-fp32,native-int8,fixed448-fp32"]
    assert main([*args, "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    result = json.loads(next(out.glob("serving-*.json")).read_text())
    assert {(lv["config"], lv["concurrency"]) for lv in result["levels"]} == {
        (c, n) for c in ("native-fp32", "native-int8", "fixed448-fp32") for n in (1, 4)
    }
    levels = result["levels"]
    assert all(lv["errors"] == 0 and lv["images_per_s"] > 0 and lv["peak_rss_mb"] > 0 for lv in levels)
    # Native resolution embeds the workload's photos on larger grids than 448 x 448 (271 vectors each).
    rate = {lv["config"]: lv["vectors_per_s"] / lv["images_per_s"] for lv in levels if lv["concurrency"] == 4}
    assert rate["fixed448-fp32"] == pytest.approx(271) and rate["native-fp32"] > 271
    # The statistics API saw the encoder execute: at most 4 requests per execution at 4 in flight.
    assert all(1 <= lv["encoder_batch"] <= lv["concurrency"] for lv in levels)
    # Server-side time per request: preprocessing and the encoder computed, within the client's latency.
    assert all(0 < lv["encoder_ms"] and 0 < lv["preprocess_ms"] for lv in levels)
    # (Each request of a batch is attributed the whole batch's compute, so the parts can add up to more than
    # the client's latency at 4 in flight; the encoder's own part cannot.)
    assert all(lv["queue_ms"] >= 0 and lv["encoder_ms"] < lv["mean_ms"] for lv in levels)
    assert all(len(lv["latencies_ms"]) == lv["requests"] for lv in levels)  # every request served
    assert all(lv["given_up"] == 0 and lv["admission_ms"] == 10_000 for lv in levels)
    assert all(lv["peak_gpu_mb"] is None for lv in levels)  # a CPU host measures no GPU memory
    assert len(result["in_process_runs"]) == 2  # before and after the sweep
    assert set(result["in_process"]) >= {"preprocess", "onnxruntime fp32", "colpali-engine pytorch"}
    runtimes = [row["runtime"] for row in result["comparison"]]
    assert "Triton native-fp32" in runtimes and "Triton fixed448-fp32" in runtimes
    assert "in-process colpali-engine pytorch" in runtimes
    shares = result["int8_breakdown"]
    assert set(shares) == {"int8 matmuls", "float32 attention", "other"} and abs(sum(shares.values()) - 1) < 1e-6
    assert result["int8_speedup_ceiling"] > 0
    paired = result["paired_overhead"]
    assert paired["triton_ms"] > 0 and paired["in_process_ms"] > 0
    assert result["targets"][1]["measured"] == paired["overhead"]
    # The CPU-host targets are measured; the GPU-host ones are listed as not measured, never invented.
    cpu_targets, gpu_targets = result["targets"][:4], result["targets"][4:8]
    assert all(t["met"] is not None and t["measured"] is not None for t in cpu_targets)
    assert len(gpu_targets) == 4 and all(t["met"] is None and t["measured"] is None for t in gpu_targets)
    # overload (issue 25): smoke levels stop at 4 in flight, so the goodput rows say so; nothing was lost
    overload = {t["target"]: t for t in result["targets"][8:]}
    goodput = (
        "native-fp32: goodput at 16 and 64 in flight (the lower) vs its best level, while in flight, each level the "
        "mean of its sweeps"
    )
    assert overload[goodput]["not_measured"]
    assert all(0 < lv["window_images_per_s"] for lv in levels)
    assert overload["busy refusals with 4 in flight (a single user's batch)"]["measured"] == 0
    lost = overload["requests without an answer (served, failed or given up)"]
    assert lost["measured"] == 0 and lost["met"]
    report = next(out.glob("serving-*.md")).read_text()
    assert "## Targets" in report and "not measured: needs a GPU host" in report
    assert "## Native against fixed 448 and against colpali-engine in-process" in report
    assert (
        "## Where a request's time goes" in report
        and "## Where the int8 encoders' time goes" in report
        and len(list(out.glob("*.png"))) == 3
    )


def test_unknown_config_is_refused(tiny_artifacts, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--artifacts", str(tiny_artifacts), "--device", "cpu", "--configs", "native-fp16-no-dynamic-batching"])
    assert exit_info.value.code == 2
    assert "unknown configs ['native-fp16-no-dynamic-batching'] for a cpu host" in capsys.readouterr().err


def _fake_nvidia_smi(folder, apps: str, total: str) -> None:
    script = folder / "nvidia-smi"
    script.write_text(
        f'#!/bin/sh\ncase "$1" in --query-compute-apps=*) printf "{apps}" ;; --query-gpu=*) printf "{total}" ;; esac\n'
    )
    script.chmod(0o755)


def test_gpu_memory_counts_the_server_processes_only(tmp_path, monkeypatch):
    # No GPU here: a stand-in nvidia-smi prints what the real one prints, to check the parsing.
    from bench.load import gpu_memory_used_mb

    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    _fake_nvidia_smi(tmp_path, "101, 3000\\n102, 1500\\n999, 8000\\n", "12500\\n")
    assert gpu_memory_used_mb([101, 102, 103]) == 4500.0  # the benchmark's own 8000 MiB is not the server's
    _fake_nvidia_smi(tmp_path, "", "12500\\n")  # processes not visible (a container): the whole GPU
    assert gpu_memory_used_mb([101]) == 12500.0
    monkeypatch.setenv("PATH", "/nonexistent")
    assert gpu_memory_used_mb([101]) is None


def test_gpu_targets_from_levels():
    # The GPU rows are computed from levels as a GPU host would record them (no GPU here to run one).
    from bench.serving import Level, targets

    def level(config: str, concurrency: int, rate: float, p50: float, gpu_mb: float) -> Level:
        ms = dict(p50_ms=p50, p95_ms=p50, p99_ms=p50, mean_ms=p50, encoder_ms=1.0, preprocess_ms=1.0, queue_ms=0.0)
        return Level(config, "grpc", concurrency, 64, images_per_s=rate, vectors_per_s=rate * 400,
                     encoder_batch=1.0, peak_rss_mb=900.0, peak_gpu_mb=gpu_mb, errors=0,
                     latencies_ms=[], **ms)  # fmt: skip

    levels = [
        level("native-fp16", 1, 80.0, 12.5, 5000.0),
        level("native-fp16", 16, 190.0, 80.0, 5200.0),
        level("native-fp16", 64, 230.0, 270.0, 6100.0),
        level("native-int8", 64, 260.0, 240.0, 4100.0),
    ]
    rows = {t["target"]: t for t in targets(levels, {}, "gpu", None)}
    throughput = rows["fp16 images/s with 32 or more in flight (batches up to 32)"]
    assert throughput["measured"] == 230.0 and throughput["met"]  # 190 at 16 in flight does not count
    assert rows["fp16 single-image p50 latency (1 in flight)"]["measured"] == 12.5
    assert rows["fp16 peak GPU memory"]["measured"] == 6100.0 and rows["fp16 peak GPU memory"]["met"]
    assert rows["int8 peak GPU memory"]["measured"] == 4100.0 and not rows["int8 peak GPU memory"]["met"]
    cpu_rows = [t for t in rows.values() if t["not_measured"] == "a CPU-host target"]
    assert len(cpu_rows) == 3 and all(t["met"] is None for t in cpu_rows)


def test_goodput_averages_each_level_over_sweeps_forward_and_back():
    """Two sweeps run 1, 4, 16, 64, 64, 16, 4, 1, so a drift of the machine weighs on every level alike; goodput
    compares the levels' means, not one lucky or unlucky pass."""
    from bench.serving import Level, overload_targets, sweep_order

    assert [c for _, c in sweep_order([1, 4, 16, 64], 2)] == [1, 4, 16, 64, 64, 16, 4, 1]
    assert sweep_order([1, 4], 3) == [(0, 1), (0, 4), (1, 4), (1, 1), (2, 1), (2, 4)]

    def level(concurrency: int, rate: float, sweep: int) -> Level:
        ms = dict(p50_ms=1.0, p95_ms=1.0, p99_ms=1.0, mean_ms=1.0, encoder_ms=1.0, preprocess_ms=1.0, queue_ms=0.0)
        return Level("fixed448-fp32", "grpc", concurrency, 64, images_per_s=rate, vectors_per_s=rate,
                     encoder_batch=1.0, peak_rss_mb=1.0, peak_gpu_mb=None, errors=0, latencies_ms=[1.0] * 64,
                     window_images_per_s=rate, sweep=sweep, **ms)  # fmt: skip

    # the first pass's 16 is unlucky (3.48 of 3.91), the second pass's is not: the mean is what counts
    levels = [level(c, r, 0) for c, r in ((1, 3.91), (4, 3.79), (16, 3.48), (64, 3.63))]
    levels += [level(c, r, 1) for c, r in ((64, 3.80), (16, 3.95), (4, 3.86), (1, 3.84))]
    rows = {t["target"].split(":")[0]: t for t in overload_targets(levels)}
    goodput = rows["fixed448-fp32"]
    assert goodput["measured"] == pytest.approx(((3.48 + 3.95) / 2) / ((3.91 + 3.84) / 2))  # 16's mean / 1's
    assert goodput["met"]
    assert overload_targets(levels[:4])[0]["met"] is False  # the first pass alone misses


def test_rss_is_read_from_the_kernels_counters_and_equals_smaps():
    """The peak-memory sampler reads statm (constant time), which agrees with smaps' Rss (a page-table walk)."""
    import os
    from pathlib import Path

    from bench.load import rss_bytes

    ballast = bytearray(64 << 20)  # 64 MiB resident, so that the figures are not all interpreter
    ballast[::4096] = b"\1" * len(ballast[::4096])
    rollup = Path(f"/proc/{os.getpid()}/smaps_rollup").read_text()
    smaps = 1024 * next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Rss:"))
    assert rss_bytes([os.getpid()]) == pytest.approx(smaps, rel=0.02)
    assert rss_bytes([os.getpid(), 2**22 + 12345]) == pytest.approx(smaps, rel=0.02)  # a gone process counts 0
    del ballast
