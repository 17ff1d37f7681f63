"""Defaults, named once. Every one can be overridden per client."""

from __future__ import annotations

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PORTS = {"http": 8000, "https": 8000, "grpc": 8001, "grpcs": 8001}
DEFAULT_TIMEOUT = 60.0  # seconds per request, connection included
DEFAULT_MAX_RETRIES = 3  # only for failures where a retry is safe: server unavailable or its queue full
DEFAULT_BACKOFF = 0.25  # seconds; doubles per attempt, with full jitter
MAX_BACKOFF = 8.0
DEFAULT_BATCH_SIZE = 16  # requests in flight in embed_batch; Triton batches them dynamically
EMBEDDING_DIM = 128

# precision -> (image ensemble, query ensemble). "fp16" names the main ensembles, which a
# CPU-only server runs in fp32 (its config parameter `precision` says which).
MODELS = {
    "fp16": ("colqwen2", "colqwen2_query"),
    "int8": ("colqwen2_int8", "colqwen2_query_int8"),
}
IMAGE_INPUT = "image"
TEXT_INPUT = "text"
OUTPUTS = ("embeddings", "num_vectors", "pooled")
IMAGE_OUTPUTS = (*OUTPUTS, "grid")  # images also return their grid: (rows, cols) of visual tokens
CANARY_QUERY = "health check"
