"""FastAPI app with the original API: `POST /embed`, `POST /embed_batch`, `GET /health`, plus `POST /embed_query`,
and, with a Qdrant index configured, `POST /search` and `POST /index`.

The app is a thin layer over `AsyncColQwen2Client` and `VisualIndex`: JSON and base64 in, the
SDK's `Embedding` as the original JSON out, the SDK's exceptions mapped to HTTP status codes.
"""

# No `from __future__ import annotations`: FastAPI must resolve the request model defined in create_app.

import asyncio
import json
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from .._constants import DEFAULT_TIMEOUT, EMBEDDING_DIM, MODELS
from ..async_client import AsyncColQwen2Client
from ..errors import (
    ColQwen2Error,
    InvalidInputError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerUnavailableError,
)
from ..inputs import decode_base64
from .limits import RequestGuard

Precision = Literal["fp16", "int8"]


@dataclass(frozen=True)
class GatewaySettings:
    triton_url: str = field(default_factory=lambda: os.environ.get("COLQWEN2_TRITON_URL", "grpc://127.0.0.1:8001"))
    precision: str = "fp16"
    max_body_bytes: int = 64 * 1024 * 1024  # base64 adds a third: 32 MiB images fit one per request
    max_batch: int = 32
    health_ttl: float = 2.0  # seconds a canary verdict is reused, so probes cannot flood the server
    timeout: float = DEFAULT_TIMEOUT  # per Triton request
    # Bearer token every route but /health requires; empty: none (`make gateway` on 127.0.0.1).
    token: str = field(default="", repr=False)
    # Requests inside the gateway at once; the next gets 503 at once. Triton's queues refuse beyond
    # 128 waiting per model, so more in flight here would only wait to be refused.
    max_concurrency: int = 64
    request_timeout: float = 30.0  # seconds for a whole request: 408 for a body still arriving, 504 for Triton
    # The catalog index behind /search and /index: a Qdrant server, or an embedded folder; neither: no index.
    qdrant_url: str = field(default_factory=lambda: os.environ.get("QDRANT_URL", ""))
    qdrant_path: str = field(default_factory=lambda: os.environ.get("COLQWEN2_QDRANT_PATH", ""))
    qdrant_api_key: str = field(default_factory=lambda: os.environ.get("QDRANT_API_KEY", ""), repr=False)
    collection: str = "visual_embeddings"
    # A new collection's settings (the first /index creates it); None: the index's and Qdrant's defaults.
    shards: int | None = None
    replication_factor: int | None = None
    write_consistency_factor: int | None = None
    on_disk: bool = False
    quantization: str | None = None


class ErrorResponse(BaseModel):
    detail: str


class EmbedRequest(BaseModel):
    image: str = Field(description="the image file's bytes (PNG, JPEG, WebP, GIF, BMP, TIFF), base64-encoded")
    precision: Precision | None = Field(default=None, description="fp16 (default ensembles) or int8")


class QueryRequest(BaseModel):
    text: str = Field(description="a UTF-8 text query")
    precision: Precision | None = None


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


class BatchError(BaseModel):
    index: int = Field(description="the image's position in `images`")
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
    image: str = Field(description="the image file's bytes, base64-encoded")
    payload: dict[str, Any] = Field(default_factory=dict, description="any other fields, e.g. asin, kind, marketplace")
    source: str | None = Field(default=None, description="where the image lives (kept in the payload)")
    precision: Precision | None = None


class IndexResponse(BaseModel):
    id: str = Field(description="the point id: UUID5 of the key")
    key: str
    status: Literal["new", "replaced", "updated", "unchanged"] = Field(
        description="new point; new content replaced the vectors and payload; payload-only change; nothing to do"
    )
    sha256: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "bad base64, a bad image or a bad query; the detail says which"},
    401: {"model": ErrorResponse, "description": "missing or invalid bearer token (when the gateway requires one)"},
    408: {"model": ErrorResponse, "description": "the request body did not arrive within the request timeout"},
    413: {"model": ErrorResponse, "description": "request body over the size limit"},
    503: {"model": ErrorResponse, "description": "gateway or Triton busy (retry), Triton unreachable, or not served"},
    504: {"model": ErrorResponse, "description": "no answer within the request timeout"},
    502: {"model": ErrorResponse, "description": "Triton failed on a valid request"},
}


