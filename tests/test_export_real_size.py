"""Export of a random checkpoint with Qwen2-VL-2B's shapes (2.2 B parameters). Opt-in: `make test-slow`.

Measured on the 2-core, 24 GiB build machine: 11 min 12 s for the whole test (export 558 s),
6.6 GB of fp16 graphs. The weights pass 2 GB, so the graphs carry external data.
"""

from __future__ import annotations

import json

import onnx
import pytest

pytestmark = pytest.mark.slow


def test_real_size_export_fp16(tmp_path_factory):
    from export.pipeline import ExportOptions, run_export
    from export.random_checkpoint import build_random_checkpoint

    checkpoint = build_random_checkpoint(tmp_path_factory.mktemp("real") / "real", "real")
    out = run_export(
        ExportOptions(
            checkpoint=str(checkpoint),
            out_dir=tmp_path_factory.mktemp("artifacts") / "real",
            variants=("fp16",),
            validation_images=1,
            edge_cases=False,
            polygraphy=True,
        )
    )
    report = json.loads((out / "validation.json").read_text())
    assert report["meta"]["parameters"] > 2.2e9
    assert all(c["passed"] for c in report["checks"])
    for name in ("vision_encoder", "text_encoder"):
        path = out / "fp16" / f"{name}.onnx"
        model = onnx.load(str(path), load_external_data=False)
        assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        assert path.stat().st_size < 2**31
