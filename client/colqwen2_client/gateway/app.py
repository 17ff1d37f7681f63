"""FastAPI app with the original API: `POST /embed`, `POST /embed_batch`, `GET /health`, plus `POST /embed_query`,
and, with a Qdrant index configured, `POST /search` and `POST /index`.

The app is a thin layer over `AsyncColQwen2Client` and `VisualIndex`: JSON and base64 in, the
SDK's `Embedding` as the original JSON out, the SDK's exceptions mapped to HTTP status codes.
`create_app` puts a `GatewayState` (state.py) on `app.state` and includes the routers (routes.py);
the bodies are in models.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import ColQwen2Error
from .limits import RequestGuard
from .models import public_detail, retry_headers, status_for
from .routes import batch_router, catalog_router, embed_router, health_router
from .settings import GatewaySettings
from .state import GatewayState

__all__ = ["GatewaySettings", "create_app"]


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """The gateway app: its state from `settings` (default: the environment's), its routes and its guard."""
    settings = settings or GatewaySettings()
    state = GatewayState(settings)
    app = FastAPI(
        title="ColQwen2 embedding gateway",
        version="0.1.0",
        description="The original /embed API in front of the ColQwen2 ensembles on Triton.",
        lifespan=_lifespan,
    )
    app.state.gateway = state
    app.add_middleware(
        RequestGuard,
        max_bytes=settings.max_body_bytes,
        token=settings.token,
        max_concurrency=settings.max_concurrency,
        timeout=settings.request_timeout,
    )
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(ColQwen2Error, _sdk_error)  # type: ignore[arg-type]
    for router in (embed_router, batch_router(settings.max_batch), catalog_router, health_router):
        app.include_router(router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await app.state.gateway.close()


async def _invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
    # FastAPI's default echoes the input back: megabytes of base64 for a 33-image batch.
    detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in error.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


async def _sdk_error(_request: Request, error: ColQwen2Error) -> JSONResponse:
    return JSONResponse({"detail": public_detail(error)}, status_code=status_for(error), headers=retry_headers(error))
