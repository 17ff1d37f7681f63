"""GPU memory of a real-size ColQwen2 deployment, computed from the graphs: weight bytes and activation peaks.

    python -m bench.memory                 # writes bench/results/memory-real.{json,md}

A deployment loads, per precision, one vision encoder and one text encoder, each in its own
Triton Python-backend process with its own ONNX Runtime session. Its GPU memory is
weights + the activations of the call in flight + the runtime's own (CUDA context, library
handles and workspaces). Nothing here needs a GPU or the 2.2 B-parameter export:

- Weight bytes, exact: the real-size ColQwen2 is built on the `meta` device (no memory), the two
  graph modules are built over it, a forward on meta tensors records which parameters and
  buffers each graph reads, and the export rules give each one's bytes per variant (fp32; fp16:
  every nn.Linear / nn.Embedding weight and bias in float16, norms float32; int8 QDQ and dynamic:
  weight matmuls int8 with float32 scales and int8 zero points, per channel (QDQ) or per tensor
  (dynamic), biases float32, a token embedding of 1e6 elements or more in float16). The rules are
  checked against a real export of the tiny checkpoint (tests/test_memory.py).
- Activation peaks, from the graph's tensor shapes: a slice of the real architecture (real widths,
  1 vision block, 1 text layer, a small vocabulary) is exported per variant with the exporter's own
  code; for concrete input shapes every tensor's shape comes from ONNX Runtime's symbolic shape
  inference, and execution is simulated in node order (a tensor is allocated when produced and
  freed after its last consumer; reshape-like ops are views; graph inputs are live throughout;
  weights are excluded). Per-layer activations do not depend on the layer count: the only
  tensors crossing layers are the residual stream and the tables computed once before the first
  layer (rotary cos/sin, the attention bias), so an L-layer graph peaks where the 1-layer slice
  does. The run checks this on a 2-layer slice.

The peak is an upper bound for an unfused runtime (ONNX Runtime's CPU and CUDA providers, whose
memory planner reuses a buffer only after its last consumer). TensorRT fuses attention and plans
its own memory, so it needs less; the `fused attention` column estimates that by not
materialising the attention score chain (QK^T through softmax), and is an estimate, not a bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
GB = 1_000_000_000
GIB = 1 << 30
LIMITS = {"fp16": 8 * GB, "int8": 4 * GB}  # the targets, GB = 1e9 bytes
# The GPU deployments: precision -> the artifact variant its encoders load (render.HOST_VARIANTS["gpu"]).
DEPLOYMENTS = {"fp16": "fp16", "int8": "int8"}
VARIANTS = ("fp32", "fp16", "int8", "int8_dynamic")
GRAPH_NAMES = ("vision_encoder", "text_encoder")

# Runtime memory outside the graph, per encoder process (an assumption, see OVERHEAD_NOTE).
DEFAULT_OVERHEAD_GIB = 0.5
OVERHEAD_NOTE = (
    "Runtime overhead per encoder process, outside weights and activations: the CUDA context (a few hundred MiB "
    "on an H100 with CUDA 12's lazy module loading; more with eager loading), cuBLAS/cuDNN handles and "
    "workspaces (cuBLAS takes 32 MiB per handle on Hopper), ONNX Runtime's CUDA provider and TensorRT's "
    "execution context. Not measured: no GPU has been lent to this project; pass --overhead-gib to change it."
)

# The published checkpoint (vidore/colqwen2-v1.0): at most 602112 pixels = 768 visual tokens per image.
CAP_TOKENS = 768
PROMPT_EXTRA_TOKENS = 15  # an image prompt is 15 tokens + the visual tokens (783 at the cap, as render.py computes)
QUERY_TOKENS = 512  # render.RenderOptions.max_query_tokens
# Qwen2-VL's image normalisation (OpenAI CLIP): only the buffers' sizes matter here.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# The exporter (onnx_ir DeduplicateInitializersPass, run by torch.onnx's optimize=True) merges
# identical initializers of at most this many elements.
DEDUPLICATE_MAX_ELEMENTS = 1024
QPARAM_BYTES = 4 + 1  # one float32 scale + one int8 zero point
VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
# Element-wise steps between QK^T and softmax(.)V that a fused attention kernel never writes out.
ATTENTION_CHAIN_OPS = frozenset({"Cast", "Softmax", "Add", "Mul", "Div", "Sub", "Where"})


# --------------------------------------------------------------------------------------------
# The model: the real-size architecture on the meta device, or a slice of it with random weights
# --------------------------------------------------------------------------------------------


def qwen2vl_config(size: str = "real", *, vocab_size: int | None = None, text_layers: int | None = None,
                   vision_depth: int | None = None):  # fmt: skip
    """The `Qwen2VLConfig` that `build_random_checkpoint` writes for `size`, optionally with fewer layers or
    another vocabulary. Special tokens get the ids the random checkpoint's tokenizer gives them (after the BPE)."""
    from transformers import Qwen2VLConfig

    from export.random_checkpoint import QWEN2_VL_SPECIAL_TOKENS, SIZES

    spec = SIZES[size]
    ids = {token: spec.bpe_vocab + i for i, token in enumerate(QWEN2_VL_SPECIAL_TOKENS)}
    vocab = vocab_size or spec.vocab_size or spec.bpe_vocab + len(QWEN2_VL_SPECIAL_TOKENS)
    if vocab <= max(ids.values()):
        raise ValueError(f"vocabulary {vocab} does not hold the special tokens (ids up to {max(ids.values())})")
    return Qwen2VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_intermediate,
            "num_hidden_layers": text_layers or spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "num_key_value_heads": spec.text_kv_heads,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": list(spec.mrope_section),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "tie_word_embeddings": False,
        },
        vision_config={
            "depth": vision_depth or spec.vision_depth,
            "embed_dim": spec.vision_embed,
            "hidden_size": spec.text_hidden,
            "num_heads": spec.vision_heads,
            "mlp_ratio": 4,
            "hidden_act": "quick_gelu",
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_model(config, device: str = "meta"):
    """`ColQwen2(config)` in eval mode; on `meta` it holds no memory (shapes only)."""
    import torch
    from colpali_engine.models import ColQwen2

    with torch.device(device):
        return ColQwen2(config).eval()


def stand_in_processor() -> SimpleNamespace:
    """What `VisionEncoderGraph` reads from a processor: the image normalisation."""
    return SimpleNamespace(image_processor=SimpleNamespace(image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD)))


