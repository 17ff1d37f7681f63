"""bench.memory: the weight-bytes rules against a real export, the liveness simulation on a graph small enough to
work out by hand, and the activation peaks of the tiny export."""

from __future__ import annotations

import json
import math
import re
import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bench.memory.activations import (
    ActivationModel,
    ShapeInferenceError,
    activation_peak,
    execution_order,
    graph_skeleton,
    infer_shapes,
    simulate,
    text_shapes,
    vision_shapes,
)
from bench.memory.budgets import (
    DEPLOYMENTS,
    LIMITS,
    gpu_budgets,
    image_tokens,
    largest_call,
    recommend,
    scenarios,
    text_call_peak,
)
from bench.memory.model import GRAPH_NAMES, graph_modules
from bench.memory.weights import GraphWeights, initializer_bytes, real_weights, trace_graph_weights, weight_bytes
from model_repository.budgets import CAP_TOKENS, GPU_MEMORY, SESSION_BUDGETS, GpuMemory, gpu_call_budgets
from model_repository.colqwen2_serving.prompts import PROMPT_EXTRA_TOKENS

VARIANTS = ("fp32", "fp16", "int8", "int8_dynamic")
# Shape vectors and scalars the exporter and the quantizer's preprocessing add: graph constants, not parameters.
_CONSTANT = re.compile(r"^(val_\d+|const_\w+|scalar_tensor\w*)$")


def _bytes(init: onnx.TensorProto) -> int:
    return math.prod(init.dims) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize


def _split_initializers(path: Path) -> tuple[int, int]:
    """(bytes of the graph constants, bytes of everything else) among the file's initializers."""
    model = onnx.load(str(path), load_external_data=False)
    constants = [i for i in model.graph.initializer if _CONSTANT.match(i.name) and math.prod(i.dims) <= 16]
    total = sum(_bytes(i) for i in model.graph.initializer)
    return sum(_bytes(i) for i in constants), total


@pytest.fixture(scope="module")
def tiny_weights(tiny_reference) -> dict[str, GraphWeights]:
    graphs = graph_modules(tiny_reference.model, tiny_reference.processor)
    return {name: trace_graph_weights(graph) for name, graph in graphs.items()}


# --- weight bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_weight_bytes_match_the_tiny_export(tiny_artifacts: Path, tiny_weights, graph: str, variant: str) -> None:
    """The rules predict every initializer byte of the real export but the graph's own constants (shape vectors
    and scalars, under 400 B: the whole gap, well under 1 %). The exporter merges identical small initializers
    (the random tiny checkpoint's zero biases and unit norms); the prediction models that from the values."""
    path = tiny_artifacts / variant / f"{graph}.onnx"
    constants, actual = _split_initializers(path)
    predicted = weight_bytes(tiny_weights[graph], variant)["total"]
    assert initializer_bytes(path) == actual
    assert predicted + constants == actual, (predicted, constants, actual)
    assert abs(actual - predicted) <= 0.01 * actual
    assert constants < 400  # a few shape vectors and scalars


def _table_elements(weights: GraphWeights) -> int:
    (table,) = [t for t in weights.tensors if t.role == "embedding"]
    return table.numel


@pytest.mark.parametrize("variant", ["int8", "int8_dynamic"])
def test_half_embedding_rule(tiny_artifacts: Path, tiny_weights, tmp_path: Path, variant: str) -> None:
    """The tiny vocabulary is below the float16 threshold; with the threshold at 1 the table is halved, as
    `half_embeddings` does to the real 151936 x 1536 table."""
    from export.quantize import half_embeddings

    path = tmp_path / "text_encoder.onnx"
    shutil.copy(tiny_artifacts / variant / "text_encoder.onnx", path)
    assert half_embeddings(path, external=False, min_elements=1) == ["lm.embed_tokens.weight"]
    constants, actual = _split_initializers(path)
    rows = weight_bytes(tiny_weights["text_encoder"], variant, embedding_min_elements=1)
    assert rows["embedding"] == _table_elements(tiny_weights["text_encoder"]) * 2
    assert rows["total"] + constants == actual
    unchanged = weight_bytes(tiny_weights["text_encoder"], variant)
    assert unchanged["embedding"] == 2 * rows["embedding"]


