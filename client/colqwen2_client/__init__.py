"""Python SDK for the ColQwen2 visual-embedding service on NVIDIA Triton.

from colqwen2_client import ColQwen2Client
with ColQwen2Client("grpc://127.0.0.1:8001") as client:
    page = client.embed("keepa_chart.png")          # Embedding: vectors [n, 128], pooled [128]
    scores = client.score("lego price drop", [page])  # MaxSim
"""

from .async_client import AsyncColQwen2Client
from .client import ColQwen2Client
from .errors import (
    ColQwen2Error,
    InvalidInputError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
)
from .fetch import FetchError, FetchPolicy
from .scoring import maxsim, maxsim_scores
from .types import Embedding

__all__ = [
    "AsyncColQwen2Client",
    "ColQwen2Client",
    "ColQwen2Error",
    "Embedding",
    "FetchError",
    "FetchPolicy",
    "InvalidInputError",
    "ModelNotFoundError",
    "RequestTimeoutError",
    "ServerBusyError",
    "ServerError",
    "ServerUnavailableError",
    "maxsim",
    "maxsim_scores",
]
__version__ = "0.1.0"
