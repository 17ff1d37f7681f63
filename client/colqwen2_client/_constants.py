"""Defaults, named once. Every one can be overridden per client."""

from __future__ import annotations

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_PORTS = {"http": 8000, "https": 8000, "grpc": 8001, "grpcs": 8001}
DEFAULT_TIMEOUT = 60.0  # seconds per request, connection included
# Retries only where a retry is safe: server unreachable, its queue full, a model process down
# (embedding is idempotent). Six retries wait 7.9 to 15.75 s in all: long enough to ride out the
# supervisor's restart of a dead server (about 5 s on the tiny checkpoint, README "Reliability").
DEFAULT_MAX_RETRIES = 6
DEFAULT_BACKOFF = 0.25  # seconds; doubles per attempt (capped), the upper half of it jittered
MAX_BACKOFF = 8.0
MAX_HINT = 60.0  # the longest a busy server's "retry in N s" is followed: past it, the caller had better know
# A request parameter: "" from a client that retries busy refusals itself and comes back with the place in line
# a refusal hands it ("retry in N s with place TOKEN"), the token when it does (server: admission's Ledger).
PLACE_PARAMETER = "colqwen2-place"
# Appended to the token the last retry claims: "claim it, but hold no new place if refused", since nobody would come
# back for that one (the server would hold its room against newcomers until it lapsed).
FINAL_CLAIM = "!"
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
PROVIDER_OUTPUT = "execution_provider"  # which ONNX Runtime provider ran it (tensorrt, cuda, cpu): canaries ask
CANARY_QUERY = "health check"
# Triton priority levels the rendered models declare (1 is served first). User requests take the
# default level, whose queue is bounded; health canaries ask for CANARY_PRIORITY, a lane with no
# bound that the batcher empties first, so a saturated server still proves it is alive.
CANARY_PRIORITY = 1
USER_PRIORITY = 2
