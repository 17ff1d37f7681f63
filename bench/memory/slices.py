"""The slice: real widths, a few vision blocks and text layers, a small vocabulary and random weights, exported in
every variant with the exporter's own code."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model_repository.colqwen2_serving.grid import PATCH_VALUES, patch_positions, text_positions

from .model import VARIANTS, build_model, graph_modules, qwen2vl_config
from .weights import trace_graph_weights

if TYPE_CHECKING:
    from torch import nn

# Layers of the exported slice: tables computed once and read by every layer (rotary cos/sin, the attention
# bias) stay live until the last layer, so a 1-layer graph frees them early; from 2 layers on the peak is the same.
SLICE_LAYERS = 2


def _calibration(graphs: dict[str, nn.Module]) -> dict[str, list[dict[str, np.ndarray]]]:
    """A few random feeds for the QDQ calibration: the slice's memory does not depend on the scales."""
    rng = np.random.default_rng(0)
    hidden = graphs["text_encoder"].lm.config.hidden_size
    vocab = graphs["text_encoder"].lm.embed_tokens.num_embeddings
    vision, text = [], []
    for (rows, cols), tokens in (((2, 2), 8), ((2, 4), 12)):
        positions = patch_positions(rows, cols)[None]
        patches = positions.shape[1]
        vision.append(
            {
                "patches": rng.integers(0, 256, (1, patches, PATCH_VALUES), dtype=np.uint8),
                "patch_positions": positions,
                "patch_mask": np.ones((1, patches), dtype=np.int64),
            }
        )
        index = np.full((1, tokens), -1, dtype=np.int64)
        index[0, 2:6] = np.arange(4)
        text.append(
            {
                "input_ids": rng.integers(0, vocab, (1, tokens), dtype=np.int64),
                "attention_mask": np.ones((1, tokens), dtype=np.int64),
                "position_ids": text_positions(tokens)[:, None],
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
