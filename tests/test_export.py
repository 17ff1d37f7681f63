"""`make export` on the tiny checkpoint: every variant written, checked and validated."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.spec import DEFAULT_VARIANTS, FORBIDDEN_OPS, VARIANTS


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_variant_and_encoder_is_written(tiny_artifacts):
    for variant in DEFAULT_VARIANTS:
        for name in ("image_encoder", "query_encoder"):
            assert (tiny_artifacts / variant / f"{name}.onnx").is_file()
            assert "ONNX Model" in (tiny_artifacts / variant / f"{name}.polygraphy.txt").read_text()
    assert (tiny_artifacts / "processor" / "tokenizer.json").is_file()
    assert not tiny_artifacts.with_name("tiny.partial").exists()


def test_report_meets_every_threshold(tiny_artifacts):
    report = json.loads((tiny_artifacts / "validation.json").read_text())
    checks = report["checks"]
    assert {(c["variant"], c["encoder"]) for c in checks} == {
        (v, e) for v in DEFAULT_VARIANTS for e in ("image_encoder", "query_encoder")
    }
    for c in checks:
        tol = VARIANTS[c["variant"]].tolerance
        assert c["passed"] and not c["has_nan"], c
        if tol.max_abs is not None:
            assert c["max_abs"] <= tol.max_abs
        if tol.cosine_mean is not None:
            assert c["cosine_mean"] >= tol.cosine_mean
        if tol.cosine_min is not None:
            assert c["cosine_min"] >= tol.cosine_min
        if tol.top1_agreement is not None:
            assert c["top1_agreement"] >= tol.top1_agreement and c["decisive_queries"] >= 3
    kinds = set(report["meta"]["image_kinds"])
    assert {"keepa_chart", "product_image", "grayscale", "rgba", "extreme_aspect"} <= kinds
    table = (tiny_artifacts / "validation.md").read_text()
    assert table.count("| pass |") == len(checks)


def test_graphs_are_tensorrt_ready(tiny_artifacts):
    for path in tiny_artifacts.glob("*/*.onnx"):
        model = onnx.load(str(path))
        ops = {n.op_type for n in model.graph.node}
        assert not ops & FORBIDDEN_OPS, path
        assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), path
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_int8_forms(tiny_artifacts):
    qdq = {n.op_type for n in onnx.load(str(tiny_artifacts / "int8" / "image_encoder.onnx")).graph.node}
    dyn = {n.op_type for n in onnx.load(str(tiny_artifacts / "int8_dynamic" / "image_encoder.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= qdq and "MatMulInteger" not in qdq
    assert "MatMulInteger" in dyn


@pytest.mark.parametrize("variant", DEFAULT_VARIANTS)
def test_batch_axis_is_dynamic_and_rows_independent(tiny_artifacts, variant):
    session = _session(tiny_artifacts / variant / "image_encoder.onnx")
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (5, 448, 448, 3), dtype=np.uint8)
    together = session.run(None, {"pixel_values": batch})[0]
    alone = session.run(None, {"pixel_values": batch[2:3]})[0]
    assert together.shape == (5, 271, 128) and together.dtype == np.float32
    tol = 1e-5 if variant in ("fp32", "fp16") else 2e-2  # dynamic int8 scales per batch
    assert np.abs(together[2] - alone[0]).max() < tol


def test_query_encoder_dynamic_sequence(tiny_artifacts, tiny_reference):
    session = _session(tiny_artifacts / "fp32" / "query_encoder.onnx")
    for texts in (["a"], ["price history", "a much longer query about the amazon price of a red kettle"]):
        batch = tiny_reference.processor.process_queries(texts)
        ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
        out = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        assert out.shape == (*ids.shape, 128)
        assert np.all(out[mask == 0] == 0)
        assert np.allclose(np.linalg.norm(out[mask == 1], axis=-1), 1, atol=1e-5)


def test_manifest_describes_the_artifacts(tiny_artifacts):
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert manifest["image_size"] == 448 and manifest["visual_tokens"] == 256
    assert manifest["image_sequence_length"] == 271 and manifest["embedding_dim"] == 128
    assert set(manifest["variants"]) == set(DEFAULT_VARIANTS)
