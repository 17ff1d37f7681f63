"""What the exporter produces: one declarative entry per encoder and per precision variant.

The names here are the contract with the Triton model repository and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

OPSET = 18
EMBEDDING_DIM = 128
DEFAULT_IMAGE_SIZE = 448  # 16 x 16 merged patches: 256 visual tokens
RESOLUTION_STEP = 28  # patch 14 x spatial merge 2
# Ops that TensorRT cannot build or builds slowly; an export that emits one fails.
FORBIDDEN_OPS = frozenset({"NonZero", "ScatterND", "Loop", "If"})
MAX_BATCH = 256


@dataclass(frozen=True)
class EncoderSpec:
    name: str  # file stem: <variant>/<name>.onnx
    inputs: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    output: str = "embeddings"


IMAGE_ENCODER = EncoderSpec(
    name="image_encoder",
    inputs=("pixel_values",),  # uint8 [batch, S, S, 3], RGB, letterboxed
    dynamic_axes={"pixel_values": {0: "batch"}, "embeddings": {0: "batch"}},
)
QUERY_ENCODER = EncoderSpec(
    name="query_encoder",
    inputs=("input_ids", "attention_mask"),  # int64 [batch, sequence], left padded
    dynamic_axes={
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "embeddings": {0: "batch", 1: "sequence"},
    },
)
ENCODERS = (IMAGE_ENCODER, QUERY_ENCODER)


@dataclass(frozen=True)
class Tolerance:
    """Parity thresholds against colpali-engine `ColQwen2.forward` (float32)."""

    max_abs: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = None  # MaxSim top-1 agreement with the fp32 artifact


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    tolerance: Tolerance


VARIANTS: dict[str, Variant] = {
    "fp32": Variant("fp32", "float32, for CPU hosts", Tolerance(max_abs=1e-4)),
    "fp16": Variant(
        "fp16",
        "float16 matmuls; norms, softmax, rotary and residual stream in float32 (GPU hosts)",
        Tolerance(cosine_mean=0.999, cosine_min=0.99),
    ),
    "int8": Variant(
        "int8",
        "INT8 QDQ (per-channel weights, calibrated activations) on weight matmuls: the form TensorRT consumes",
        Tolerance(cosine_mean=0.995, top1_agreement=1.0),
    ),
    "int8_dynamic": Variant(
        "int8_dynamic",
        "INT8 dynamic quantization (MatMulInteger): the fast form for ONNX Runtime on CPU",
        Tolerance(cosine_mean=0.995, top1_agreement=1.0),
    ),
}
DEFAULT_VARIANTS = ("fp32", "fp16", "int8", "int8_dynamic")
