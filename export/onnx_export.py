"""torch -> ONNX for the graph modules, with the dynamo exporter (opset 18)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .graphs import TextEncoderGraph, VisionEncoderGraph
from .spec import MAX_BATCH, MAX_SEQUENCE, MAX_VISUAL_TOKENS, OPSET, GraphSpec

log = logging.getLogger(__name__)

# The protobuf limit is 2 GiB; stay clear of it and move weights to one external data file.
EXTERNAL_DATA_BYTES = 1_500_000_000


def to_matmul_dtype(graph: nn.Module, dtype: torch.dtype) -> None:
    """Cast the matmul and embedding weights in place; norms keep float32 weights."""
    for module in graph.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.to(dtype)


def _dynamic_shapes(graph: nn.Module) -> tuple[dict[int, object], ...]:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if isinstance(graph, VisionEncoderGraph):
        tokens = torch.export.Dim("visual_tokens", min=1, max=MAX_VISUAL_TOKENS)
        patches = 4 * tokens
        return ({0: batch, 1: patches}, {0: batch, 1: patches}, {0: batch, 1: patches})
    seq = torch.export.Dim("sequence", min=1, max=MAX_SEQUENCE)
    rows = torch.export.Dim("visual_rows", min=1, max=MAX_BATCH * MAX_VISUAL_TOKENS)
    return ({0: batch, 1: seq}, {0: batch, 1: seq}, {1: batch, 2: seq}, {0: rows}, {0: batch, 1: seq})


def example_inputs(graph: nn.Module) -> tuple[torch.Tensor, ...]:
    """Sizes that differ from each other (and from 1) so that the exporter keeps every axis symbolic."""
    if isinstance(graph, VisionEncoderGraph):
        batch, patches = 3, 20
        mask = torch.ones(batch, patches, dtype=torch.int64)
        mask[1, 12:] = 0  # a shorter image, padded
        positions = torch.randint(0, 6, (batch, patches, 2), dtype=torch.int64)
        return torch.randint(0, 256, (batch, patches, 588), dtype=torch.uint8), positions, mask
    assert isinstance(graph, TextEncoderGraph)
    batch, seq, rows = 2, 7, 5
    ids = torch.randint(0, graph.lm.embed_tokens.num_embeddings, (batch, seq), dtype=torch.int64)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, :3] = 0  # left padding, as colpali-engine pads
    positions = torch.arange(seq, dtype=torch.int64).expand(3, batch, seq).contiguous()
    features = torch.randn(rows, graph.lm.config.hidden_size)
    index = torch.full((batch, seq), -1, dtype=torch.int64)
    index[1, 2:6] = torch.arange(4)
    return ids, mask, positions, features, index


def name_axes(path: Path, spec: GraphSpec) -> None:
    """Give the graph's inputs and output the spec's axis names (the exporter writes `4*visual_tokens`, `s72`)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for value in [*model.graph.input, *model.graph.output]:
        for axis, name in spec.axes.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            dim.ClearField("dim_value")
            dim.dim_param = name
    onnx.save(model, str(path))


def export_graph(graph: nn.Module, spec: GraphSpec, path: Path) -> Path:
    """Export `graph` to `path`; weights go to `<name>.onnx.data` for graphs near 2 GiB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = sum(p.numel() * p.element_size() for p in graph.parameters())
    n_bytes += sum(b.numel() * b.element_size() for b in graph.buffers())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis renaming are noise here
        program = torch.onnx.export(
            graph.eval(),
            example_inputs(graph),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(spec.inputs),
            output_names=[spec.output],
            dynamic_shapes=_dynamic_shapes(graph),
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=n_bytes > EXTERNAL_DATA_BYTES)
    name_axes(path, spec)
    log.info("wrote %s (%.1f MB of weights)", path, n_bytes / 1e6)
    return path


def export_float_graphs(graphs: dict[str, nn.Module], folder: Path, fp16: bool) -> None:
    """Every graph of `GRAPHS` to `folder/fp32/`, then (weights cast in place) to `folder/fp16/`."""
    from .spec import GRAPHS

    for spec in GRAPHS:
        export_graph(graphs[spec.name], spec, folder / "fp32" / f"{spec.name}.onnx")
    if fp16:
        for spec in GRAPHS:
            to_matmul_dtype(graphs[spec.name], torch.float16)
            export_graph(graphs[spec.name], spec, folder / "fp16" / f"{spec.name}.onnx")