def test_tiny_graphs_read_what_they_should(tiny_weights) -> None:
    """The Conv3d patch kernel and the towers' own rotary buffers are not read (the graphs hold their own)."""
    vision = {t.name: t.role for t in tiny_weights["vision_encoder"].tensors}
    assert vision["patch_embed.weight"] == "matmul"
    assert "visual.patch_embed.proj.weight" not in vision
    assert not any("rotary" in name for name in vision)
    text = {t.name: t.role for t in tiny_weights["text_encoder"].tensors}
    assert text["lm.embed_tokens.weight"] == "embedding"
    assert text["proj.bias"] == "bias"
    # q, k and v share their input, as do gate and up: 7 weight matmuls per layer read 4 activations
    assert tiny_weights["text_encoder"].linear_calls == 2 * 7 + 1
    assert tiny_weights["text_encoder"].linear_inputs == 2 * 4 + 1


def test_real_size_weights_from_the_meta_model() -> None:
    weights = real_weights()
    assert weights["parameters"] == 2_209_182_336
    for graph in GRAPH_NAMES:
        assert weights["bytes"]["fp32"][graph]["total"] == 4 * weights["graph_parameters"][graph]
    text = weights["bytes"]["int8"]["text_encoder"]
    assert text["embedding"] == 151936 * 1536 * 2  # float16 above the threshold
    assert weights["bytes"]["fp16"]["text_encoder"]["embedding"] == 151936 * 1536 * 2
    assert weights["bytes"]["int8_dynamic"]["vision_encoder"]["quantization parameters"] == 5 * (32 * 4 + 1 + 2)


# --- the liveness simulation on hand-made graphs -----------------------------------------------


def _hand_graph() -> onnx.ModelProto:
    """x [10, 100] float32 (4000 B). Worked by hand in test_simulation_by_hand."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="n1"),  # a 4000
        helper.make_node("Reshape", ["a", "s"], ["b"], name="n2"),  # b: a view of a
        helper.make_node("Add", ["b", "w"], ["c"], name="n3"),  # c 4000 (w is a weight)
        helper.make_node("Cast", ["c"], ["d"], to=TensorProto.FLOAT16, name="n4"),  # d 2000
        helper.make_node("Mul", ["a", "x"], ["e"], name="n5"),  # e 4000
        helper.make_node("Reshape", ["e", "s"], ["f"], name="n6"),  # f: a view of e
        helper.make_node("Cast", ["f"], ["g"], to=TensorProto.FLOAT16, name="n7"),  # g 2000
        helper.make_node("Add", ["d", "g"], ["y"], name="n8"),  # y 2000
    ]
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 100])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        [
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "s"),
            numpy_helper.from_array(np.zeros(1000, dtype=np.float32), "w"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_simulation_by_hand(tmp_path: Path) -> None:
    """Views (x input 4000 live throughout):
    n1 +a 8000 | n2 b=view 8000 | n3 +c 12000 | n4 +d 14000 (peak), -c 10000 | n5 +e 14000, -a 10000 |
    n6 f=view | n7 +g 12000, -e 8000 | n8 +y 10000.
    Without views b and f are copies: n3 x+a+b+c = 16000 is the peak.
    With c fused away: n5 x+a+d+e = 14000 is reached first there."""
    path = tmp_path / "hand.onnx"
    onnx.save(_hand_graph(), str(path))
    skeleton = graph_skeleton(path)
    assert skeleton.inputs == ("x",) and {"s", "w"} <= skeleton.weights
    infos = infer_shapes(skeleton, {"x": (10, 100)})
    assert infos["b"].shape == (1000,) and infos["d"].dtype == "float16" and infos["y"].nbytes == 2000
    graph = skeleton.model.graph
    peak = simulate(graph, infos, skeleton.weights)
    assert (peak.bytes, peak.node) == (14000, "Cast n4")
    assert {name for name, *_ in peak.largest} == {"x", "a", "c", "d"}
    no_views = simulate(graph, infos, skeleton.weights, views=False)
    assert (no_views.bytes, no_views.node) == (16000, "Add n3")
    fused = simulate(graph, infos, skeleton.weights, free={"c"})
    assert (fused.bytes, fused.node) == (14000, "Mul n5")
    assert activation_peak(path, {"x": (10, 100)}) == 14000


def _dequantized_weight_graph() -> onnx.ModelProto:
    """A weight's DequantizeLinear listed first (as the QDQ quantizer writes it), used last. x [1000] float32.
    Run where it stands: n0 +wd 8000 | n1 +a 12000 | n2 +b (8000) 20000 (peak) ...
    Run before its consumer (ONNX Runtime's order): n1 +a 8000 | n2 +b 16000 (peak), -a 12000 |
    n3 c=view | n4 +m 16000, -b 8000 | n0 +wd 12000 | n5 +y 16000."""
    nodes = [
        helper.make_node("DequantizeLinear", ["w8", "scale"], ["wd"], name="n0"),  # wd 4000
        helper.make_node("Relu", ["x"], ["a"], name="n1"),  # a 4000
        helper.make_node("Concat", ["a", "a"], ["b"], axis=0, name="n2"),  # b 8000
        helper.make_node("Reshape", ["b", "s"], ["c"], name="n3"),  # c: a view of b, [2, 1000]
        helper.make_node("ReduceMax", ["c", "axes"], ["m"], keepdims=0, name="n4"),  # m 4000 (axes as an input)
        helper.make_node("Add", ["m", "wd"], ["y"], name="n5"),  # y 4000
    ]
    graph = helper.make_graph(
        nodes,
        "dq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.ones(1000, dtype=np.int8), "w8"),
            numpy_helper.from_array(np.array(0.5, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array([2, 1000], dtype=np.int64), "s"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_weight_only_nodes_run_before_their_consumer(tmp_path: Path) -> None:
    path = tmp_path / "dq.onnx"
    onnx.save(_dequantized_weight_graph(), str(path))
    skeleton = graph_skeleton(path)
    graph = skeleton.model.graph
    order = [n.name for n in execution_order(graph, skeleton.weights)]
    assert order == ["n1", "n2", "n3", "n4", "n0", "n5"]
    infos = infer_shapes(skeleton, {"x": (1000,)})
    assert infos["m"].shape == (1000,)  # ReduceMax with its axes as an input
    peak = simulate(graph, infos, skeleton.weights)
    assert (peak.bytes, peak.node) == (16000, "Concat n2")


def test_unknown_shapes_fail_loudly(tmp_path: Path) -> None:
    """NonZero's output length depends on the data: no concrete shape, so no peak."""
    graph = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["y"], name="n1")],
        "nz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
    )
    path = tmp_path / "nz.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ShapeInferenceError):
        infer_shapes(graph_skeleton(path), {"x": (8,)})
    with pytest.raises(ValueError, match="inputs"):
        infer_shapes(graph_skeleton(path), {"z": (8,)})