def graph_modules(model, processor=None) -> dict[str, Any]:
    """The two exported graphs as torch modules over `model` (`export.graphs`)."""
    from export.graphs import TextEncoderGraph, VisionEncoderGraph

    return {
        "vision_encoder": VisionEncoderGraph(model, processor or stand_in_processor()).eval(),
        "text_encoder": TextEncoderGraph(model).eval(),
    }


# --------------------------------------------------------------------------------------------
# Weight bytes: which tensors a graph reads, and what the export rules store for each
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphTensor:
    """A parameter or buffer the graph's forward reads: an initializer of the exported file."""

    name: str
    role: str  # "matmul" (nn.Linear weight), "bias" (nn.Linear bias), "embedding" (nn.Embedding), "float" (other)
    shape: tuple[int, ...]
    itemsize: int  # bytes per element in the float32 graph
    data: Any = field(repr=False, compare=False)  # the torch tensor (on `meta` for the real size)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def exported_shape(self) -> tuple[int, ...]:
        """A Linear weight [out, in] is stored transposed, as the MatMul's [in, out]."""
        return self.shape[::-1] if self.role == "matmul" else self.shape


@dataclass(frozen=True)
class GraphWeights:
    """What one graph module reads at run time, found by tracing its forward."""

    tensors: tuple[GraphTensor, ...]
    linear_calls: int  # weight matmuls (one QDQ output scale each)
    linear_inputs: int  # distinct activations feeding them (one QDQ input scale each; q/k/v share one)

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors)


def _roles(graph) -> dict[int, tuple[str, str]]:
    from torch import nn

    roles: dict[int, tuple[str, str]] = {}
    for module_name, module in graph.named_modules():
        for attr, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor is None:
                continue
            if isinstance(module, nn.Linear):
                role = "matmul" if attr == "weight" else "bias"
            elif isinstance(module, nn.Embedding):
                role = "embedding"
            else:
                role = "float"
            roles.setdefault(id(tensor), (f"{module_name}.{attr}" if module_name else attr, role))
    return roles


def _example_inputs(graph) -> tuple:
    import torch

    from export.onnx_export import example_inputs

    device = next(graph.parameters()).device
    with torch.device("cpu"):
        inputs = example_inputs(graph)
    return tuple(t.to(device) for t in inputs)


def trace_graph_weights(graph) -> GraphWeights:
    """Run `graph`'s forward once (on meta tensors for a meta model) and record every parameter and buffer it
    reads, and the activations its nn.Linear layers consume."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    roles = _roles(graph)
    used: dict[int, torch.Tensor] = {}
    linear_inputs: list[torch.Tensor] = []  # kept alive so that ids stay unique

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor) and id(leaf) in roles:
                    used.setdefault(id(leaf), leaf)
            if func is F.linear:
                linear_inputs.append(args[0])
            return func(*args, **kwargs)

    with torch.no_grad(), Recorder():
        graph(*_example_inputs(graph))
    tensors = []
    for key, tensor in used.items():
        name, role = roles[key]
        tensors.append(GraphTensor(name, role, tuple(tensor.shape), tensor.element_size(), tensor))
    return GraphWeights(tuple(tensors), len(linear_inputs), len({id(t) for t in linear_inputs}))


def _stored_dtype(tensor: GraphTensor, variant: str) -> str:
    if variant == "fp16" and tensor.role != "float":
        return "float16"
    return "float32" if tensor.itemsize == 4 else f"{tensor.itemsize}-byte"


def duplicates(weights: GraphWeights, variant: str) -> set[str]:
    """Names of the tensors the exporter merges into an identical earlier one (identical dtype, shape and values,
    at most DEDUPLICATE_MAX_ELEMENTS elements). Needs the values: none for a meta model. The INT8 forms
    are made from the fp32 file, so they inherit its merges."""
    import torch

    base = "fp16" if variant == "fp16" else "fp32"
    seen: set[tuple] = set()
    merged: set[str] = set()
    for t in weights.tensors:
        if t.data.device.type == "meta" or t.numel > DEDUPLICATE_MAX_ELEMENTS:
            continue
        value = t.data.detach().cpu()
        value = value.t() if t.role == "matmul" else value
        if _stored_dtype(t, base) == "float16":
            value = value.to(torch.float16)
        key = (str(value.dtype), t.exported_shape, value.contiguous().numpy().tobytes())
        if key in seen:
            merged.add(t.name)
        seen.add(key)
    return merged


def weight_bytes(weights: GraphWeights, variant: str, embedding_min_elements: int | None = None) -> dict[str, int]:
    """Bytes of the initializers the exported `variant` file holds for the graph's parameters, by kind.

    fp32: as traced. fp16 (`to_matmul_dtype`): nn.Linear and nn.Embedding weights and biases in float16.
    int8 (QDQ) and int8_dynamic: from the fp32 file; every nn.Linear weight is an int8 MatMul weight with a
    float32 scale and an int8 zero point per output channel (QDQ) or per tensor (dynamic); QDQ adds one
    scale and zero point per quantized activation (each matmul's input and output); biases stay float32; an
    embedding table of `embedding_min_elements` or more is stored in float16 (`half_embeddings`).
    Graph constants (shape vectors, scalars: a few hundred bytes) are not parameters and are not counted.
    """
    from export.quantize import EMBEDDING_MIN_ELEMENTS

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    threshold = EMBEDDING_MIN_ELEMENTS if embedding_min_elements is None else embedding_min_elements
    merged = duplicates(weights, variant)
    out = {"matmul weights": 0, "quantization parameters": 0, "biases": 0, "embedding": 0, "norms and buffers": 0}
    for t in weights.tensors:
        if t.name in merged:
            continue
        n = t.numel
        if t.role == "float":
            out["norms and buffers"] += n * t.itemsize
        elif variant == "fp32":
            out[{"matmul": "matmul weights", "bias": "biases", "embedding": "embedding"}[t.role]] += n * t.itemsize
        elif variant == "fp16":
            out[{"matmul": "matmul weights", "bias": "biases", "embedding": "embedding"}[t.role]] += n * 2
        elif t.role == "matmul":
            out["matmul weights"] += n
            out["quantization parameters"] += QPARAM_BYTES * (t.shape[0] if variant == "int8" else 1)
        elif t.role == "bias":
            out["biases"] += n * t.itemsize
        else:
            out["embedding"] += n * (2 if n >= threshold else t.itemsize)
    if variant == "int8":
        out["quantization parameters"] += QPARAM_BYTES * (weights.linear_calls + weights.linear_inputs)
    out["total"] = sum(out.values())
    return out


def initializer_bytes(path: Path) -> int:
    """Sum of the initializer bytes of an ONNX file (external data included), from the tensors' shapes."""
    model = onnx.load(str(path), load_external_data=False)
    return sum(
        math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize for t in model.graph.initializer
    )


# --------------------------------------------------------------------------------------------
# Activation peaks: shapes of every tensor, then a liveness simulation in node order
# --------------------------------------------------------------------------------------------


class ShapeInferenceError(RuntimeError):
    """Some tensor did not get a concrete shape: the peak would be wrong, so nothing is reported."""


def graph_skeleton(path: Path, keep_elements: int = 1024) -> onnx.ModelProto:
    """The graph without its weight data: initializers over `keep_elements` keep their dims and lose their bytes
    (as `onnx.load(load_external_data=False)` leaves external ones). Shape inference reads only small ones."""
    model = onnx.load(str(path), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or math.prod(init.dims) <= keep_elements:
            continue
        for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
            init.ClearField(name)
        init.data_location = onnx.TensorProto.EXTERNAL
        entry = init.external_data.add()
        entry.key, entry.value = "location", "stripped-by-bench-memory"
    return model


def _symbolic_shape_inference():
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    class Inference(SymbolicShapeInference):
        """ONNX Runtime's symbolic shape inference; opset 18's Reduce ops other than ReduceSum/ReduceMean take
        their axes as an input too, which its per-node ONNX inference cannot read: infer them like ReduceSum."""

        def __init__(self) -> None:
            super().__init__(int_max=2**31 - 1, auto_merge=False, guess_output_rank=False, verbose=0)
            for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin",
                       "ReduceSumSquare"):  # fmt: skip
                self.dispatcher_.setdefault(op, self._infer_ReduceSum)

    return Inference()


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    elem_type: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * onnx.helper.tensor_dtype_to_np_dtype(self.elem_type).itemsize

    @property
    def dtype(self) -> str:
        return str(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))


