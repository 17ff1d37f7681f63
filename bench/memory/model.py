"""The model: the real-size architecture on the meta device, or a slice of it with random weights, and the two
exported graphs as torch modules over it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from export.spec import GRAPHS
from export.spec import VARIANTS as EXPORT_VARIANTS

if TYPE_CHECKING:
    from torch import nn
    from transformers import Qwen2VLConfig

VARIANTS = tuple(EXPORT_VARIANTS)  # fp32, fp16, int8 (QDQ), int8_dynamic
GRAPH_NAMES = tuple(spec.name for spec in GRAPHS)  # vision_encoder, text_encoder


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
    """What `VisionEncoderGraph` reads from a processor: the published image processor (its normalisation)."""
    from export.random_checkpoint import published_image_processor

    return SimpleNamespace(image_processor=published_image_processor())


def graph_modules(model: nn.Module, processor: Any = None) -> dict[str, nn.Module]:
    """The two exported graphs as torch modules over `model` (`export.graphs`)."""
    import torch

    from export.graphs import TextEncoderGraph, VisionEncoderGraph

    with torch.device(next(model.parameters()).device):  # a meta model gets meta buffers (mean, std)
        return {
            "vision_encoder": VisionEncoderGraph(model, processor or stand_in_processor()).eval(),
            "text_encoder": TextEncoderGraph(model).eval(),
        }