# --- the tiny export's graphs ----------------------------------------------------------------------


def _feeds(graph: str, batch: int, length: int, hidden: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if graph == "vision_encoder":
        positions = np.stack(np.meshgrid(np.arange(length // 4), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
        return {
            "patches": rng.integers(0, 256, (batch, length, 588), dtype=np.uint8),
            "patch_positions": np.broadcast_to(positions, (batch, length, 2)).astype(np.int64),
            "patch_mask": np.ones((batch, length), dtype=np.int64),
        }
    index = np.full((batch, length), -1, dtype=np.int64)
    index[:, 1:5] = np.arange(4 * batch).reshape(batch, 4)
    return {
        "input_ids": rng.integers(0, vocab, (batch, length), dtype=np.int64),
        "attention_mask": np.ones((batch, length), dtype=np.int64),
        "position_ids": np.broadcast_to(np.arange(length, dtype=np.int64), (3, batch, length)).copy(),
        "visual_features": rng.standard_normal((4 * batch, hidden), dtype=np.float32),
        "visual_index": index,
    }


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_inferred_shapes_are_the_ones_onnx_runtime_produces(tiny_artifacts: Path, graph: str, variant: str) -> None:
    """Every intermediate tensor of a real run has the shape and type the inference gave it."""
    import onnxruntime as ort

    path = tiny_artifacts / variant / f"{graph}.onnx"
    skeleton = graph_skeleton(path)
    feeds = _feeds(graph, 3, 24, 64, 600)
    infos = infer_shapes(skeleton, {name: value.shape for name, value in feeds.items()})
    model = onnx.load(str(path))
    names = [o for n in model.graph.node if n.op_type != "Constant" for o in n.output if o]
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_tensor_value_info(name, infos[name].elem_type, None) for name in names if name not in outputs
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    for name in names:
        assert got[name].shape == infos[name].shape, name
        assert str(got[name].dtype) == infos[name].dtype, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_activation_peaks_grow_with_the_batch(tiny_artifacts: Path, variant: str) -> None:
    vision = ActivationModel(tiny_artifacts / variant / "vision_encoder.onnx")
    text = ActivationModel(tiny_artifacts / variant / "text_encoder.onnx")
    for model, shapes in (
        (vision, lambda b, n: vision_shapes(b, 4 * n)),
        (text, lambda b, n: text_shapes(b, n, b * n, 64)),
    ):
        by_batch = [model.peak(shapes(b, 64)) for b in (1, 2, 4, 8)]
        assert by_batch[0] > 0
        assert all(a < b for a, b in pairwise(by_batch)), by_batch
        by_length = [model.peak(shapes(2, n)) for n in (16, 64, 256)]
        assert all(a < b for a, b in pairwise(by_length)), by_length
        unfused, fused = model.peaks(shapes(2, 256))
        assert 0 < fused.bytes <= unfused.bytes
    assert len(vision.fused) >= 2 * 4 and len(text.fused) >= 2 * 4  # a score chain per layer


def test_scenarios_follow_the_rendered_gpu_budgets() -> None:
    assert image_tokens(500, 200) == 7 * 18
    assert image_tokens(448, 448) == 16 * 16
    assert image_tokens(4000, 3000) <= CAP_TOKENS
    assert largest_call(8192, 32, 783) == 10
    assert largest_call(8192, 32, 32) == 32
    assert largest_call(100, 0, 783) == 1  # an item over the budget gets a call of its own
    fp16, int8 = gpu_budgets("fp16"), gpu_budgets("int8")
    assert (fp16["max_session_images"], fp16["max_session_sequences"]) == (2, 10)  # derived: items at the cap
    assert (int8["max_session_images"], int8["max_session_sequences"]) == (1, 2)
    calls = {s.name: s for s in scenarios(fp16)}
    vision = calls["GPU call budget: largest call"]
    assert (vision.batch, vision.length, vision.in_gpu_budget, vision.trt_box) == (2, 3072, True, True)
    box = calls["GPU TensorRT box"]
    assert (box.batch, box.length) == (10, 783)  # the box is the call budget: 10 prompts at the cap
    assert not calls["32 queries of 32 tokens"].in_gpu_budget  # 10 sequences per call at most
    assert not calls["32 images 448x448"].in_gpu_budget  # 32 x 1024 patches are over the 6144 budget
    small = {s.name: s for s in scenarios(int8)}["GPU call budget: largest call"]
    assert (small.batch, small.length) == (1, 3072)


def test_the_gpu_budgets_are_derived_from_the_recorded_run() -> None:
    """`model_repository.budgets` holds the weights and per-item peaks of the committed run, and the GPU budgets it
    derives from them are the ones that run checked."""
    record = json.loads((Path(__file__).parents[1] / "bench" / "results" / "memory-real.json").read_text())
    rows = {a["name"]: a for a in record["activations"]}
    for precision, variant in DEPLOYMENTS.items():
        measured = GpuMemory(
            limit=LIMITS[precision],
            weights=sum(record["weights"]["bytes"][variant][g]["total"] for g in GRAPH_NAMES),
            image_peak=rows["1 image at the cap"]["peak"][variant],
            prompt_peak=rows["1 image prompt at the cap"]["peak"][variant],
            overhead=record["overhead_per_process_bytes"],
        )
        assert measured == GPU_MEMORY[precision]
        assert measured.room == record["recommended_gpu_budgets"][precision]["unfused"]["room_bytes"]
        assert gpu_call_budgets(measured).items() <= SESSION_BUDGETS["gpu"][precision].items()
        assert gpu_budgets(precision) == record["gpu_budgets_today"][precision]


def test_recommend_finds_the_largest_budget_that_fits(tiny_artifacts: Path) -> None:
    vision = ActivationModel(tiny_artifacts / "fp32" / "vision_encoder.onnx")
    text = ActivationModel(tiny_artifacts / "fp32" / "text_encoder.onnx")
    prompt = CAP_TOKENS + PROMPT_EXTRA_TOKENS
    one = vision.peak(vision_shapes(1, 4 * CAP_TOKENS))
    room = one + text_call_peak(text, 64, 32, 3 * prompt)
    rec = recommend(vision, text, 64, room, 32, 8192)
    budgets = rec["budgets"]
    assert budgets["max_session_images"] == 1 and budgets["max_session_sequences"] == 32
    tokens = budgets["max_session_tokens"]
    assert tokens >= 3 * prompt
    assert one + text_call_peak(text, 64, 32, tokens) <= room
    assert one + text_call_peak(text, 64, 32, tokens + 1) > room
    nothing = recommend(vision, text, 64, 0, 32, 8192)
    assert nothing["max_visual_tokens"] == 0 and "budgets" not in nothing
