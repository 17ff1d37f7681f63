"""The serving benchmark's smoke run on the tiny export, so the harness never rots."""

from __future__ import annotations

import json

import pytest

from bench.serving import main


def test_serving_benchmark_smoke(tiny_artifacts, tmp_path):
    out = tmp_path / "results"
    args = ["--artifacts", str(tiny_artifacts), "--smoke", "--configs", "fp32,int8", "--protocols", "grpc"]
    assert main([*args, "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    result = json.loads(next(out.glob("serving-*.json")).read_text())
    assert {(lv["config"], lv["concurrency"]) for lv in result["levels"]} == {
        ("fp32", 1), ("fp32", 4), ("int8", 1), ("int8", 4)
    }  # fmt: skip
    assert all(lv["errors"] == 0 and lv["images_per_s"] > 0 and lv["peak_rss_mb"] > 0 for lv in result["levels"])
    # The statistics API saw the encoder execute: at most 4 images per execution at 4 in flight.
    assert all(1 <= lv["mean_batch"] <= lv["concurrency"] for lv in result["levels"])
    # Server-side time per request: the encoder and preprocessing computed, within the client's latency.
    assert all(0 < lv["encoder_ms"] and 0 < lv["preprocess_ms"] for lv in result["levels"])
    assert all(lv["queue_ms"] + lv["preprocess_ms"] + lv["encoder_ms"] < lv["mean_ms"] for lv in result["levels"])
    assert all(len(lv["latencies_ms"]) == lv["requests"] for lv in result["levels"])
    assert all(lv["peak_gpu_mb"] is None for lv in result["levels"])  # a CPU host measures no GPU memory
    assert len(result["in_process_runs"]) == 2  # before and after the sweep
    assert set(result["in_process"]) >= {"preprocess", "onnxruntime fp32", "colpali-engine pytorch"}
    shares = result["int8_breakdown"]
    assert set(shares) == {"int8 matmuls", "float32 attention", "other"} and abs(sum(shares.values()) - 1) < 1e-6
    assert result["int8_speedup_ceiling"] > 0
    paired = result["paired_overhead"]
    assert paired["triton_ms"] > 0 and paired["in_process_ms"] > 0
    assert result["targets"][1]["measured"] == paired["overhead"]
    # The CPU-host targets are measured; the GPU-host ones are listed as not measured, never invented.
    cpu_targets, gpu_targets = result["targets"][:3], result["targets"][3:]
    assert all(t["met"] is not None and t["measured"] is not None for t in cpu_targets)
    assert len(gpu_targets) == 4 and all(t["met"] is None and t["measured"] is None for t in gpu_targets)
    report = next(out.glob("serving-*.md")).read_text()
    assert "## Targets" in report and "not measured: needs a GPU host" in report
    assert (
        "## Where a request's time goes" in report
        and "## Where the int8 encoder's time goes" in report
        and len(list(out.glob("*.png"))) == 3
    )


def test_unknown_config_is_refused(tiny_artifacts, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--artifacts", str(tiny_artifacts), "--device", "cpu", "--configs", "fp16-no-dynamic-batching"])
    assert exit_info.value.code == 2
    assert "unknown configs ['fp16-no-dynamic-batching'] for a cpu host" in capsys.readouterr().err