def infer_shapes(skeleton: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> dict[str, TensorInfo]:
    """Concrete shape and element type of every graph input and node output for the given input shapes.
    Raises ShapeInferenceError unless every one of them is fully known."""
    model = onnx.ModelProto()
    model.CopyFrom(skeleton)
    del model.graph.value_info[:]
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if {i.name for i in inputs} != set(shapes):
        raise ValueError(f"shapes for {sorted(shapes)}, graph inputs are {sorted(i.name for i in inputs)}")
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shapes[value.name]):
            raise ValueError(f"{value.name}: rank {len(dims)}, got shape {list(shapes[value.name])}")
        for dim, size in zip(dims, shapes[value.name], strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = int(size)
    for value in model.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            dim.ClearField("dim_param")
    inference = _symbolic_shape_inference()
    inference._preprocess(model)
    while inference.run_:
        inference._infer_impl()
    inference._update_output_from_vi()
    out = inference.out_mp_.graph
    known = {v.name: v for v in [*out.input, *out.value_info, *out.output]}
    infos: dict[str, TensorInfo] = {}
    unknown: list[str] = []
    names = [i.name for i in inputs] + [o for n in out.node if n.op_type != "Constant" for o in n.output if o]
    for name in names:
        value = known.get(name)
        tensor = value.type.tensor_type if value is not None else None
        dims = list(tensor.shape.dim) if tensor is not None and tensor.HasField("shape") else None
        if tensor is None or dims is None or tensor.elem_type == 0 or any(not d.HasField("dim_value") for d in dims):
            unknown.append(f"{name}: {onnx.helper.printable_type(value.type) if value is not None else 'no type'}")
            continue
        infos[name] = TensorInfo(tuple(int(d.dim_value) for d in dims), tensor.elem_type)
    if unknown:
        raise ShapeInferenceError(f"{len(unknown)} tensors have no concrete shape, e.g. {unknown[:5]}")
    return infos


def attention_chains(graph: onnx.GraphProto) -> set[str]:
    """Tensors of each attention's score chain: the output of an activation x activation MatMul (QK^T) through
    the element-wise steps to the first input of the next one (softmax(.)V). A fused attention kernel keeps
    them in on-chip memory; everything else it still writes out."""
    weights = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    act_matmuls = [n for n in graph.node if n.op_type == "MatMul" and not (set(n.input) & weights)]
    chains: set[str] = set()
    for pv in act_matmuls:
        path, name = [], pv.input[0]
        while name in producer:
            node = producer[name]
            path.append(name)
            if node.op_type == "MatMul" and node in act_matmuls:
                chains.update(path)
                break
            if node.op_type not in ATTENTION_CHAIN_OPS:
                break
            # follow the non-constant input that carries the scores (the first such one)
            sources = [i for i in node.input if i and i not in weights and i in producer]
            if not sources:
                break
            name = sources[0] if node.op_type != "Where" else sources[-1]
    return chains


@dataclass(frozen=True)
class Peak:
    """The most bytes of activations live at once, the node where it happens and the largest tensors then."""

    bytes: int
    node: str
    largest: tuple[tuple[str, tuple[int, ...], str, int], ...]  # (tensor, shape, dtype, bytes)


def simulate(graph: onnx.GraphProto, infos: Mapping[str, TensorInfo], *, views: bool = True,
             free: Iterable[str] = ()) -> Peak:  # fmt: skip
    """Live bytes in node order: each node's outputs are allocated when it runs (while its inputs are live) and a
    tensor is freed after its last consumer. Graph inputs are live throughout, graph outputs until the end,
    initializers and Constant outputs are not activations. With `views`, reshape-like ops (VIEW_OPS) alias their
    input's buffer, as ONNX Runtime's kernels do. Tensors in `free` take no memory (a fused kernel's)."""
    weights = {i.name for i in graph.initializer}
    free = set(free)
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for node in nodes:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"{node.op_type} {node.name} has a subgraph; the simulation handles flat graphs only")
    last_use: dict[str, int] = {}
    for k, node in enumerate(nodes):
        for name in node.input:
            if name:
                last_use[name] = k
    outputs = {o.name for o in graph.output}
    buffer: dict[str, str] = {}  # tensor -> the tensor that owns its memory
    size: dict[str, int] = {}  # owner -> bytes
    holders: dict[str, int] = {}  # owner -> tensors still referring to it
    pinned: set[str] = set()  # owners never freed: graph inputs and outputs
    live: dict[str, int] = {}
    for value in graph.input:
        if value.name in weights:
            continue
        buffer[value.name] = value.name
        size[value.name] = 0 if value.name in free else infos[value.name].nbytes
        holders[value.name] = 1
        pinned.add(value.name)
        live[value.name] = size[value.name]
    peak = Peak(sum(live.values()), "(inputs)", ())
    for k, node in enumerate(nodes):
        produced = [o for o in node.output if o]
        for name in produced:
            if name not in infos:
                raise ShapeInferenceError(f"no shape for {name} ({node.op_type} {node.name})")
            source = node.input[0] if node.input else ""
            if views and node.op_type in VIEW_OPS and source in weights:
                weights.add(name)  # a view of a weight is a weight
                continue
            if views and node.op_type in VIEW_OPS and source in buffer:
                owner = buffer[source]
                buffer[name] = owner
                holders[owner] += 1
            else:
                buffer[name] = name
                size[name] = 0 if name in free else infos[name].nbytes
                holders[name] = 1
                live[name] = size[name]
            if name in outputs:
                pinned.add(buffer[name])
        total = sum(live.values())
        if total > peak.bytes:
            top = sorted(live.items(), key=lambda kv: -kv[1])[:6]
            largest = tuple((n, infos[n].shape, infos[n].dtype, b) for n, b in top if b)
            peak = Peak(total, f"{node.op_type} {node.name}", largest)
        done = {n for n in [*node.input, *produced] if n and n not in weights and last_use.get(n, -1) <= k}
        for name in done:
            if name in outputs or name not in buffer:
                continue
            owner = buffer.pop(name)
            holders[owner] -= 1
            if holders[owner] == 0 and owner not in pinned:
                live.pop(owner, None)
    return peak


