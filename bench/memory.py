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
  2 vision blocks, 2 text layers, a small vocabulary, random weights) is exported per variant with the
  exporter's own code; for concrete input shapes every tensor's shape comes from ONNX Runtime's symbolic
  shape inference, and execution is simulated in node order (a tensor is allocated when produced and
  freed after its last consumer; reshape-like ops are views; graph inputs are live throughout; weights
  are excluded). Per-layer activations do not depend on the layer count: what crosses layers is the
  residual stream and the tables computed once before the first layer and read by every layer (rotary
  cos/sin, the attention bias). Those stay live until the last layer, which a 1-layer graph reaches at
  once, so the slice has 2 layers; the run checks that 1, 2 and 3 layers give the same peak from 2 on.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

if TYPE_CHECKING:
    from torch import nn
    from transformers import Qwen2VLConfig

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
GB = 1_000_000_000
GIB = 1 << 30
LIMITS = {"fp16": 8 * GB, "int8": 4 * GB}  # the targets, GB = 1e9 bytes
# The GPU deployments: precision -> the artifact variant its encoders load (render.HOST_VARIANTS["gpu"]).
DEPLOYMENTS = {"fp16": "fp16", "int8": "int8"}
VARIANTS = ("fp32", "fp16", "int8", "int8_dynamic")
GRAPH_NAMES = ("vision_encoder", "text_encoder")

# A deployment runs one encoder process per precision (`colqwen2_encoder_<variant>`: both graphs, one CUDA context).
ENCODER_PROCESSES = 1
# Runtime memory outside the graph, per encoder process (an assumption, see OVERHEAD_NOTE).
DEFAULT_OVERHEAD_GIB = 0.5
OVERHEAD_NOTE = (
    "What it covers, per process: the CUDA context with the kernels it loads (PyTorch measured 287 MB with CUDA's "
    "lazy module loading against 667 MB eager, pytorch/pytorch#86509; lazy loading is the default on Linux since "
    "CUDA 12.2), the cuBLAS/cuBLASLt workspace (32 MiB recommended on Hopper by the cuBLAS reference for "
    "cublasSetWorkspace), cuDNN, ONNX Runtime's CUDA provider and TensorRT's execution context. Not measured: no "
    "GPU has been lent to this project; pass --overhead-gib to change it (each 0.1 GiB per process moves a "
    "deployment's total by 0.107 GB)."
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
# Layers of the exported slice: tables computed once and read by every layer (rotary cos/sin, the attention
# bias) stay live until the last layer, so a 1-layer graph frees them early; from 2 layers on the peak is the same.
SLICE_LAYERS = 2
VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
# Element-wise steps between QK^T and softmax(.)V that a fused attention kernel never writes out.
ATTENTION_CHAIN_OPS = frozenset({"Cast", "Softmax", "Add", "Mul", "Div", "Sub", "Where"})


# --------------------------------------------------------------------------------------------
# The model: the real-size architecture on the meta device, or a slice of it with random weights
# --------------------------------------------------------------------------------------------


def qwen2vl_config(size: str = "real", *, vocab_size: int | None = None, text_layers: int | None = None,
                   vision_depth: int | None = None) -> Qwen2VLConfig:  # fmt: skip
    """The `Qwen2VLConfig` that `build_random_checkpoint` writes for `size`, optionally with fewer layers or
    another vocabulary. Special tokens get the ids the random checkpoint's tokenizer gives them (after the BPE)."""
    from export.random_checkpoint import QWEN2_VL_SPECIAL_TOKENS, SIZES
    from export.random_checkpoint import qwen2vl_config as checkpoint_config

    spec = SIZES[size]
    ids = {token: spec.bpe_vocab + i for i, token in enumerate(QWEN2_VL_SPECIAL_TOKENS)}
    vocab = vocab_size or spec.vocab_size or spec.bpe_vocab + len(QWEN2_VL_SPECIAL_TOKENS)
    if vocab <= max(ids.values()):
        raise ValueError(f"vocabulary {vocab} does not hold the special tokens (ids up to {max(ids.values())})")
    return checkpoint_config(spec, ids, vocab, text_layers, vision_depth)


def build_model(config: Qwen2VLConfig, device: str = "meta") -> nn.Module:
    """`ColQwen2(config)` in eval mode; on `meta` it holds no memory (shapes only)."""
    import torch
    from colpali_engine.models import ColQwen2

    with torch.device(device):
        return ColQwen2(config).eval()


def stand_in_processor() -> SimpleNamespace:
    """What `VisionEncoderGraph` reads from a processor: the image normalisation."""
    return SimpleNamespace(image_processor=SimpleNamespace(image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD)))


def graph_modules(model: nn.Module, processor: Any = None) -> dict[str, nn.Module]:
    """The two exported graphs as torch modules over `model` (`export.graphs`)."""
    import torch

    from export.graphs import TextEncoderGraph, VisionEncoderGraph

    with torch.device(next(model.parameters()).device):  # a meta model gets meta buffers (mean, std)
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


def _roles(graph: nn.Module) -> dict[int, tuple[str, str]]:
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


def _example_inputs(graph: nn.Module) -> tuple:
    import torch

    from export.onnx_export import example_inputs

    device = next(graph.parameters()).device
    with torch.device("cpu"):
        inputs = example_inputs(graph)
    return tuple(t.to(device) for t in inputs)


