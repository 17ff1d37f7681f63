"""The gateway's request and response bodies (the original service's JSON), and the status codes of its errors."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model, model_validator

from .._constants import EMBEDDING_DIM
from ..errors import (
    ColQwen2Error,
    InvalidInputError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerUnavailableError,
)

Precision = Literal["fp16", "int8"]
URL_DESCRIPTION = (
    "or the image's http(s) URL, fetched by the gateway (only from the hosts its operator allows; none by default)"
)


class ErrorResponse(BaseModel):
    detail: str


class EmbedRequest(BaseModel):
    image: str | None = Field(
        default=None, description="the image file's bytes (PNG, JPEG, WebP, GIF, BMP, TIFF), base64-encoded"
    )
    url: str | None = Field(default=None, description=URL_DESCRIPTION)
    precision: Precision | None = Field(default=None, description="fp16 (default ensembles) or int8")

    @model_validator(mode="after")
    def one_image(self) -> Any:
        return one_of(self, "image", "url")


class QueryRequest(BaseModel):
    text: str = Field(description="a UTF-8 text query")
    precision: Precision | None = None


def one_of(body: Any, given: str, linked: str) -> Any:
    """A body that names its image(s) one way: base64 (`given`) or URL (`linked`); 422 otherwise, as a missing
    field was before URLs."""
    if (getattr(body, given) is None) == (getattr(body, linked) is None):
        raise ValueError(f"give exactly one of `{given}` (base64) or `{linked}`")
    return body


Vector = Annotated[list[float], Field(min_length=EMBEDDING_DIM, max_length=EMBEDDING_DIM)]


Grid = Annotated[list[int], Field(min_length=2, max_length=2)]


class EmbedResponse(BaseModel):
    embedding: Vector = Field(description="the pooled vector: mean of `vectors`, L2-normalised")
    dim: int = EMBEDDING_DIM
    vectors: list[Vector] = Field(description="every vector of the image or query (late interaction)")
    num_vectors: int
    grid: Grid | None = Field(
        default=None,
        description="images only: [rows, cols] of visual tokens at the image's native resolution; its rows x cols "
        "vectors are one run of `vectors`, row by row (for row and column pooling)",
    )


# /embed_batch's body; each gateway's own model (`embed_batch_request`) bounds `images` by its max_batch. (No
# docstring: it would become the model's description in the OpenAPI.)
class EmbedBatchRequest(BaseModel):
    images: list[str] | None = Field(default=None, description="base64-encoded image files")
    urls: list[str] | None = Field(default=None, description="or the images' http(s) URLs (see /embed's `url`)")
    precision: Precision | None = None
    partial: bool = Field(
        default=False,
        description="false (the original API): one bad image fails the whole call with its index in the detail; "
        "true: the good images get their vectors and each bad one an entry in `errors` (null in its place)",
    )

    @model_validator(mode="after")
    def one_list(self) -> Any:
        return one_of(self, "images", "urls")


def embed_batch_request(max_batch: int) -> type[EmbedBatchRequest]:
    """The /embed_batch body of a gateway that takes at most `max_batch` images (422 beyond, said in the OpenAPI)."""
    images = (list[str] | None, Field(default=None, max_length=max_batch, description="base64-encoded image files"))
    urls = (list[str] | None, Field(default=None, max_length=max_batch, description="or the images' http(s) URLs"))
    return create_model("EmbedBatchRequest", __base__=EmbedBatchRequest, images=images, urls=urls)


class BatchError(BaseModel):
    index: int = Field(description="the image's position in `images` (or `urls`)")
    detail: str = Field(description="what was wrong, as /embed would answer it")
    status: int = Field(description="the status /embed would answer for it: 400 the input's fault, 5xx the service's")


class EmbedBatchResponse(BaseModel):
    embeddings: list[Vector | None] = Field(description="pooled vectors in request order (null: that image failed)")
    count: int = Field(description="images in the request")
    vectors: list[list[Vector] | None]
    grids: list[Grid | None] | None = Field(default=None, description="each image's [rows, cols] of visual tokens")
    errors: list[BatchError] | None = Field(
        default=None, description="with `partial`: one entry per failed image, in request order (empty: none failed)"
    )


class HealthResponse(BaseModel):
    status: Literal["healthy", "unhealthy"]
    gpu_available: bool
    model_loaded: bool
    execution_provider: str | None = Field(
        default=None,
        description="the ONNX Runtime provider the encoder really runs on (tensorrt, cuda, cpu); a GPU deployment "
        "that fell back to cpu is unhealthy unless rendered with --allow-cpu-fallback",
    )


FilterValue = str | int | bool | list[str] | list[int]


class SearchRequest(BaseModel):
    text: str | None = Field(default=None, description="a text query (give this or `image`)")
    image: str | None = Field(default=None, description="a base64-encoded image to search with")
    url: str | None = Field(default=None, description="or an image's http(s) URL (see /embed's `url`)")
    where: dict[str, FilterValue] = Field(
        default_factory=dict,
        description="payload filter applied in both stages: field -> value, or a list (any of); the fields are the "
        "collection's filterable ones (default: key, kind, marketplace, asin, category)",
    )
    limit: int = Field(default=10, ge=1, le=100)
    precision: Precision | None = None


class SearchHit(BaseModel):
    id: str
    key: str | None = None
    score: float = Field(description="MaxSim of the query against the item's vectors")
    payload: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[SearchHit]


class IndexRequest(BaseModel):
    key: str = Field(min_length=1, max_length=1024, description="the item's key: the same key replaces its point")
    image: str | None = Field(default=None, description="the image file's bytes, base64-encoded")
    url: str | None = Field(default=None, description=URL_DESCRIPTION + "; kept as the item's `source`")
    payload: dict[str, Any] = Field(default_factory=dict, description="any other fields, e.g. asin, kind, marketplace")
    source: str | None = Field(default=None, description="where the image lives (kept in the payload)")
    precision: Precision | None = None

    @model_validator(mode="after")
    def one_image(self) -> Any:
        return one_of(self, "image", "url")


class IndexResponse(BaseModel):
    id: str = Field(description="the point id: UUID5 of the key")
    key: str
    status: Literal["new", "replaced", "updated", "unchanged"] = Field(
        description="new point; new content replaced the vectors and payload; payload-only change; nothing to do"
    )
    sha256: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorResponse,
        "description": "bad base64, a URL that cannot be fetched (its host and why), a bad "
        "image or a bad query; the detail says which",
    },
    401: {"model": ErrorResponse, "description": "missing or invalid bearer token (when the gateway requires one)"},
    408: {"model": ErrorResponse, "description": "the request body did not arrive within the request timeout"},
    413: {"model": ErrorResponse, "description": "request body over the size limit"},
    503: {"model": ErrorResponse, "description": "gateway or Triton busy (retry), Triton unreachable, or not served"},
    504: {"model": ErrorResponse, "description": "no answer within the request timeout"},
    502: {"model": ErrorResponse, "description": "Triton failed on a valid request"},
}


def status_for(error: ColQwen2Error) -> int:
    """The HTTP status an SDK error answers with."""
    if isinstance(error, InvalidInputError):
        return 400
    if isinstance(error, (ServerUnavailableError, ModelNotFoundError)):
        return 503
    if isinstance(error, RequestTimeoutError):
        return 504
    return 502


def public_detail(error: BaseException) -> str:
    """An error's message for the gateway's callers: without the place in line the server handed the gateway's
    own client (a token another caller could claim)."""
    return re.sub(r" with place [0-9a-f]+(?: due in [\d.]+ s)?", "", str(error))


def retry_headers(error: BaseException) -> dict[str, str]:
    """`Retry-After` for a refusal worth retrying: the server's own hint when it gave one, else 1 s."""
    if not isinstance(error, ServerUnavailableError):
        return {}
    hint = getattr(error, "retry_after", None)
    return {"Retry-After": str(max(1, math.ceil(hint))) if hint else "1"}


def batch_status(error: BaseException) -> int:
    """The status /embed would answer for one image's failure (502 for anything unexpected)."""
    return status_for(error) if isinstance(error, ColQwen2Error) else 502
