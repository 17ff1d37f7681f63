"""What the exporter produces: one declarative entry per encoder and per precision variant.

The names here are the contract with the Triton model repository and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

OPSET = 18
# Ops that TensorRT cannot build or builds slowly; an export that emits one fails.
FORBIDDEN_OPS = frozenset({"NonZero", "ScatterND", "Loop", "If"})
MAX_BATCH = 256
MAX_VISUAL_TOKENS = 16384  # per image, in the graphs (a deployment caps it far lower)
MAX_SEQUENCE = 32768


@dataclass(frozen=True)
class GraphSpec:
    name: str  # file stem: <variant>/<name>.onnx
    inputs: tuple[str, ...]
    output: str
    axes: dict[str, dict[int, str]]  # named dynamic axes of every input and the output


VISION_ENCODER = GraphSpec(
    name="vision_encoder",
    # uint8 [batch, patches, 588], int64 [batch, patches, 2], int64 [batch, patches]
    inputs=("patches", "patch_positions", "patch_mask"),
    output="visual_features",  # float32 [batch, patches / 4, hidden]
    axes={
        "patches": {0: "batch", 1: "patches"},
        "patch_positions": {0: "batch", 1: "patches"},
        "patch_mask": {0: "batch", 1: "patches"},
        "visual_features": {0: "batch", 1: "visual_tokens"},
    },
)
TEXT_ENCODER = GraphSpec(
    name="text_encoder",
    # int64 [batch, sequence] x2, int64 [3, batch, sequence], float32 [rows, hidden], int64 [batch, sequence]
    inputs=("input_ids", "attention_mask", "position_ids", "visual_features", "visual_index"),
    output="embeddings",  # float32 [batch, sequence, 128]
    axes={
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "position_ids": {1: "batch", 2: "sequence"},
        "visual_features": {0: "visual_rows"},
        "visual_index": {0: "batch", 1: "sequence"},
        "embeddings": {0: "batch", 1: "sequence"},
    },
)
GRAPHS = (VISION_ENCODER, TEXT_ENCODER)


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
