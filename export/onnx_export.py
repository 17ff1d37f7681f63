"""torch -> ONNX for the encoder wrappers, with the dynamo exporter (opset 18)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .encoders import ImageEncoder, QueryEncoder
from .spec import MAX_BATCH, OPSET, EncoderSpec

log = logging.getLogger(__name__)

# The protobuf limit is 2 GiB; stay clear of it and move weights to one external data file.
EXTERNAL_DATA_BYTES = 1_500_000_000


def to_matmul_dtype(encoder: nn.Module, dtype: torch.dtype) -> None:
    """Cast the matmul and embedding weights in place; norms keep float32 weights."""
    for module in encoder.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.to(dtype)
    if isinstance(encoder, ImageEncoder):
        encoder.patch_weight.data = encoder.patch_weight.data.to(dtype)


def _dynamic_shapes(encoder: nn.Module) -> tuple[dict[int, object], ...]:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if isinstance(encoder, QueryEncoder):
        seq = torch.export.Dim("sequence", min=1, max=32768)
        return ({0: batch, 1: seq}, {0: batch, 1: seq})
    return ({0: batch},)


def example_inputs(encoder: nn.Module) -> tuple[torch.Tensor, ...]:
    """Batch 2 and a sequence of 7 so that the exporter keeps both axes symbolic."""
    if isinstance(encoder, ImageEncoder):
        s = encoder.image_size
        return (torch.randint(0, 256, (2, s, s, 3), dtype=torch.uint8),)
    ids = torch.randint(0, encoder.embed.num_embeddings, (2, 7), dtype=torch.int64)
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[0, :3] = 0  # left padding, as colpali-engine pads
    return ids, mask


def export_encoder(encoder: nn.Module, spec: EncoderSpec, path: Path) -> Path:
    """Export `encoder` to `path`; weights go to `<name>.onnx.data` for graphs near 2 GiB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
    n_bytes += sum(b.numel() * b.element_size() for b in encoder.buffers())
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis renaming are noise here
        program = torch.onnx.export(
            encoder.eval(),
            example_inputs(encoder),
            dynamo=True,
            opset_version=OPSET,
            input_names=list(spec.inputs),
            output_names=[spec.output],
            dynamic_shapes=_dynamic_shapes(encoder),
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=n_bytes > EXTERNAL_DATA_BYTES)
    log.info("wrote %s (%.1f MB of weights)", path, n_bytes / 1e6)
    return path