def trace_graph_weights(graph: nn.Module) -> GraphWeights:
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
            if getattr(func, "__name__", "") == "__get__":  # `.dtype`, `.shape`...: reading metadata is no use
                return func(*args, **kwargs)
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor) and id(leaf) in roles:
                    used.setdefault(id(leaf), leaf)
            if func is F.linear:
                linear_inputs.append(args[0])
            return func(*args, **kwargs)

    inputs = _example_inputs(graph)
    with torch.no_grad(), Recorder():
        graph(*inputs)
    tensors = []
    for key, tensor in used.items():
        name, role = roles[key]
        tensors.append(GraphTensor(name, role, tuple(tensor.shape), tensor.element_size(), tensor))
    return GraphWeights(tuple(tensors), len(linear_inputs), len({id(t) for t in linear_inputs}))


def duplicates(weights: GraphWeights, variant: str) -> set[str]:
    """Names of the tensors the exporter merges into an identical earlier one (identical dtype, shape and values,
    at most DEDUPLICATE_MAX_ELEMENTS elements). Needs the values: none for a meta model. The INT8 forms
    are made from the fp32 file, so they inherit its merges."""
    import torch

    seen: set[tuple] = set()
    merged: set[str] = set()
    for t in weights.tensors:
        if t.data.device.type == "meta" or t.numel > DEDUPLICATE_MAX_ELEMENTS:
            continue
        value = t.data.detach().cpu()
        value = value.t() if t.role == "matmul" else value
        if variant == "fp16" and t.role != "float":  # `to_matmul_dtype`
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


@dataclass(frozen=True)
class Skeleton:
    """A graph without its weight data, for shape inference and the liveness simulation.

    Initializers over `keep_elements` elements become graph inputs of their fixed shape (so that shape inference
    knows their shapes without holding their bytes: it only reads the values of small ones)."""

    model: onnx.ModelProto
    inputs: tuple[str, ...]  # the graph's real inputs
    weights: frozenset[str]  # initializers and Constant outputs: not activations


def graph_skeleton(path: Path, keep_elements: int = 1024) -> Skeleton:
    """Load `path` (external data is not read) as a Skeleton."""
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = tuple(i.name for i in graph.input if i.name not in initializers)
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    keep = []
    for init in graph.initializer:
        if math.prod(init.dims) <= keep_elements and init.data_location != onnx.TensorProto.EXTERNAL:
            keep.append(init)
        elif init.name not in {i.name for i in graph.input}:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return Skeleton(model, inputs, frozenset(initializers | constants))


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
    """A tensor's concrete shape and ONNX element type."""

    shape: tuple[int, ...]
    elem_type: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * onnx.helper.tensor_dtype_to_np_dtype(self.elem_type).itemsize

    @property
    def dtype(self) -> str:
        return str(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))


def infer_shapes(skeleton: Skeleton, shapes: Mapping[str, Sequence[int]]) -> dict[str, TensorInfo]:
    """Concrete shape and element type of every graph input and node output for the given input shapes (ONNX
    Runtime's symbolic shape inference on the graph with fixed input dims). Raises ShapeInferenceError unless
    every one of them is fully known."""
    if set(skeleton.inputs) != set(shapes):
        raise ValueError(f"shapes for {sorted(shapes)}, the graph's inputs are {sorted(skeleton.inputs)}")
    model = onnx.ModelProto()
    model.CopyFrom(skeleton.model)
    del model.graph.value_info[:]
    for value in model.graph.input:
        if value.name not in shapes:
            continue
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
    for name in [*skeleton.inputs, *(o for n in out.node if n.op_type != "Constant" for o in n.output if o)]:
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


def _weight_only(nodes: Sequence[onnx.NodeProto], weights: Iterable[str]) -> tuple[set[int], set[str]]:
    """Nodes (by id) whose inputs are all weights or made from weights only, and every tensor so made."""
    derived, only = set(weights), set()
    for node in nodes:  # ONNX graphs are topologically sorted
        if all(not i or i in derived for i in node.input):
            only.add(id(node))
            derived.update(o for o in node.output if o)
    return only, derived


def weight_derived(graph: onnx.GraphProto, weights: Iterable[str]) -> set[str]:
    """`weights` and every tensor computed from weights alone (e.g. a QDQ graph's dequantized weights)."""
    return _weight_only(list(graph.node), weights)[1]


def execution_order(graph: onnx.GraphProto, weights: Iterable[str]) -> list[onnx.NodeProto]:
    """The graph's nodes (Constant nodes left out) in their exported order, except that a node computed from
    weights alone (a QDQ graph's weight DequantizeLinear) runs right before its first consumer, as in ONNX
    Runtime's order (a depth-first walk from the outputs) rather than all at the start where the quantizer
    put them."""
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    only, _ = _weight_only(nodes, weights)
    producer = {o: n for n in nodes for o in n.output if o}
    order: list[onnx.NodeProto] = []
    emitted: set[int] = set()

    def emit(node: onnx.NodeProto) -> None:
        if id(node) in emitted:
            return
        for name in node.input:
            source = producer.get(name)
            if source is not None and id(source) in only:
                emit(source)
        emitted.add(id(node))
        order.append(node)

    for node in nodes:
        if id(node) not in only:
            emit(node)
    order += [n for n in nodes if id(n) not in emitted]  # made from weights and used by nothing
    return order


def attention_chains(graph: onnx.GraphProto, weights: frozenset[str]) -> set[str]:
    """Tensors of each attention's score chain: from the output of an activation x activation MatMul (QK^T)
    through element-wise steps to the first input of the next one (softmax(.)V). A fused attention kernel keeps
    them on chip; everything else it still writes out."""
    producer = {o: n for n in graph.node for o in n.output}
    weights = weight_derived(graph, weights)
    act_matmuls = [n for n in graph.node if n.op_type == "MatMul" and not (set(n.input) & weights)]
    chains: set[str] = set()
    for pv in act_matmuls:
        path, name = [], pv.input[0]
        while name in producer:
            node = producer[name]
            path.append(name)
            if node in act_matmuls:
                chains.update(path)
                break
            if node.op_type not in ATTENTION_CHAIN_OPS:
                break
            # the scores: the input with the output's shape class, i.e. the first produced non-weight input
            sources = [i for i in node.input if i and i not in weights and i in producer]
            if not sources:
                break
            name = sources[-1] if node.op_type == "Where" else sources[0]
    return chains


