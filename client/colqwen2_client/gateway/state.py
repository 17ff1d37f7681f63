"""What the gateway's routes share, one per app: SDK clients, the catalog index, the health verdict."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from .._constants import MODELS
from ..async_client import AsyncColQwen2Client
from ..errors import InvalidInputError, ServerUnavailableError
from ..fetch import fetch_image, fetch_or_error
from ..inputs import decode_base64
from .settings import GatewaySettings

if TYPE_CHECKING:
    from ..qdrant import IndexSettings, VisualIndex

T = TypeVar("T")


class GatewayState:
    """The settings, an SDK client per precision (made on first use, inside the running event loop), the catalog
    index (opened on first use) and the last health verdict (reused for `health_ttl` seconds)."""

    def __init__(self, settings: GatewaySettings) -> None:
        if settings.precision not in MODELS:
            raise ValueError(f"precision must be one of {', '.join(MODELS)}")
        self.settings = settings
        self.fetch = settings.fetch_policy()
        self.clients: dict[str, AsyncColQwen2Client] = {}
        self.catalog: VisualIndex | None = None
        self._catalog_lock = threading.Lock()  # embedded Qdrant is not thread-safe; a server client is, and it is cheap
        self._opening = asyncio.Lock()  # one open: embedded Qdrant locks its folder
        self._verdict: dict[str, Any] = {}
        self._verdict_at = -1e9
        self._health_lock = asyncio.Lock()

    def client(self, precision: str | None = None) -> AsyncColQwen2Client:
        """The SDK client of a precision (None: the gateway's)."""
        precision = precision or self.settings.precision
        if precision not in self.clients:
            s = self.settings
            self.clients[precision] = AsyncColQwen2Client(
                s.triton_url, precision=precision, timeout=s.timeout, batch_size=s.max_batch
            )
        return self.clients[precision]

    async def image(self, image: str | None, url: str | None) -> bytes:
        """A body's image: its base64 `image`, or the image at its `url` (fetched under this gateway's policy)."""
        if url is not None:
            return await run_in_threadpool(fetch_image, url, self.fetch)
        return decode_base64(image or "", "image")

    async def images(self, images: list[str] | None, urls: list[str] | None, partial: bool) -> list[Any]:
        """/embed_batch's images: each one's bytes, or (with `partial`) its InvalidInputError in its place; without
        `partial` the first bad one fails the call. URLs are fetched side by side."""
        if urls is not None:
            outcomes: list[Any] = await asyncio.gather(
                *(run_in_threadpool(fetch_or_error, url, self.fetch) for url in urls)
            )
            named = [InvalidInputError(f"urls[{i}]: {o}") if isinstance(o, Exception) else o
                     for i, o in enumerate(outcomes)]  # fmt: skip
        else:
            named = []
            for index, image in enumerate(images or []):
                try:
                    named.append(decode_base64(image, f"images[{index}]"))
                except InvalidInputError as exc:
                    named.append(exc)
        if not partial:
            for outcome in named:
                if isinstance(outcome, InvalidInputError):
                    raise InvalidInputError(str(outcome))
        return named

    async def index(self) -> VisualIndex:
        """The catalog index; ServerUnavailableError when the gateway has none."""
        if not (self.settings.qdrant_url or self.settings.qdrant_path):
            raise ServerUnavailableError("no index here: start the gateway with --qdrant-url or --qdrant-path")
        async with self._opening:
            if self.catalog is None:
                self.catalog = await self._open_index()
        return self.catalog

    async def _open_index(self) -> VisualIndex:
        from ..qdrant import VisualIndex, open_qdrant

        s = self.settings
        offset = int((await self.client().server_info())["visual_token_offset"])
        path, url, key = s.qdrant_path or None, s.qdrant_url or None, s.qdrant_api_key or None
        qdrant = await run_in_threadpool(open_qdrant, path, url, key)
        return VisualIndex(None, qdrant, index_settings(s), offset)

    async def on_index(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker thread, one at a time: the index's calls block."""

        def locked() -> T:
            with self._catalog_lock:
                return fn(*args)

        return await run_in_threadpool(locked)

    async def health(self) -> dict[str, Any]:
        """The canary verdict, asked again once it is older than `health_ttl` seconds."""
        async with self._health_lock:
            if time.monotonic() - self._verdict_at > self.settings.health_ttl:
                self._verdict = await self.client().health()
                self._verdict_at = time.monotonic()
            return self._verdict

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        if self.catalog is not None:
            self.catalog.close()


def index_settings(settings: GatewaySettings) -> IndexSettings:
    """The catalog index's settings: the collection, and a new collection's cluster and storage settings."""
    from ..qdrant import IndexSettings

    return IndexSettings(
        collection=settings.collection,
        shard_number=settings.shards,
        replication_factor=settings.replication_factor,
        write_consistency_factor=settings.write_consistency_factor,
        on_disk=settings.on_disk,
        **({"quantization": settings.quantization} if settings.quantization else {}),
    )


def gateway_state(request: Request) -> GatewayState:
    """The route's app's state (a FastAPI dependency)."""
    return request.app.state.gateway
