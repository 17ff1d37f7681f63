"""Activation peaks: every tensor's shape for concrete input shapes, then a liveness simulation in node order."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import onnx

from model_repository.colqwen2_serving.grid import PATCH_VALUES

# Reshape-like ops: their output is a view of their input's buffer, as ONNX Runtime's kernels make it.
VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
# Element-wise steps between QK^T and softmax(.)V that a fused attention kernel never writes out.
ATTENTION_CHAIN_OPS = frozenset({"Cast", "Softmax", "Add", "Mul", "Div", "Sub", "Where"})


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
    return {
        "patches": (images, patches, PATCH_VALUES),
        "patch_positions": (images, patches, 2),
        "patch_mask": (images, patches),
    }


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