@dataclass(frozen=True)
class Peak:
    """The most bytes of activations live at once, the node where it happens and the largest tensors then."""

    bytes: int
    node: str
    largest: tuple[tuple[str, tuple[int, ...], str, int], ...]  # (tensor, shape, dtype, bytes)


def simulate(graph: onnx.GraphProto, infos: Mapping[str, TensorInfo], weights: Iterable[str] = (), *,
             views: bool = True, free: Iterable[str] = ()) -> Peak:  # fmt: skip
    """Live bytes in execution order (`execution_order`): each node's outputs are allocated when it runs (while
    its inputs are live) and a tensor is freed after its last consumer. Graph inputs are live throughout, graph
    outputs until the end; initializers, Constant outputs and `weights` are not activations. With `views`,
    reshape-like ops (VIEW_OPS) alias their input's buffer, as ONNX Runtime's kernels do. Tensors in `free` take
    no memory (a fused kernel's).
    """
    weights = set(weights) | {i.name for i in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    free = set(free)
    nodes = execution_order(graph, weights)
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
    holders: dict[str, int] = {}  # owner -> tensors still referring to it
    pinned: set[str] = set()  # owners never freed: graph inputs and outputs
    live: dict[str, int] = {}  # owner -> bytes
    for value in graph.input:
        if value.name not in weights:
            buffer[value.name] = value.name
            holders[value.name] = 1
            pinned.add(value.name)
            live[value.name] = 0 if value.name in free else infos[value.name].nbytes
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
                buffer[name] = buffer[source]
                holders[buffer[name]] += 1
            else:
                buffer[name] = name
                holders[name] = 1
                live[name] = 0 if name in free else infos[name].nbytes
            if name in outputs:
                pinned.add(buffer[name])
        total = sum(live.values())
        if total > peak.bytes:
            top = sorted(live.items(), key=lambda kv: -kv[1])[:6]
            largest = tuple((n, infos[n].shape, infos[n].dtype, b) for n, b in top if b)
            peak = Peak(total, f"{node.op_type} {node.name}", largest)
        for name in {n for n in [*node.input, *produced] if n in buffer and last_use.get(n, -1) <= k}:
            if name in outputs:
                continue
            owner = buffer.pop(name)
            holders[owner] -= 1
            if holders[owner] == 0 and owner not in pinned:
                live.pop(owner, None)
    return peak


class ActivationModel:
    """One exported graph, for activation peaks at any input shapes (cached per shapes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.skeleton = graph_skeleton(self.path)
        self.fused = attention_chains(self.skeleton.model.graph, self.skeleton.weights)
        self._cache: dict[tuple, tuple[Peak, Peak]] = {}

    def peaks(self, shapes: Mapping[str, Sequence[int]]) -> tuple[Peak, Peak]:
        """(unfused peak, fused-attention estimate) for one call with inputs of these shapes."""
        key = tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
        if key not in self._cache:
            infos = infer_shapes(self.skeleton, shapes)
            graph, weights = self.skeleton.model.graph, self.skeleton.weights
            self._cache[key] = (simulate(graph, infos, weights), simulate(graph, infos, weights, free=self.fused))
        return self._cache[key]

    def peak(self, shapes: Mapping[str, Sequence[int]]) -> int:
        """Unfused peak bytes for one call with inputs of these shapes."""
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


def _calibration(graphs: dict[str, nn.Module]) -> dict[str, list[dict[str, np.ndarray]]]:
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

    from export.onnx_export import export_float_graphs
    from export.quantize import half_embeddings, quantize_dynamic_int8, quantize_qdq
    from export.random_checkpoint import QWEN2_VL_SPECIAL_TOKENS, SIZES
    from export.spec import GRAPHS

    vocab = SIZES["real"].bpe_vocab + len(QWEN2_VL_SPECIAL_TOKENS)  # the random checkpoint's tokenizer length
    settings = {"size": "real", "layers": layers, "variants": list(variants), "vocab_size": vocab}
    marker = folder / "slice.json"
    paths = {v: {spec.name: folder / v / f"{spec.name}.onnx" for spec in GRAPHS} for v in variants}
    if not rebuild and marker.exists():
        done = json.loads(marker.read_text())
        if done.get("settings") == settings and all(p.exists() for g in paths.values() for p in g.values()):
            return {**done, "reused": True}
    started = time.time()
    torch.manual_seed(0)
    config = qwen2vl_config("real", vocab_size=vocab, text_layers=layers, vision_depth=layers)
    model = build_model(config, "cpu")
    graphs = graph_modules(model)
    parameters = {name: trace_graph_weights(g).parameters for name, g in graphs.items()}
    with torch.no_grad():
        export_float_graphs(graphs, folder, "fp16" in variants)
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
    visual_rows: int = 0  # text: rows of visual_features (the image prompts' visual tokens; 1 for queries)
    in_gpu_budget: bool = False  # a call the GPU runner may send under the precision's SESSION_BUDGETS["gpu"]
    trt_box: bool = False  # the TensorRT profile's max shapes (what TensorRT may plan memory for)
    note: str = ""

    def shapes(self, hidden: int) -> dict[str, tuple[int, ...]]:
        if self.graph == "vision_encoder":
            return vision_shapes(self.batch, self.length)
        return text_shapes(self.batch, self.length, self.visual_rows, hidden)


def image_tokens(width: int, height: int, cap: int = CAP_TOKENS) -> int:
    """Visual tokens of a width x height image under the published pixel limits, capped (`grid.smart_resize`)."""
    from export.random_checkpoint import PUBLISHED_MIN_PIXELS
    from model_repository.colqwen2_serving.grid import PIXELS_PER_TOKEN, PixelLimits, smart_resize, token_grid

    rows, cols = token_grid(*smart_resize(height, width, PixelLimits(PUBLISHED_MIN_PIXELS, cap * PIXELS_PER_TOKEN)))
    return rows * cols


def gpu_budgets(precision: str, cap: int = CAP_TOKENS) -> dict[str, int]:
    """A GPU host's call budgets for `precision` as `render.py` writes them, with the item counts the encoder
    derives when they are 0 (`runners.bounded`: as many items at the cap as the budget holds)."""
    from model_repository.render import SESSION_BUDGETS

    budgets = dict(SESSION_BUDGETS["gpu"][precision])
    if not budgets["max_session_images"]:
        budgets["max_session_images"] = max(1, budgets["max_session_patches"] // (4 * cap))
    if not budgets["max_session_sequences"]:
        budgets["max_session_sequences"] = max(1, budgets["max_session_tokens"] // max(QUERY_TOKENS, cap + 15))
    return budgets


def largest_call(budget_size: int, budget_items: int, length: int) -> int:
    """Items in the largest call of `length`-long items under a `Budget` (`feeds.plan_calls`: an item larger than
    the budget gets a call of its own)."""
    items = max(1, budget_size // length)
    return min(items, budget_items) if budget_items else items


def scenarios(budgets: Mapping[str, int], cap: int = CAP_TOKENS) -> list[Scenario]:
    """The calls reported: one item at the cap, the largest calls under the GPU budgets (and TensorRT's profile
    box), and batches of 32."""
    from model_repository.colqwen2_serving.runners import Budget, text_profile, vision_profile

    cap_patches, prompt = 4 * cap, cap + PROMPT_EXTRA_TOKENS
    keepa, photo = image_tokens(500, 200, cap), image_tokens(448, 448, cap)
    v_size, v_items = budgets["max_session_patches"], budgets["max_session_images"]
    t_size, t_items = budgets["max_session_tokens"], budgets["max_session_sequences"]
    v_box = {name: high for name, _, _, high in vision_profile(Budget(v_size, v_items), cap)}["patches"][:2]
    t_box = {name: high for name, _, _, high in text_profile(Budget(t_size, t_items), prompt, 1)}
    v_call, t_call, q_call = (largest_call(v_size, v_items, cap_patches), largest_call(t_size, t_items, prompt),
                              largest_call(t_size, t_items, QUERY_TOKENS))  # fmt: skip

    def vision(name: str, batch: int, length: int, note: str = "") -> Scenario:
        ok = batch * length <= v_size and batch <= (v_items or batch)
        return Scenario("vision_encoder", name, batch, length, 0, ok, (batch, length) == v_box, note)

    def text(name: str, batch: int, length: int, rows: int, note: str = "", box: bool = False) -> Scenario:
        ok = batch * length <= t_size and batch <= (t_items or batch)
        return Scenario("text_encoder", name, batch, length, rows, ok and not box, box, note)

    budget = f"max_session_tokens {t_size}, max_session_sequences {t_items}"
    return [
        vision("1 image at the cap", 1, cap_patches, f"{cap} tokens"),
        vision("GPU call budget: largest call", v_call, cap_patches,
               f"max_session_patches {v_size}, max_session_images {v_items}; also the TensorRT box"),
        vision("32 Keepa charts 500x200", 32, 4 * keepa, f"{keepa} tokens each"),
        vision("32 images 448x448", 32, 4 * photo, f"{photo} tokens each"),
        text("1 image prompt at the cap", 1, prompt, cap),
        text("GPU call budget: largest image-prompt call", t_call, prompt, t_call * cap, budget),
        text("GPU call budget: largest query call", q_call, QUERY_TOKENS, 1, budget),
        text("GPU TensorRT box", t_box["input_ids"][0], t_box["input_ids"][1], t_box["visual_features"][0],
             "text_profile's max shapes", box=True),
        text("32 queries of 32 tokens", 32, 32, 1),
        text("32 image prompts 448x448", 32, photo + PROMPT_EXTRA_TOKENS, 32 * photo, f"{photo} visual tokens each"),
    ]  # fmt: skip


def text_call_peak(model: ActivationModel, hidden: int, sequences: int, tokens: int, cap: int = CAP_TOKENS,
                   fused: bool = False) -> int:  # fmt: skip
    """The largest peak among the text calls under Budget(tokens, sequences) with `cap` visual tokens per image:
    image prompts at the cap and at 448x448, queries at the longest (512) and at 32 tokens."""
    photo = min(image_tokens(448, 448), cap)
    kinds = ((cap + PROMPT_EXTRA_TOKENS, cap), (photo + PROMPT_EXTRA_TOKENS, photo), (QUERY_TOKENS, 0), (32, 0))
    peaks = []
    for length, rows in kinds:
        b = largest_call(tokens, sequences, length)
        peaks.append(model.peaks(text_shapes(b, length, b * rows, hidden))[1 if fused else 0].bytes)
    return max(peaks)


def _largest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest x in [lo, hi] with fits(x), for a monotone `fits`; lo - 1 if none."""
    if not fits(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def recommend(vision: ActivationModel, text: ActivationModel, hidden: int, room: int, sequences: int,
              tokens_today: int, fused: bool = False) -> dict:  # fmt: skip
    """The largest GPU call budgets whose vision + text activation peaks fit in `room` bytes.

    For n images per vision call at the 768-token cap (max_session_patches n x 3072), the largest
    max_session_tokens for the text runner (keeping `sequences` as max_session_sequences): the text peak
    grows with the padded tokens of a call (the MLP's [tokens, 8960] float32 tensors), whatever mix of
    prompts and queries fills it. The pick is the largest n whose text budget still takes n image prompts
    at the cap in one call and, where some n allows it, is no smaller than today's `tokens_today`. If not
    even one image at the cap fits, the largest max_visual_tokens that does, one item per call. `fused`: with
    the fused-attention estimate instead of the unfused bound."""
    which = 1 if fused else 0
    cap_patches, prompt = 4 * CAP_TOKENS, CAP_TOKENS + PROMPT_EXTRA_TOKENS

    def vision_peak(n: int, patches: int = cap_patches) -> int:
        return vision.peaks(vision_shapes(n, patches))[which].bytes

    def text_peak(tokens: int, items: int, cap: int = CAP_TOKENS) -> int:
        return text_call_peak(text, hidden, items, tokens, cap, fused)

    frontier = []
    for n in range(1, sequences + 1):
        left = room - vision_peak(n)
        tokens = _largest(lambda t, left=left: text_peak(t, sequences) <= left, prompt, sequences * prompt)
        if tokens < prompt:
            break
        frontier.append({"images_per_vision_call": n, "vision_peak": room - left, "max_session_tokens": tokens,
                         "image_prompts_per_text_call": min(sequences, tokens // prompt)})  # fmt: skip
    result: dict[str, Any] = {"room_bytes": room, "basis": "fused" if fused else "unfused", "frontier": frontier}
    balanced = [f for f in frontier if f["image_prompts_per_text_call"] >= f["images_per_vision_call"]]
    keeps_text = [f for f in balanced if f["max_session_tokens"] >= tokens_today]
    if balanced:
        pick = (keeps_text or balanced)[-1]
        n = pick["images_per_vision_call"]
        result["max_visual_tokens"] = CAP_TOKENS
        result["budgets"] = {
            "max_session_patches": n * cap_patches,
            "max_session_images": n,
            "max_session_tokens": pick["max_session_tokens"],
            "max_session_sequences": sequences,
        }
        result["activations"] = pick["vision_peak"] + text_peak(pick["max_session_tokens"], sequences)
        return result

    def need(cap: int) -> int:
        return vision_peak(1, 4 * cap) + text_peak(cap + PROMPT_EXTRA_TOKENS, 1, cap)

    cap = _largest(lambda c: need(c) <= room, 4, CAP_TOKENS)
    result["needed_at_cap"] = need(CAP_TOKENS)
    result["max_visual_tokens"] = cap if cap >= 4 else 0
    if cap >= 4:
        result["budgets"] = {"max_session_patches": 4 * cap, "max_session_images": 1,
                             "max_session_tokens": cap + PROMPT_EXTRA_TOKENS, "max_session_sequences": 1}  # fmt: skip
        result["activations"] = need(cap)
    return result


def deployment(precision: str, weights: Mapping[str, int], rows: Sequence[dict], basis: str, overhead: int) -> dict:
    """Weights + the largest vision call + the largest text call + overhead, against the precision's limit.

    basis "call": the largest calls under today's GPU budgets, unfused peaks; "box": TensorRT's profile maxima
    at unfused peaks; "fused": the "call" calls with the fused-attention estimate; "box fused": the profile
    maxima with the fused-attention estimate (the closest to what TensorRT plans)."""
    variant = DEPLOYMENTS[precision]
    key = "fused_attention_estimate" if "fused" in basis else "peak"
    picks = {}
    for graph in GRAPH_NAMES:
        mine = [r for r in rows if r["graph"] == graph and (r["box" if "box" in basis else "in_budget"][precision])]
        best = max(mine, key=lambda r: r[key][variant])
        picks[graph] = {"scenario": best["name"], "shape": [best["batch"], best["length"]], "peak": best[key][variant]}
    total = sum(weights.values()) + sum(p["peak"] for p in picks.values()) + overhead
    return {
        "precision": precision,
        "variant": variant,
        "basis": basis,
        "weights": dict(weights),
        "vision": picks["vision_encoder"],
        "text": picks["text_encoder"],
        "overhead": overhead,
        "total": total,
        "limit": LIMITS[precision],
        "fits": total <= LIMITS[precision],
    }


# --------------------------------------------------------------------------------------------
# The run and its report
# --------------------------------------------------------------------------------------------


def real_weights(embedding_min_elements: int | None = None) -> dict:
    """Per graph and variant, the real-size checkpoint's initializer bytes (a meta model: no memory)."""
    model = build_model(qwen2vl_config("real"), "meta")
    traced = {name: trace_graph_weights(g) for name, g in graph_modules(model).items()}
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vision_parameters": sum(p.numel() for p in model.visual.parameters()),
        "graph_parameters": {name: t.parameters for name, t in traced.items()},
        "weight_matmuls": {name: t.linear_calls for name, t in traced.items()},
        "bytes": {v: {g: weight_bytes(t, v, embedding_min_elements) for g, t in traced.items()} for v in VARIANTS},
    }


def run(out_dir: Path, workdir: Path, overhead_gib: float, rebuild: bool = False) -> dict:
    """Compute everything and write `memory-real.json` and `memory-real.md` into `out_dir`."""
    started = time.time()
    hidden = qwen2vl_config("real").text_config.hidden_size
    weights = real_weights()
    log.info("real-size weights: %d parameters", weights["parameters"])
    slice_info = export_slice(workdir / f"slice-{SLICE_LAYERS}", SLICE_LAYERS, rebuild=rebuild)
    folder = workdir / f"slice-{SLICE_LAYERS}"
    models = {v: {g: ActivationModel(folder / v / f"{g}.onnx") for g in GRAPH_NAMES} for v in VARIANTS}
    budgets = {precision: gpu_budgets(precision) for precision in DEPLOYMENTS}
    calls: dict[tuple, dict] = {}  # one row per distinct call; per precision whether its budgets allow it
    for precision, precision_budgets in budgets.items():
        for s in scenarios(precision_budgets):
            specific = (s.in_gpu_budget and s.name.startswith("GPU")) or s.trt_box
            key = (s.graph, s.batch, s.length, s.visual_rows, s.name if specific else "")
            row = calls.setdefault(key, {"scenario": s, "in_budget": {}, "box": {}})
            if specific and row["scenario"].name == s.name:
                row["scenario"] = replace(s, name=f"{precision}: {s.name}")
            row["in_budget"][precision] = s.in_gpu_budget
            row["box"][precision] = s.trt_box
    rows = []
    for entry in calls.values():
        s = entry["scenario"]
        peaks = {v: models[v][s.graph].peaks(s.shapes(hidden)) for v in VARIANTS}
        rows.append(
            {
                **asdict(s),
                "in_budget": {p: entry["in_budget"].get(p, False) for p in DEPLOYMENTS},
                "box": {p: entry["box"].get(p, False) for p in DEPLOYMENTS},
                "peak": {v: p[0].bytes for v, p in peaks.items()},
                "fused_attention_estimate": {v: p[1].bytes for v, p in peaks.items()},
                "at": {v: {"node": p[0].node, "largest": [list(x) for x in p[0].largest]} for v, p in peaks.items()},
            }
        )
        log.info("%s, %s: fp16 peak %.3f GB", s.graph, s.name, peaks["fp16"][0].bytes / GB)
    calls = [entry["scenario"] for entry in calls.values()]

    # The peak is the same for any layer count from 2 on: the same calls on fp32 slices of 1, 2 and 3 layers.
    check_slices, by_layers = {}, {SLICE_LAYERS: models["fp32"]}
    for layers in (1, 3):
        check_slices[layers] = export_slice(workdir / f"slice-{layers}", layers, ("fp32",), rebuild)
        by_layers[layers] = {
            g: ActivationModel(workdir / f"slice-{layers}" / "fp32" / f"{g}.onnx") for g in GRAPH_NAMES
        }
    layer_check = [
        {
            "scenario": f"{s.graph}: {s.name}",
            **{str(n): by_layers[n][s.graph].peak(s.shapes(hidden)) for n in (1, 2, 3)},
        }
        for s in calls
        if s.in_gpu_budget or s.trt_box
    ]

    overhead = round(ENCODER_PROCESSES * overhead_gib * GIB)
    deployments, recommendations = [], {}
    for precision, variant in DEPLOYMENTS.items():
        w = {g: weights["bytes"][variant][g]["total"] for g in GRAPH_NAMES}
        bases = ("call", "box", "fused", "box fused")
        deployments += [deployment(precision, w, rows, basis, overhead) for basis in bases]
        room = LIMITS[precision] - sum(w.values()) - overhead
        log.info("%s: %.3f GB left for activations; searching budgets", precision, room / GB)
        recommendations[precision] = {
            basis: recommend(models[variant]["vision_encoder"], models[variant]["text_encoder"], hidden, room,
                             32, budgets[precision]["max_session_tokens"], basis == "fused")
            for basis in ("unfused", "fused")
        }  # fmt: skip
        for rec in recommendations[precision].values():
            if "activations" in rec:
                rec["total"] = sum(w.values()) + overhead + rec["activations"]

    result = {
        "command": " ".join(["python -m bench.memory", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()}, {os_cpu_count()} cores, no GPU",
        "versions": {p: version(p) for p in ("torch", "onnx", "onnxruntime", "transformers", "colpali-engine")},
        "seconds": 0.0,
        "checkpoint": "real: Qwen2-VL-2B shapes (export.random_checkpoint.SIZES['real'])",
        "cap_tokens": CAP_TOKENS,
        "gpu_budgets_today": budgets,
        "overhead_per_process_bytes": round(overhead_gib * GIB),
        "weights": weights,
        "slice": slice_info,
        "layer_check_slices": check_slices,
        "activations": rows,
        "layer_count_check": layer_check,
        "deployments": deployments,
        "recommended_gpu_budgets": recommendations,
        "assumptions": assumptions(overhead_gib),
    }
    result["seconds"] = round(time.time() - started, 1)
    result["peak_rss_bytes"] = peak_rss()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory-real.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "memory-real.md").write_text(markdown(result))
    return result


def peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def os_cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def assumptions(overhead_gib: float) -> list[str]:
    """What the numbers rest on, for the report."""
    return [
        "Weights: the real-size ColQwen2 (2.209 B parameters) built on the meta device; bytes per initializer from "
        "the export rules, checked against the tiny export in tests/test_memory.py (equal up to the graph's "
        "shape constants, a few hundred bytes, not counted here). Trained weights hold no identical small tensors "
        "for the exporter to merge, so none are merged here.",
        "Weights are held once per process on the GPU (by the ONNX Runtime CUDA session or the TensorRT engine). "
        "A TensorRT engine build needs extra workspace while it runs: not counted.",
        f"Activations: simulated on a slice with the real widths ({SLICE_LAYERS} vision blocks, {SLICE_LAYERS} text "
        "layers, 2014-token vocabulary) in the exported node order, a node computed from weights alone (a QDQ "
        "weight's DequantizeLinear) right before its consumer as ONNX Runtime orders it; reshape-like ops are "
        "views; graph inputs are live throughout; weights excluded. The peak does not change from 2 layers on "
        "(checked on 1, 2 and 3 layers). An upper bound for an unfused runtime (ONNX Runtime CPU/CUDA) that "
        "reuses no buffer before its last consumer; kernels' scratch workspaces are part of the runtime overhead.",
        "TensorRT fuses attention and plans its own memory for the profile's max shapes: the 'fused attention' "
        "figures drop the QK^T..softmax score tensors and are an estimate, not a bound.",
        "int8 activations are those of the QDQ graph (float32 around the quantize/dequantize pairs, plus the float32 "
        "dequantized weight of the matmul in flight): what ONNX Runtime's CUDA provider runs. The fp32 graph's peak "
        "is listed beside it. Its weights stay int8 in memory: ONNX Runtime's constant folding leaves "
        "DequantizeLinear alone unless session.disable_quant_qdq is set. TensorRT runs the QDQ graph's float parts "
        "in fp16 (trt_fp16_enable) and fuses the quantize/dequantize pairs into its int8 kernels, so its int8 "
        "activations are smaller than the fused estimate here, which only drops the attention scores.",
        f"Runtime overhead: {overhead_gib:g} GiB for the one encoder process of a precision (both graphs, one CUDA "
        "context), an assumption. " + OVERHEAD_NOTE,
        "The encoder's CUDA sessions grow their arenas as requested (arena_extend_strategy kSameAsRequested, set by "
        "colqwen2_serving/sessions.py), not in powers of two.",
        "The vision and the text session run one after the other in the encoder process, but each keeps its arena, "
        "so their peaks add up.",
        "Image prompts are 15 tokens + the visual tokens (783 at the 768-token cap); queries at most 512 tokens; "
        "a query call carries one zero visual row, as the runner sends.",
    ]


def _gb(n: float) -> str:
    return f"{n / GB:.3f}"


def _gib(n: float) -> str:
    return f"{n / GIB:.3f}"


def _which(flags: Mapping[str, bool]) -> str:
    """The precisions whose budgets a call is in (or whose TensorRT box it is), as "fp16, int8"."""
    return ", ".join(p for p, on in flags.items() if on)


def _exported(r: dict) -> str:
    fresh = [s for s in (r["slice"], *r["layer_check_slices"].values()) if not s.get("reused")]
    return f"{len(fresh)} of 3, {sum(s['export_seconds'] for s in fresh):.0f} s" if fresh else "none, all reused"


def summary(r: dict) -> list[str]:
    """The findings in a few lines: the deployments under today's budgets and the budgets that fit."""
    lines = ["## Summary", ""]
    by = {(d["precision"], d["basis"]): d for d in r["deployments"]}
    for precision in DEPLOYMENTS:
        call, fused = by[precision, "call"], by[precision, "fused"]
        weights = sum(call["weights"].values())
        verdict = "fits" if call["fits"] else "does **not** fit"
        lines.append(
            f"- **{precision}**: weights {_gb(weights)} GB; under today's GPU budgets {_gb(call['total'])} GB "
            f"({_gib(call['total'])} GiB) with unfused activations: {verdict} {call['limit'] / GB:g} GB "
            f"(fused-attention estimate {_gb(fused['total'])} GB: {'fits' if fused['fits'] else 'does not fit'})."
        )
        for basis, rec in r["recommended_gpu_budgets"][precision].items():
            if "budgets" not in rec:
                lines.append(f"  - {basis}: no budget fits.")
                continue
            b = rec["budgets"]
            cap = "" if rec["max_visual_tokens"] == CAP_TOKENS else f"max_visual_tokens {rec['max_visual_tokens']}, "
            lines.append(
                f"  - recommended ({basis}): {cap}max_session_images {b['max_session_images']} "
                f"(max_session_patches {b['max_session_patches']}), max_session_tokens {b['max_session_tokens']}, "
                f"max_session_sequences {b['max_session_sequences']}: {_gb(rec['total'])} GB."
            )
    return lines


def markdown(r: dict) -> str:
    """The report: weight bytes, activation peaks, deployments, recommended budgets, assumptions."""
    w = r["weights"]
    lines = [
        "# GPU memory of the real-size ColQwen2 deployments",
        "",
        f"`{r['command']}` on {r['machine']}, {r['date']}: {r['seconds']} s, peak RSS "
        f"{r['peak_rss_bytes'] / GIB:.1f} GiB (slices exported: {_exported(r)}). Checkpoint: {r['checkpoint']}, "
        f"{w['parameters']:,} parameters ({w['vision_parameters']:,} in the vision tower). "
        "GB = 1e9 bytes, GiB = 2^30 bytes.",
        "",
        *summary(r),
        "",
        "## Weight bytes per graph and variant",
        "",
        "Exact, from the real-size model's parameters and the export rules (no 2.2 B export needed). Bytes.",
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
        "GB live at once during one call, weights excluded, from the graph's tensor shapes. First number: "
        "unfused (an upper bound for ONNX Runtime CPU/CUDA); in brackets: the fused-attention estimate (score "
        "tensors not materialised, as TensorRT's fused attention). `in budget`: the precisions whose GPU budgets "
        "let the runner send this call; `box`: whose TensorRT profile maxima it is. Length in patches (vision) or "
        "tokens (text).",
        "",
        "| graph | call | batch x length | in budget | box | fp32 | fp16 | int8 (QDQ) | int8_dynamic | fp16 peak at |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for a in r["activations"]:
        cells = " | ".join(f"{_gb(a['peak'][v])} ({_gb(a['fused_attention_estimate'][v])})" for v in VARIANTS)
        at = a["at"]["fp16"]
        big = ", ".join(f"{dt}{list(shape)}" for _, shape, dt, _ in at["largest"][:3])
        size = f"{a['batch']} x {a['length']}" + (f", {a['visual_rows']} visual rows" if a["visual_rows"] else "")
        note = f" ({a['note']})" if a["note"] else ""
        lines.append(
            f"| {a['graph']} | {a['name']}{note} | {size} | {_which(a['in_budget']) or 'no'} | "
            f"{_which(a['box'])} | {cells} | {at['node'].split(' ')[0]}: {big} |"
        )
    lines += [
        "",
        "Layer count (fp32 slices, GB): tables read by every layer (rotary cos/sin, the attention bias) stay live "
        "until the last layer, which a 1-layer graph reaches at once; from 2 layers on the peak does not change, "
        f"so the {SLICE_LAYERS}-layer slice stands for the 28-layer text tower and the 32-block vision tower.",
        "",
        "| call | 1 layer | 2 layers | 3 layers |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {c['scenario']} | {_gb(c['1'])} | {_gb(c['2'])} | {_gb(c['3'])} |" for c in r["layer_count_check"]]
    lines += [
        "",
        "## Deployments",
        "",
        "Weights of both graphs + the largest vision call + the largest text call (each session keeps its arena) "
        f"+ runtime overhead ({r['overhead_per_process_bytes'] / GIB:g} GiB for the one encoder process, assumed). "
        "Basis `call`: the largest calls ONNX Runtime can get under today's GPU budgets, unfused peaks (the "
        "verdict); `box`: TensorRT's profile maxima at unfused peaks; `fused`: the `call` calls with the "
        "fused-attention estimate; `box fused`: the profile maxima with the fused-attention estimate, the closest "
        "to what TensorRT may plan for. Items per call left at 0 in the budgets are as many items at the cap as the "
        "budget holds, so each TensorRT box is the call budget itself.",
        "",
        "| precision | basis | weights GB | vision call | GB | text call | GB | overhead GB | total GB | total GiB "
        "| limit GB | fits |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for d in r["deployments"]:
        v, t = d["vision"], d["text"]
        lines.append(
            f"| {d['precision']} ({d['variant']} graphs) | {d['basis']} | {_gb(sum(d['weights'].values()))} | "
            f"{v['shape'][0]} x {v['shape'][1]} | {_gb(v['peak'])} | {t['shape'][0]} x {t['shape'][1]} | "
            f"{_gb(t['peak'])} | {_gb(d['overhead'])} | **{_gb(d['total'])}** | {_gib(d['total'])} | "
            f"{d['limit'] / GB:g} | {'yes' if d['fits'] else '**no**'} |"
        )
    lines += [
        "",
        "## Recommended GPU call budgets",
        "",
        f"Today (`render.SESSION_BUDGETS['gpu']`, item counts resolved): `{r['gpu_budgets_today']}`. The largest "
        "budgets whose vision + "
        "text peaks fit what the limit leaves after weights and overhead, at the 768-token cap: per images per "
        "vision call, the largest max_session_tokens of the text runner (max_session_sequences kept); the pick is "
        "the most images per vision call whose text budget still takes that many image prompts in one call. "
        "`unfused` is the bound to configure ONNX Runtime by; `fused` is the TensorRT estimate. TensorRT's text "
        "profile box is max_session_sequences x 783 tokens (`runners.text_profile`): left at 0, the sequences "
        "are max_session_tokens // 783 and the box is the call budget.",
        "",
    ]
    for precision, bases in r["recommended_gpu_budgets"].items():
        for basis, rec in bases.items():
            head = f"- **{precision}, {basis}**: {_gb(rec['room_bytes'])} GB left for activations. "
            total = f" Total with them: {_gb(rec['total'])} GB." if "total" in rec else ""
            if rec["max_visual_tokens"] == CAP_TOKENS:
                lines.append(head + f"Recommended: `{rec['budgets']}`.{total}")
            elif rec["max_visual_tokens"]:
                lines.append(
                    head + f"One image and its prompt at the cap need {_gb(rec['needed_at_cap'])} GB: the cap "
                    f"must come down to max_visual_tokens {rec['max_visual_tokens']}, one item per call: "
                    f"`{rec['budgets']}`.{total}"
                )
            else:
                lines.append(head + "Nothing fits, not even one image of 4 visual tokens.")
            lines += [
                f"  - {f['images_per_vision_call']} image(s) per vision call ({_gb(f['vision_peak'])} GB): text "
                f"max_session_tokens up to {f['max_session_tokens']} ({f['image_prompts_per_text_call']} image "
                "prompts at the cap per call)"
                for f in rec["frontier"]
            ]
    s = r["slice"]
    lines += ["", "## Assumptions", "", *[f"- {a}" for a in r["assumptions"]], ""]
    lines += [
        f"Slice: real widths, {SLICE_LAYERS} vision blocks + {SLICE_LAYERS} text layers, vocabulary "
        f"{s['vocab_size']} ({s['graph_parameters']['vision_encoder']:,} + {s['graph_parameters']['text_encoder']:,} "
        f"parameters), exported in {s['export_seconds']} s (fp32, fp16, int8 QDQ, int8 dynamic) to the workdir "
        "(reused by later runs).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for memory-real.*")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-memory"), help="slice exports go here")
    parser.add_argument("--overhead-gib", type=float, default=DEFAULT_OVERHEAD_GIB,
                        help="runtime memory per encoder process, GiB (default: %(default)s)")  # fmt: skip
    parser.add_argument("--rebuild", action="store_true", help="export the slices again even if present")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    result = run(args.out, args.workdir, args.overhead_gib, args.rebuild)
    for d in result["deployments"]:
        verdict = "fits" if d["fits"] else "does NOT fit"
        print(f"{d['precision']:5} {d['basis']:9} {d['total'] / GB:6.3f} GB of {d['limit'] / GB:g} GB: {verdict}")
    print(args.out / "memory-real.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
