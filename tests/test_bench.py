"""The serving benchmark's smoke run on the tiny export, so the harness never rots."""

from __future__ import annotations

import json

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
    assert set(result["in_process"]) >= {"preprocess", "onnxruntime fp32", "colpali-engine pytorch"}
    assert len(result["targets"]) == 3 and all("met" in t for t in result["targets"])
    report = next(out.glob("serving-*.md")).read_text()
    assert "## Targets" in report and len(list(out.glob("*.png"))) == 2
