"""Weight bytes: which tensors a graph reads (traced on its forward), and what the export rules store for each."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from .model import VARIANTS, build_model, graph_modules, qwen2vl_config

if TYPE_CHECKING:
    from torch import nn

# The exporter (onnx_ir DeduplicateInitializersPass, run by torch.onnx's optimize=True) merges
# identical initializers of at most this many elements.
DEDUPLICATE_MAX_ELEMENTS = 1024
QPARAM_BYTES = 4 + 1  # one float32 scale + one int8 zero point


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