class ActivationModel:
    """One exported graph, for activation peaks at any input shapes (cached)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.skeleton = graph_skeleton(self.path)
        self.fused = attention_chains(self.skeleton.graph)
        self._cache: dict[tuple, tuple[Peak, Peak]] = {}

    def peaks(self, shapes: Mapping[str, Sequence[int]]) -> tuple[Peak, Peak]:
        """(unfused peak, fused-attention estimate) for these input shapes."""
        key = tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
        if key not in self._cache:
            infos = infer_shapes(self.skeleton, shapes)
            graph = self.skeleton.graph
            self._cache[key] = (simulate(graph, infos), simulate(graph, infos, free=self.fused))
        return self._cache[key]

    def peak(self, shapes: Mapping[str, Sequence[int]]) -> int:
        return self.peaks(shapes)[0].bytes


@lru_cache(maxsize=16)
def _activation_model(path: str) -> ActivationModel:
    return ActivationModel(Path(path))


def activation_peak(graph_path: str | Path, shapes: Mapping[str, Sequence[int]]) -> int:
    """Peak activation bytes of one call of the graph at `graph_path` with inputs of `shapes` (name -> dims), for an
    unfused runtime: an upper bound for ONNX Runtime's CPU and CUDA providers. Weights are not included."""
    return _activation_model(str(Path(graph_path).resolve())).peak(shapes)


def vision_shapes(images: int, patches: int) -> dict[str, tuple[int, ...]]:
    """Inputs of one vision call: `images` images padded to `patches` patches."""
    return {"patches": (images, patches, 588), "patch_positions": (images, patches, 2), "patch_mask": (images, patches)}


