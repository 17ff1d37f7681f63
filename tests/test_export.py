"""`make export` on the tiny checkpoint: every variant written, checked and validated at native resolution."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.sample_images import keepa_chart, product_image
from export.spec import DEFAULT_VARIANTS, FORBIDDEN_OPS, GRAPHS, VARIANTS
from export.validate import per_token_cosine
from model_repository.colqwen2_serving.feeds import vision_feed
from model_repository.colqwen2_serving.grid import PixelLimits
from model_repository.colqwen2_serving.imaging import native
from model_repository.colqwen2_serving.preprocess import image_item

GRAPH_NAMES = tuple(spec.name for spec in GRAPHS)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_every_variant_and_graph_is_written(tiny_artifacts):
    for variant in DEFAULT_VARIANTS:
        for name in GRAPH_NAMES:
            assert (tiny_artifacts / variant / f"{name}.onnx").is_file()
            assert "ONNX Model" in (tiny_artifacts / variant / f"{name}.polygraphy.txt").read_text()
    assert (tiny_artifacts / "processor" / "tokenizer.json").is_file()
    assert not tiny_artifacts.with_name("tiny.partial").exists()


def test_report_meets_every_threshold_on_images_of_every_size(tiny_artifacts):
    report = json.loads((tiny_artifacts / "validation.json").read_text())
    checks = report["checks"]
    assert {(c["variant"], c["encoder"]) for c in checks} == {
        (v, e) for v in DEFAULT_VARIANTS for e in ("image", "query")
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
            gated = {name: a for name, a in c["agreements"].items() if a["gated"]}
            assert gated, c  # the quantized forms are held to fp32 on each encoder's own job
            assert all(a["value"] >= tol.top1_agreement and a["decisive"] >= 3 for a in gated.values()), c
    int8_query = next(c for c in checks if (c["variant"], c["encoder"]) == ("int8", "query"))
    assert int8_query["agreements"]["query side"]["gated"] and not int8_query["agreements"]["text"]["gated"]
    meta = report["meta"]
    kinds = set(meta["image_kinds"])
    assert {"keepa_chart", "product_image", "grayscale", "rgba", "extreme_aspect", "thumbnail", "odd_size"} <= kinds
    areas = [w * h for w, h in meta["image_sizes"]]
    assert min(areas) < meta["min_pixels"] and max(areas) > meta["max_pixels"]  # both limits exercised
    assert len(set(meta["image_vectors"])) >= 10  # native resolution: a vector count per grid
    table = (tiny_artifacts / "validation.md").read_text()
    assert table.count("| pass |") == len(checks)


def test_graphs_are_tensorrt_ready_with_named_axes(tiny_artifacts):
    for path in tiny_artifacts.glob("*/*.onnx"):
        model = onnx.load(str(path))
        ops = {n.op_type for n in model.graph.node}
        assert not ops & FORBIDDEN_OPS and "GatherND" not in ops, path
        assert all(n.domain in ("", "ai.onnx") for n in model.graph.node), path
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        spec = next(s for s in GRAPHS if s.name == path.stem)
        for value in [*model.graph.input, *model.graph.output]:
            dims = value.type.tensor_type.shape.dim
            for axis, name in spec.axes[value.name].items():
                assert dims[axis].dim_param == name, (path, value.name, axis)


def test_int8_forms(tiny_artifacts):
    for name in GRAPH_NAMES:
        qdq = {n.op_type for n in onnx.load(str(tiny_artifacts / "int8" / f"{name}.onnx")).graph.node}
        dyn = {n.op_type for n in onnx.load(str(tiny_artifacts / "int8_dynamic" / f"{name}.onnx")).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= qdq and "MatMulInteger" not in qdq
        assert "MatMulInteger" in dyn


@pytest.mark.parametrize("variant", DEFAULT_VARIANTS)
def test_an_image_padded_among_larger_ones_gets_what_it_gets_alone(tiny_artifacts, variant):
    limits = PixelLimits.from_processor_dir(tiny_artifacts / "processor")
    session = _session(tiny_artifacts / variant / "vision_encoder.onnx")
    images = [product_image(1, 1500, 1500), keepa_chart(2, 500, 200), product_image(3, 300, 900)]
    items = [image_item(native(image, limits)) for image in images]
    together = session.run(None, vision_feed(items))[0]
    alone = session.run(None, vision_feed(items[1:2]))[0]
    n = items[1].grid[0] * items[1].grid[1]
    assert together.shape[0] == 3 and together.shape[1] == items[0].n_patches // 4
    if variant in ("fp32", "fp16"):
        assert np.abs(together[1, :n] - alone[0, :n]).max() < 1e-5 * np.abs(alone).max()
    else:  # int8 activations are quantized with scales taken from the whole batch: equal in direction
        cos = per_token_cosine(together[1, :n], alone[0, :n])
        assert cos.min() >= 0.995, cos.min()


def test_manifest_describes_the_checkpoint_and_its_limits(tiny_artifacts):
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert (manifest["min_pixels"], manifest["max_pixels"], manifest["max_visual_tokens"]) == (3136, 602112, 768)
    assert manifest["embedding_dim"] == 128 and manifest["hidden_size"] == 64
    assert set(manifest["variants"]) == set(DEFAULT_VARIANTS)
    assert manifest["random_weights"] is True