def status_for(error: ColQwen2Error) -> int:
    if isinstance(error, InvalidInputError):
        return 400
    if isinstance(error, (ServerUnavailableError, ModelNotFoundError)):
        return 503
    if isinstance(error, RequestTimeoutError):
        return 504
    return 502


def batch_status(error: BaseException) -> int:
    """The status /embed would answer for one image's failure (502 for anything unexpected)."""
    return status_for(error) if isinstance(error, ColQwen2Error) else 502


def _json(payload: dict[str, Any], status: int = 200) -> Response:
    # json.dumps directly: FastAPI's encoder is slow on tens of thousands of floats.
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json")


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    if settings.precision not in MODELS:
        raise ValueError(f"precision must be one of {', '.join(MODELS)}")
    clients: dict[str, AsyncColQwen2Client] = {}
    catalog: dict[str, Any] = {}  # the VisualIndex, opened on first use
    catalog_lock = threading.Lock()  # embedded Qdrant is not thread-safe; a server client is, and the lock is cheap
    opening = asyncio.Lock()
    health_cache: dict[str, Any] = {"at": -1e9, "verdict": None}
    health_lock = asyncio.Lock()

    def client_for(precision: str | None) -> AsyncColQwen2Client:
        precision = precision or settings.precision
        if precision not in clients:  # created lazily, inside the running event loop
            clients[precision] = AsyncColQwen2Client(
                settings.triton_url, precision=precision, timeout=settings.timeout, batch_size=settings.max_batch
            )
        return clients[precision]

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        for client in clients.values():
            await client.close()
        if "index" in catalog:
            catalog["index"].close()

    class EmbedBatchRequest(BaseModel):
        images: list[str] = Field(max_length=settings.max_batch, description="base64-encoded image files")
        precision: Precision | None = None
        partial: bool = Field(
            default=False,
            description="false (the original API): one bad image fails the whole call with its index in the detail; "
            "true: the good images get their vectors and each bad one an entry in `errors` (null in its place)",
        )

    app = FastAPI(
        title="ColQwen2 embedding gateway",
        version="0.1.0",
        description="The original /embed API in front of the ColQwen2 ensembles on Triton.",
        lifespan=lifespan,
    )
    app.add_middleware(
        RequestGuard,
        max_bytes=settings.max_body_bytes,
        token=settings.token,
        max_concurrency=settings.max_concurrency,
        timeout=settings.request_timeout,
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the input back: megabytes of base64 for a 33-image batch.
        detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in error.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(ColQwen2Error)
    async def sdk_error(_request: Request, error: ColQwen2Error) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status_for(error))

    @app.post("/embed", response_model=EmbedResponse, responses=ERRORS)
    async def embed(body: EmbedRequest) -> Response:
        """Embed one base64-encoded image."""
        embedding = await client_for(body.precision).embed(decode_base64(body.image, "image"))
        return _json(embedding.to_dict())

    @app.post("/embed_batch", response_model=EmbedBatchResponse, responses=ERRORS)
    async def embed_batch(body: EmbedBatchRequest) -> Response:
        """Embed up to `max_batch` images. By default a bad one fails the call with its index in the detail;
        with `"partial": true` the rest still get their vectors and each failure is listed in `errors`."""
        outcomes: list[Any] = []
        data, where = [], []
        for index, image in enumerate(body.images):
            try:
                data.append(decode_base64(image, f"images[{index}]"))
                where.append(index)
                outcomes.append(None)
            except InvalidInputError as exc:
                if not body.partial:
                    raise InvalidInputError(str(exc)) from None
                outcomes.append(exc)
        results = await client_for(body.precision).embed_batch(data, return_exceptions=True) if data else []
        for index, result in zip(where, results, strict=True):
            outcomes[index] = result
        errors = [(i, r) for i, r in enumerate(outcomes) if isinstance(r, BaseException)]
        for index, error in errors:
            if not body.partial:
                if not isinstance(error, ColQwen2Error):
                    raise error
                raise type(error)(f"images[{index}]: {error}")
        if errors and len(errors) == len(outcomes) and all(batch_status(e) >= 500 for _, e in errors):
            first = errors[0][1]  # the service is down, not the input: no 200 with nothing in it
            raise (type(first) if isinstance(first, ColQwen2Error) else ColQwen2Error)(f"every image failed: {first}")
        good = [None if isinstance(r, BaseException) else r for r in outcomes]
        payload: dict[str, Any] = {
            "embeddings": [r.pooled.tolist() if r else None for r in good],
            "count": len(outcomes),
            "vectors": [r.vectors.tolist() if r else None for r in good],
            "grids": [list(r.grid) if r and r.grid else None for r in good],
        }
        if body.partial:
            payload["errors"] = [
                {"index": i, "detail": str(e) if str(e).startswith("images[") else f"images[{i}]: {e}",
                 "status": batch_status(e)}
                for i, e in errors
            ]  # fmt: skip
        return _json(payload)

    @app.post("/embed_query", response_model=EmbedResponse, responses=ERRORS)
    async def embed_query(body: QueryRequest) -> Response:
        """Embed a text query (one vector per token) for MaxSim search."""
        return _json((await client_for(body.precision).embed_query(body.text)).to_dict())

    async def visual_index():
        from ..qdrant import IndexSettings, VisualIndex, open_qdrant

        if not (settings.qdrant_url or settings.qdrant_path):
            raise ServerUnavailableError("no index here: start the gateway with --qdrant-url or --qdrant-path")
        async with opening:  # one open: embedded Qdrant locks its folder
            if "index" not in catalog:
                offset = int((await client_for(None).server_info())["visual_token_offset"])
                path, url, key = settings.qdrant_path or None, settings.qdrant_url or None, settings.qdrant_api_key
                qdrant = await run_in_threadpool(open_qdrant, path, url, key or None)
                index_settings = IndexSettings(
                    collection=settings.collection,
                    shard_number=settings.shards,
                    replication_factor=settings.replication_factor,
                    write_consistency_factor=settings.write_consistency_factor,
                    on_disk=settings.on_disk,
                    **({"quantization": settings.quantization} if settings.quantization else {}),
                )
                catalog["index"] = VisualIndex(None, qdrant, index_settings, offset)
        return catalog["index"]

    async def on_index(fn, *args):
        def locked():
            with catalog_lock:
                return fn(*args)

        return await run_in_threadpool(locked)

    @app.post("/search", response_model=SearchResponse, responses=ERRORS)
    async def search(body: SearchRequest) -> Response:
        """Search the catalog by text or by image: first stage, then MaxSim, both within `where`."""
        from ..qdrant import check_where

        if (body.text is None) == (body.image is None):
            raise InvalidInputError("search needs exactly one of `text` or `image`")
        index = await visual_index()
        if not await on_index(index.exists):
            raise InvalidInputError(f"the collection {index.name!r} does not exist yet: index something first")
        where = await on_index(check_where, body.where, (await on_index(lambda: index.schema)).filter_fields)
        client = client_for(body.precision)
        if body.text is not None:
            query = await client.embed_query(body.text)
        else:
            query = await client.embed(decode_base64(body.image, "image"))
        hits = await on_index(index.search_embedding, query, body.limit, where)
        return _json({"hits": [{"id": h.id, "key": h.payload.get("key"), "score": h.score, "payload": h.payload}
                               for h in hits]})  # fmt: skip

    @app.post("/index", response_model=IndexResponse, responses=ERRORS)
    async def index_item(body: IndexRequest) -> Response:
        """Index one item under its key: new or changed content is embedded, the same content is not."""
        from ..catalog import WRITTEN, CatalogItem

        clash = sorted(set(body.payload) & set(WRITTEN))
        if clash:
            raise InvalidInputError(f"payload field {clash[0]!r} is written by the index; rename it")
        data = decode_base64(body.image, "image")
        index = await visual_index()
        await on_index(index.ensure_collection)
        item = CatalogItem(body.key, body.source or "gateway", body.payload | {"key": body.key}, data=data)
        stored = await on_index(index.stored_payload, item)
        action, payload = index.decide(item, data, stored)
        if action == "embed":
            embedding = await client_for(body.precision).embed(data)
            await on_index(index.write, item, payload, embedding)
            status = "replaced" if stored is not None else "new"
        elif action == "update":
            await on_index(index.write, item, payload)
            status = "updated"
        else:
            status = "unchanged"
        return _json({"id": item.id, "key": item.key, "status": status, "sha256": payload["sha256"]})

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health() -> Response:
        """Healthy only if a canary image and a canary query just went through the models (cached briefly)."""
        async with health_lock:
            if time.monotonic() - health_cache["at"] > settings.health_ttl:
                health_cache["verdict"] = await client_for(None).health()
                health_cache["at"] = time.monotonic()
            verdict = health_cache["verdict"]
        return _json(verdict, 200 if verdict["status"] == "healthy" else 503)

    return app