def text_shapes(sequences: int, tokens: int, visual_rows: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """Inputs of one text call: `sequences` padded to `tokens`, with `visual_rows` visual features (1 for queries)."""
    per_token = (sequences, tokens)
    return {
        "input_ids": per_token,
        "attention_mask": per_token,
        "position_ids": (3, *per_token),
        "visual_features": (max(visual_rows, 1), hidden),
        "visual_index": per_token,
    }


# --------------------------------------------------------------------------------------------
# The slice: real widths, one vision block and one text layer, exported with the exporter's code
# --------------------------------------------------------------------------------------------


def _calibration(graphs: dict[str, Any]) -> dict[str, list[dict[str, np.ndarray]]]:
    """A few random feeds for the QDQ calibration: the slice's memory does not depend on the scales."""
    rng = np.random.default_rng(0)
    hidden = graphs["text_encoder"].lm.config.hidden_size
    vocab = graphs["text_encoder"].lm.embed_tokens.num_embeddings
    vision, text = [], []
    for patches, tokens in ((16, 8), (32, 12)):
        positions = np.stack(np.meshgrid(np.arange(patches // 4), np.arange(4), indexing="ij"), -1).reshape(1, -1, 2)
        vision.append(
            {
                "patches": rng.integers(0, 256, (1, patches, 588), dtype=np.uint8),
                "patch_positions": positions.astype(np.int64),
                "patch_mask": np.ones((1, patches), dtype=np.int64),
            }
        )
        index = np.full((1, tokens), -1, dtype=np.int64)
        index[0, 2:6] = np.arange(4)
        text.append(
            {
                "input_ids": rng.integers(0, vocab, (1, tokens), dtype=np.int64),
                "attention_mask": np.ones((1, tokens), dtype=np.int64),
                "position_ids": np.broadcast_to(np.arange(tokens, dtype=np.int64), (3, 1, tokens)).copy(),
                "visual_features": rng.standard_normal((4, hidden), dtype=np.float32),
                "visual_index": index,
            }
        )
    return {"vision_encoder": vision, "text_encoder": text}


def export_slice(folder: Path, layers: int = 1, variants: Sequence[str] = VARIANTS, rebuild: bool = False) -> dict:
    """Export the real-width slice (`layers` vision blocks and text layers, a 2014-token vocabulary, random
    weights) in `variants` to `folder/<variant>/<graph>.onnx`, as `export.pipeline.write_graphs` does (the INT8
    forms from the fp32 file, then `half_embeddings`). Reuses a previous export with the same settings."""
    import torch

    from export.onnx_export import export_graph, to_matmul_dtype
    from export.quantize import half_embeddings, quantize_dynamic_int8, quantize_qdq
    from export.spec import GRAPHS

    from export.random_checkpoint import QWEN2_VL_SPECIAL_TOKENS, SIZES

    vocab = SIZES["real"].bpe_vocab + len(QWEN2_VL_SPECIAL_TOKENS)  # the random checkpoint's tokenizer length
    settings = {"size": "real", "layers": layers, "variants": list(variants), "vocab_size": vocab}
    marker = folder / "slice.json"
    paths = {v: {spec.name: folder / v / f"{spec.name}.onnx" for spec in GRAPHS} for v in variants}
    if not rebuild and marker.exists():
        done = json.loads(marker.read_text())
        if done.get("settings") == settings and all(p.exists() for g in paths.values() for p in g.values()):
            return done
    started = time.time()
    torch.manual_seed(0)
    config = qwen2vl_config("real", vocab_size=vocab, text_layers=layers, vision_depth=layers)
    model = build_model(config, "cpu")
    graphs = graph_modules(model)
    parameters = {name: sum(p.numel() for p in trace_graph_weights(g).tensors) for name, g in graphs.items()}
    with torch.no_grad():
        for spec in GRAPHS:
            export_graph(graphs[spec.name], spec, folder / "fp32" / f"{spec.name}.onnx")
        if "fp16" in variants:
            for spec in GRAPHS:
                to_matmul_dtype(graphs[spec.name], torch.float16)
                export_graph(graphs[spec.name], spec, folder / "fp16" / f"{spec.name}.onnx")
    feeds = _calibration(graphs)
    del graphs, model
    for spec in GRAPHS:
        src = folder / "fp32" / f"{spec.name}.onnx"
        for variant in (v for v in ("int8", "int8_dynamic") if v in variants):
            (folder / variant).mkdir(parents=True, exist_ok=True)
            if variant == "int8":
                quantize_qdq(src, paths[variant][spec.name], feeds[spec.name], external=False)
            else:
                quantize_dynamic_int8(src, paths[variant][spec.name], external=False)
            half_embeddings(paths[variant][spec.name], external=False)
    done = {
        "settings": settings,
        "vocab_size": config.text_config.vocab_size,
        "graph_parameters": parameters,
        "export_seconds": round(time.time() - started, 1),
    }
    marker.write_text(json.dumps(done, indent=2))
    return done


# --------------------------------------------------------------------------------------------
# Scenarios, deployments, budgets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One call: `batch` items padded to `length` patches (vision) or tokens (text)."""

    graph: str
    name: str
    batch: int
    length: int
    visual_rows: int = 0  # text: rows of visual_features (image prompts' visual tokens; 1 for queries)
    in_gpu_budget: bool = False  # a call the GPU runner may send under today's SESSION_BUDGETS["gpu"]
    note: str = ""

    def shapes(self, hidden: int) -> dict[str, tuple[int, ...]]:
        if self.graph == "vision_encoder":
            return vision_shapes(self.batch, self.length)
        return text_shapes(self.batch, self.length, self.visual_rows, hidden)


def image_tokens(width: int, height: int, cap: int = CAP_TOKENS) -> int:
    """Visual tokens of a width x height image under the published checkpoint's pixel limits (`grid.smart_resize`)."""
    from export.random_checkpoint import PUBLISHED_MIN_PIXELS
    from model_repository.colqwen2_serving.grid import PIXELS_PER_TOKEN, PixelLimits, smart_resize, token_grid

    h, w = smart_resize(height, width, PixelLimits(PUBLISHED_MIN_PIXELS, cap * PIXELS_PER_TOKEN))
    rows, cols = token_grid(h, w)
    return rows * cols


def gpu_budgets() -> dict[str, int]:
    from model_repository.render import SESSION_BUDGETS

    return dict(SESSION_BUDGETS["gpu"])


def largest_call(budget_size: int, budget_items: int, length: int) -> int:
    """Items in the largest call of `length`-long items the runner sends under a Budget (`feeds.plan_calls`)."""
    items = max(1, budget_size // length)
    return min(items, budget_items) if budget_items else items


def scenarios(budgets: Mapping[str, int], cap: int = CAP_TOKENS) -> list[Scenario]:
    """The calls reported: one image at the cap, the GPU budgets as rendered today, and batches of 32."""
    from model_repository.colqwen2_serving.runners import Budget, text_profile, vision_profile

    cap_patches, prompt = 4 * cap, cap + PROMPT_EXTRA_TOKENS
    keepa, photo = image_tokens(500, 200, cap), image_tokens(448, 448, cap)
    v_size, v_items = budgets["max_session_patches"], budgets["max_session_images"]
    t_size, t_items = budgets["max_session_tokens"], budgets["max_session_sequences"]
    v_box = dict((name, shape) for name, _, _, shape in vision_profile(Budget(v_size, v_items), cap))["patches"]
    t_box = {name: shape for name, _, _, shape in text_profile(Budget(t_size, t_items), prompt, 1)}
    v_call = largest_call(v_size, v_items, cap_patches)
    t_call = largest_call(t_size, t_items, prompt)
    q_call = largest_call(t_size, t_items, QUERY_TOKENS)

    def fits(size: int, items: int, batch: int, length: int) -> bool:
        return batch * length <= size and (not items or batch <= items)

    out = [
        Scenario("vision_encoder", "1 image at the cap", 1, cap_patches, note=f"{cap} tokens"),
        Scenario("vision_encoder", "GPU call budget (largest call, = TensorRT box)", v_call, cap_patches,
                 note=f"max_session_patches {v_size}, max_session_images {v_items}; box {v_box[0]} x {v_box[1]}"),
        Scenario("vision_encoder", "32 Keepa charts 500x200", 32, 4 * keepa, note=f"{keepa} tokens each"),
        Scenario("vision_encoder", "32 images 448x448", 32, 4 * photo, note=f"{photo} tokens each"),
        Scenario("text_encoder", "1 image prompt at the cap", 1, prompt, cap),
        Scenario("text_encoder", "GPU call budget (largest image-prompt call)", t_call, prompt, t_call * cap,
                 note=f"max_session_tokens {t_size} // {prompt}"),
        Scenario("text_encoder", "GPU call budget (largest query call)", q_call, QUERY_TOKENS, 1,
                 note=f"max_session_tokens {t_size} // {QUERY_TOKENS}"),
        Scenario("text_encoder", "GPU TensorRT box", t_box["input_ids"][0], t_box["input_ids"][1],
                 t_box["visual_features"][0], note="text_profile max shapes: what TensorRT may plan for"),
        Scenario("text_encoder", "32 queries of 32 tokens", 32, 32, 1),
        Scenario("text_encoder", "32 image prompts 448x448", 32, photo + PROMPT_EXTRA_TOKENS, 32 * photo,
                 note=f"{photo} visual tokens each"),
    ]  # fmt: skip
    sizes = {"vision_encoder": (v_size, v_items), "text_encoder": (t_size, t_items)}
    return [
        Scenario(**{**asdict(s), "in_gpu_budget": fits(*sizes[s.graph], s.batch, s.length) and "box" not in s.name})
        if "TensorRT box" not in s.name
        else s
        for s in out
    ]


@dataclass
class Deployment:
    precision: str
    variant: str
    weights: dict[str, int]
    vision: tuple[str, int]  # (scenario, peak bytes)
    text: tuple[str, int]
    overhead: int
    limit: int

    @property
    def total(self) -> int:
        return sum(self.weights.values()) + self.vision[1] + self.text[1] + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.limit


def _text_call_peak(model: ActivationModel, hidden: int, sequences: int, tokens_budget: int, cap: int) -> int:
    """The largest peak among the text calls of a Budget(tokens_budget, sequences): image prompts at the cap and
    at 448x448, queries at the longest and at 32 tokens."""
    prompt, photo = cap + PROMPT_EXTRA_TOKENS, image_tokens(448, 448, cap)
    peaks = []
    for length, rows_per_item in ((prompt, cap), (photo + PROMPT_EXTRA_TOKENS, photo), (QUERY_TOKENS, 0), (32, 0)):
        b = largest_call(tokens_budget, sequences, length)
        peaks.append(model.peak(text_shapes(b, length, b * rows_per_item, hidden)))
    return max(peaks)


def recommend(vision: ActivationModel, text: ActivationModel, hidden: int, room: int, max_items: int = 32) -> dict:
    """The largest GPU call budgets whose vision + text activation peaks fit in `room` bytes, at the token cap.

    Per images-per-vision-call n (at the cap), the most image prompts per text call (at 783 tokens, its
    max_session_tokens = n_t x 783, which also bounds queries); the recommendation is the largest n with
    n_t >= n (a vision call's images fit in one text call). If one image at the cap does not fit, the largest
    max_visual_tokens with one image per call."""
    cap_patches, prompt = 4 * CAP_TOKENS, CAP_TOKENS + PROMPT_EXTRA_TOKENS
    frontier = []
    for n in range(1, max_items + 1):
        v = vision.peak(vision_shapes(n, cap_patches))
        if v >= room:
            break
        best = 0
        for s in range(1, max_items + 1):
            if v + _text_call_peak(text, hidden, s, s * prompt, CAP_TOKENS) > room:
                break
            best = s
        if best == 0:
            break
        frontier.append({"images_per_vision_call": n, "vision_peak": v, "max_sequences_per_text_call": best})
    result: dict[str, Any] = {"room_bytes": room, "frontier": frontier}
    balanced = [f for f in frontier if f["max_sequences_per_text_call"] >= f["images_per_vision_call"]]
    if balanced:
        pick = balanced[-1]
        n, s = pick["images_per_vision_call"], pick["max_sequences_per_text_call"]
        result["budgets"] = {
            "max_session_patches": n * cap_patches,
            "max_session_images": n,
            "max_session_tokens": s * prompt,
            "max_session_sequences": s,
        }
        result["max_visual_tokens"] = CAP_TOKENS
        return result
    lo, hi = 4, CAP_TOKENS  # largest cap with one image per call
    while lo < hi:
        mid = (lo + hi + 1) // 2
        need = vision.peak(vision_shapes(1, 4 * mid)) + _text_call_peak(text, hidden, 1, mid + 15, mid)
        lo, hi = (mid, hi) if need <= room else (lo, mid - 1)
    fits = vision.peak(vision_shapes(1, 4 * lo)) + _text_call_peak(text, hidden, 1, lo + 15, lo) <= room
    result["max_visual_tokens"] = lo if fits else 0
    result["budgets"] = {
        "max_session_patches": 4 * lo,
        "max_session_images": 1,
        "max_session_tokens": lo + PROMPT_EXTRA_TOKENS,
        "max_session_sequences": 1,
    }
    return result


# --------------------------------------------------------------------------------------------
# The run and its report
# --------------------------------------------------------------------------------------------


def real_weights(embedding_min_elements: int | None = None) -> dict:
    """Per graph and variant, the real-size checkpoint's initializer bytes (meta model, no memory)."""
    model = build_model(qwen2vl_config("real"), "meta")
    graphs = graph_modules(model)
    traced = {name: trace_graph_weights(g) for name, g in graphs.items()}
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vision_parameters": sum(p.numel() for p in model.visual.parameters()),
        "graph_parameters": {name: t.parameters for name, t in traced.items()},
        "linear_layers": {name: t.linear_calls for name, t in traced.items()},
        "bytes": {v: {name: weight_bytes(t, v, embedding_min_elements) for name, t in traced.items()} for v in VARIANTS},
    }


def _gb(n: float) -> str:
    return f"{n / GB:.3f}"


def _gib(n: float) -> str:
    return f"{n / GIB:.3f}"


def run(out_dir: Path, workdir: Path, overhead_gib: float, rebuild: bool = False) -> dict:
    started = time.time()
    hidden = 1536
    weights = real_weights()
    log.info("real-size weights: %d parameters", weights["parameters"])
    slice_info = export_slice(workdir / "slice-1", 1, rebuild=rebuild)
    models = {v: {g: ActivationModel(workdir / "slice-1" / v / f"{g}.onnx") for g in GRAPH_NAMES} for v in VARIANTS}
    budgets = gpu_budgets()
    rows = []
    for s in scenarios(budgets):
        peaks = {v: models[v][s.graph].peaks(s.shapes(hidden)) for v in VARIANTS}
        rows.append(
            {
                **asdict(s),
                "peak": {v: p[0].bytes for v, p in peaks.items()},
                "fused_attention_estimate": {v: p[1].bytes for v, p in peaks.items()},
                "at": {v: {"node": p[0].node, "largest": [list(x) for x in p[0].largest]} for v, p in peaks.items()},
            }
        )
        log.info("%s / %s: fp16 peak %.3f GB", s.graph, s.name, peaks["fp16"][0].bytes / GB)

    # The layer count does not change the peak: the same calls on a 2-layer fp32 slice.
    slice2 = export_slice(workdir / "slice-2", 2, variants=("fp32",), rebuild=rebuild)
    layer_check = []
    for s in scenarios(budgets)[:2] + scenarios(budgets)[4:6]:
        one = models["fp32"][s.graph].peak(s.shapes(hidden))
        two = ActivationModel(workdir / "slice-2" / "fp32" / f"{s.graph}.onnx").peak(s.shapes(hidden))
        layer_check.append({"scenario": f"{s.graph}: {s.name}", "one_layer": one, "two_layers": two})

    overhead = round(2 * overhead_gib * GIB)
    deployments, recommendations = [], {}
    for precision, variant in DEPLOYMENTS.items():
        w = {g: weights["bytes"][variant][g]["total"] for g in GRAPH_NAMES}
        for basis in ("call", "box", "fused"):
            picks = {}
            for g in GRAPH_NAMES:
                if basis == "call":
                    cands = [r for r in rows if r["graph"] == g and r["in_gpu_budget"]]
                else:
                    cands = [r for r in rows if r["graph"] == g and ("box" in r["name"] or "call budget (largest call" in r["name"]
                                                                      or "(largest image-prompt" in r["name"])]
                key = "fused_attention_estimate" if basis == "fused" else "peak"
                if basis == "fused":
                    cands = [r for r in rows if r["graph"] == g and r["in_gpu_budget"]]
                best = max(cands, key=lambda r, key=key: r[key][variant])
                picks[g] = (best["name"], best[key][variant])
            d = Deployment(precision, variant, w, picks["vision_encoder"], picks["text_encoder"], overhead,
                           LIMITS[precision])  # fmt: skip
            deployments.append({**asdict(d), "basis": basis, "total": d.total, "fits": d.fits})
        room = LIMITS[precision] - sum(w.values()) - overhead
        recommendations[precision] = recommend(models[variant]["vision_encoder"], models[variant]["text_encoder"],
                                               hidden, room)  # fmt: skip

    result = {
        "command": "python -m bench.memory " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.system()}), no GPU",
        "versions": {p: version(p) for p in ("torch", "onnx", "onnxruntime", "transformers", "colpali-engine")},
        "seconds": None,
        "checkpoint": "real (Qwen2-VL-2B shapes: export.random_checkpoint.SIZES['real'])",
        "cap_tokens": CAP_TOKENS,
        "gpu_budgets_today": budgets,
        "overhead_per_process_bytes": round(overhead_gib * GIB),
        "weights": weights,
        "slice": slice_info,
        "slice_2_layers": slice2,
        "activations": rows,
        "layer_count_check": layer_check,
        "deployments": deployments,
        "recommended_gpu_budgets": recommendations,
        "assumptions": assumptions(overhead_gib),
    }
    result["seconds"] = round(time.time() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory-real.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "memory-real.md").write_text(markdown(result))
    return result


def assumptions(overhead_gib: float) -> list[str]:
    return [
        "Weights: the real-size ColQwen2 (2.209 B parameters) built on the meta device; bytes from the export rules "
        "(checked against the tiny export in tests/test_memory.py). Graph constants (shape vectors, scalars: a few "
        "hundred bytes) are not counted; trained weights have no identical small tensors for the exporter to merge.",
        "Weights are counted once per process: the ONNX Runtime session (CUDA provider) or the TensorRT engine holds "
        "them on the GPU. A TensorRT engine build needs extra workspace while it runs; not counted.",
        "Activations: simulated on a slice with the real widths (1 vision block, 1 text layer; the run checks that 2 "
        "layers peak the same), in the exported node order, reshape-like ops as views, graph inputs live throughout, "
        "weights excluded. An upper bound for an unfused runtime (ONNX Runtime CPU/CUDA); kernels' scratch "
        "workspaces are in the runtime overhead. TensorRT fuses attention and plans its own memory: the "
        "'fused attention' estimate drops the QK^T..softmax score tensors, and is an estimate, not a bound.",
        "int8 activations are those of the QDQ graph itself (float32 between the quantize/dequantize pairs, plus the "
        "float32 dequantized weight of the matmul in flight), which is what ONNX Runtime's CUDA provider runs; the "
        "fp32 graph's peak is listed beside it as the upper bound the brief asked for.",
        f"Runtime overhead: {overhead_gib} GiB per encoder process, two processes (vision and text). {OVERHEAD_NOTE}",
        "ONNX Runtime's CUDA arena grows in powers of two by default (arena_extend_strategy kNextPowerOfTwo), so "
        "reserved memory can exceed the peak by up to 2x; kSameAsRequested avoids that.",
        "Both encoder processes can run a call at once, so their peaks add up.",
        "Image prompts are 15 + visual tokens long (783 at the 768-token cap); queries are at most 512 tokens.",
    ]


def markdown(r: dict) -> str:
    w = r["weights"]
    lines = [
        "# GPU memory of the real-size ColQwen2 deployments",
        "",
        f"`{r['command']}` on {r['machine']}, {r['date']}, {r['seconds']} s. "
        f"Checkpoint: {r['checkpoint']}, {w['parameters']:,} parameters ({w['vision_parameters']:,} in the vision "
        f"tower). GB = 1e9 bytes, GiB = 2^30.",
        "",
        "## Weight bytes per graph and variant",
        "",
        "Exact, from the real-size model's parameters and the export rules (no export needed).",
        "",
        "| variant | graph | matmul weights | quant. params | embedding | biases | norms, buffers | total GB | GiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in VARIANTS:
        for g in GRAPH_NAMES:
            b = w["bytes"][v][g]
            lines.append(
                f"| {v} | {g} | {b['matmul weights']:,} | {b['quantization parameters']:,} | {b['embedding']:,} | "
                f"{b['biases']:,} | {b['norms and buffers']:,} | {_gb(b['total'])} | {_gib(b['total'])} |"
            )
        total = sum(w["bytes"][v][g]["total"] for g in GRAPH_NAMES)
        lines.append(f"| {v} | **both** | | | | | | **{_gb(total)}** | {_gib(total)} |")
    lines += [
        "",
        "## Activation peak per call",
        "",
        "GB of activations live at once in one call (weights excluded), from the slice's tensor shapes. "
        "Unfused: an upper bound for ONNX Runtime CPU/CUDA. In brackets: the fused-attention estimate (score "
        "tensors not materialised, as TensorRT's fused attention does). `in budget`: a call the GPU runner "
        "may send under today's budgets.",
        "",
        "| graph | scenario | batch x length | in budget | fp32 | fp16 | int8 (QDQ) | int8_dynamic | fp16 peak at |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for a in r["activations"]:
        cells = " | ".join(f"{_gb(a['peak'][v])} ({_gb(a['fused_attention_estimate'][v])})" for v in VARIANTS)
        at = a["at"]["fp16"]
        big = ", ".join(f"{dt}{list(shape)}" for _, shape, dt, _ in at["largest"][:3])
        length = f"{a['batch']} x {a['length']}" + (f", {a['visual_rows']} visual rows" if a["visual_rows"] else "")
        note = f" ({a['note']})" if a["note"] else ""
        lines.append(
            f"| {a['graph']} | {a['name']}{note} | {length} | {'yes' if a['in_gpu_budget'] else 'no'} | {cells} | "
            f"`{at['node'].split(' ')[0]}`: {big} |"
        )
    lines += ["", "Layer count check (fp32, GB): the same calls on 1-layer and 2-layer slices.", ""]
    lines += ["| call | 1 layer | 2 layers |", "|---|---:|---:|"]
    for c in r["layer_count_check"]:
        lines.append(f"| {c['scenario']} | {_gb(c['one_layer'])} | {_gb(c['two_layers'])} |")
    lines += [
        "",
        "## Deployments",
        "",
        f"Weights of the vision and the text encoder + the largest vision call + the largest text call (both "
        f"processes can run at once) + runtime overhead ({r['overhead_per_process_bytes'] / GIB:g} GiB x 2 "
        "processes, an assumption). `call`: the largest calls ONNX Runtime can get under today's GPU budgets "
        "(unfused bound). `box`: TensorRT's profile maxima at unfused sizes. `fused`: the largest calls with "
        "the fused-attention estimate.",
        "",
        "| precision | basis | weights GB | vision call | GB | text call | GB | overhead GB | total GB | total GiB "
        "| limit GB | fits |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for d in r["deployments"]:
        lines.append(
            f"| {d['precision']} | {d['basis']} | {_gb(sum(d['weights'].values()))} | {d['vision'][0]} | "
            f"{_gb(d['vision'][1])} | {d['text'][0]} | {_gb(d['text'][1])} | {_gb(d['overhead'])} | "
            f"**{_gb(d['total'])}** | {_gib(d['total'])} | {_gb(d['limit'])} | {'yes' if d['fits'] else '**no**'} |"
        )
    lines += ["", "## Recommended GPU call budgets (unfused bound, at the 768-token cap)", ""]
    today = r["gpu_budgets_today"]
    lines.append(f"Today (`render.SESSION_BUDGETS['gpu']`): {today}.")
    lines.append("")
    for precision, rec in r["recommended_gpu_budgets"].items():
        lines.append(
            f"- **{precision}** ({_gb(rec['room_bytes'])} GB left for activations): "
            + (
                f"`{rec['budgets']}`"
                + (f", max_visual_tokens {rec['max_visual_tokens']}" if rec["max_visual_tokens"] != CAP_TOKENS else "")
                if rec.get("max_visual_tokens")
                else "nothing fits: even one image of 4 visual tokens exceeds the room"
            )
        )
        for f in rec["frontier"]:
            lines.append(
                f"  - {f['images_per_vision_call']} image(s) per vision call ({_gb(f['vision_peak'])} GB) -> up to "
                f"{f['max_sequences_per_text_call']} image prompts of 783 tokens per text call"
            )
    lines += ["", "## Assumptions", ""] + [f"- {a}" for a in r["assumptions"]]
    s = r["slice"]
    lines += [
        "",
        f"Slice: real widths, 1 vision block + 1 text layer, vocabulary {s['vocab_size']}, exported in "
        f"{s['export_seconds']} s to the workdir (fp32, fp16, int8 QDQ, int8 dynamic).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for memory-real.*")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-memory"), help="slice exports go here")
    parser.add_argument("--overhead-gib", type=float, default=DEFAULT_OVERHEAD_GIB, help="runtime GiB per process")
    parser.add_argument("--rebuild", action="store_true", help="export the slices again even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    result = run(args.out, args.workdir, args.overhead_gib, args.rebuild)
    for d in result["deployments"]:
        print(f"{d['precision']:5} {d['basis']:5} total {d['total'] / GB:.3f} GB / {d['limit'] / GB:.0f} GB: "
              f"{'fits' if d['fits'] else 'does not fit'}")  # fmt: skip
    print(args.out / "memory-real.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
