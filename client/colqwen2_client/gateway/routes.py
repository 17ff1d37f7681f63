"""The gateway's routes over their app's `GatewayState`: embedding (`/embed`, `/embed_batch`, `/embed_query`),
the catalog (`/search`, `/index`) and `/health`."""

# No `from __future__ import annotations`: FastAPI must resolve the body model `batch_router` makes.

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from ..errors import ColQwen2Error, InvalidInputError
from .models import (
    ERRORS,
    EmbedBatchRequest,
    EmbedBatchResponse,
    EmbedRequest,
    EmbedResponse,
    HealthResponse,
    IndexRequest,
    IndexResponse,
    QueryRequest,
    SearchRequest,
    SearchResponse,
    batch_status,
    embed_batch_request,
    public_detail,
)
from .state import GatewayState, gateway_state

State = Annotated[GatewayState, Depends(gateway_state)]

embed_router = APIRouter()
catalog_router = APIRouter()
health_router = APIRouter()


def json_response(payload: dict[str, Any], status: int = 200) -> Response:
    """`payload` as JSON; json.dumps directly: FastAPI's encoder is slow on tens of thousands of floats."""
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json")


# -- embedding ---------------------------------------------------------------------------------------------------


@embed_router.post("/embed", response_model=EmbedResponse, responses=ERRORS)
async def embed(body: EmbedRequest, state: State) -> Response:
    """Embed one image: base64 `image`, or `url`."""
    embedding = await state.client(body.precision).embed(await state.image(body.image, body.url))
    return json_response(embedding.to_dict())


@embed_router.post("/embed_query", response_model=EmbedResponse, responses=ERRORS)
async def embed_query(body: QueryRequest, state: State) -> Response:
    """Embed a text query (one vector per token) for MaxSim search."""
    return json_response((await state.client(body.precision).embed_query(body.text)).to_dict())


def batch_router(max_batch: int) -> APIRouter:
    """`/embed_batch`, whose body model takes at most `max_batch` images (one router per gateway)."""
    model = embed_batch_request(max_batch)
    router = APIRouter()

    @router.post("/embed_batch", response_model=EmbedBatchResponse, responses=ERRORS)
    async def embed_batch(body: model, state: State) -> Response:  # type: ignore[valid-type]
        """Embed up to `max_batch` images. By default a bad one fails the call with its index in the detail;
        with `"partial": true` the rest still get their vectors and each failure is listed in `errors`."""
        return json_response(await embed_images(state, body))

    return router


async def embed_images(state: GatewayState, body: EmbedBatchRequest) -> dict[str, Any]:
    """/embed_batch's answer: each image's vectors, or (with `partial`) its failure in `errors`."""
    outcomes: list[Any] = await state.images(body.images, body.urls, body.partial)
    where = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, bytes)]
    data = [outcomes[i] for i in where]
    results = await state.client(body.precision).embed_batch(data, return_exceptions=True) if data else []
    for index, result in zip(where, results, strict=True):
        outcomes[index] = result
    name = "images" if body.urls is None else "urls"
    errors = failures(outcomes, body.partial, name)
    good = [None if isinstance(r, BaseException) else r for r in outcomes]
    payload: dict[str, Any] = {
        "embeddings": [r.pooled.tolist() if r else None for r in good],
        "count": len(outcomes),
        "vectors": [r.vectors.tolist() if r else None for r in good],
        "grids": [list(r.grid) if r and r.grid else None for r in good],
    }
    if body.partial:
        payload["errors"] = [
            {"index": i, "detail": d if (d := public_detail(e)).startswith("images[") else f"images[{i}]: {d}",
             "status": batch_status(e)}
            for i, e in errors
        ]  # fmt: skip
    return payload


def failures(outcomes: list[Any], partial: bool, name: str = "images") -> list[tuple[int, BaseException]]:
    """The failed images, by position. Without `partial` the first one fails the call; with it, so does every
    image failing for the service's sake (no 200 with nothing in it)."""
    errors = [(i, r) for i, r in enumerate(outcomes) if isinstance(r, BaseException)]
    for index, error in errors:
        if not partial:
            if not isinstance(error, ColQwen2Error):
                raise error
            raise type(error)(f"{name}[{index}]: {error}")
    if errors and len(errors) == len(outcomes) and all(batch_status(e) >= 500 for _, e in errors):
        first = errors[0][1]  # the service is down, not the input
        raise (type(first) if isinstance(first, ColQwen2Error) else ColQwen2Error)(f"every image failed: {first}")
    return errors


# -- the catalog ---------------------------------------------------------------------------------------------------


@catalog_router.post("/search", response_model=SearchResponse, responses=ERRORS)
async def search(body: SearchRequest, state: State) -> Response:
    """Search the catalog by text or by image: first stage, then MaxSim, both within `where`."""
    from ..qdrant import check_where

    if [body.text, body.image, body.url].count(None) != 2:
        raise InvalidInputError("search needs exactly one of `text`, `image` or `url`")
    index = await state.index()
    if not await state.on_index(index.exists):
        raise InvalidInputError(f"the collection {index.name!r} does not exist yet: index something first")
    where = await state.on_index(check_where, body.where, (await state.on_index(lambda: index.schema)).filter_fields)
    client = state.client(body.precision)
    if body.text is not None:
        query = await client.embed_query(body.text)
    else:
        query = await client.embed(await state.image(body.image, body.url))
    hits = await state.on_index(index.search_embedding, query, body.limit, where)
    return json_response({"hits": [{"id": h.id, "key": h.payload.get("key"), "score": h.score, "payload": h.payload}
                                   for h in hits]})  # fmt: skip


@catalog_router.post("/index", response_model=IndexResponse, responses=ERRORS)
async def index_item(body: IndexRequest, state: State) -> Response:
    """Index one item under its key: new or changed content is embedded, the same content is not."""
    from ..catalog import WRITTEN, CatalogItem

    clash = sorted(set(body.payload) & set(WRITTEN))
    if clash:
        raise InvalidInputError(f"payload field {clash[0]!r} is written by the index; rename it")
    data = await state.image(body.image, body.url)
    index = await state.index()
    await state.on_index(index.ensure_collection)
    item = CatalogItem(body.key, body.source or body.url or "gateway", body.payload | {"key": body.key}, data=data)
    (change,) = await state.on_index(index.plan, [item], [data])  # as `VisualIndex.index` does, one item
    embeddings = [await state.client(body.precision).embed(data)] if change.embeds else []
    await state.on_index(index.apply, [change], embeddings)
    return json_response({"id": item.id, "key": item.key, "status": change.status, "sha256": change.payload["sha256"]})


# -- health ----------------------------------------------------------------------------------------------------------


@health_router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(state: State) -> Response:
    """Healthy only if a canary image and a canary query just went through the models (cached briefly)."""
    verdict = await state.health()
    return json_response(verdict, 200 if verdict["status"] == "healthy" else 503)
