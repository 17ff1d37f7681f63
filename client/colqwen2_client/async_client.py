"""`AsyncColQwen2Client`: the SDK on asyncio, method for method the same as `ColQwen2Client`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from . import _base, _plans
from ._transport import AsyncTransport
from .fetch import fetch_or_error
from .inputs import ImageInput
from .types import Embedding

T = TypeVar("T")


class AsyncColQwen2Client(_base.BaseClient):
    """Embed images and queries with the ColQwen2 service, from asyncio code.

    >>> async with AsyncColQwen2Client("grpc://127.0.0.1:8001") as client:
    ...     page = await client.embed("chart.png")
    """

    _transport_type = AsyncTransport
    _transport: AsyncTransport

    async def _run(self, plan: _plans.Plan[T]) -> T:
        """Await each call the plan asks for; its answer (or its exception) goes back in."""
        run = _plans.Run(plan)
        for step in run:
            try:
                run.reply = await self._do(step)
            except Exception as exc:
                run.error = exc
        return run.result

    async def _do(self, step: _plans.Step) -> Any:
        if isinstance(step, _plans.Sleep):
            return await asyncio.sleep(step.seconds)
        if isinstance(step, _plans.Fetch):
            return await asyncio.gather(*(asyncio.to_thread(fetch_or_error, url, step.policy) for url in step.urls))
        return await step.on(self._transport)

    async def embed(self, image: ImageInput) -> Embedding:
        """One image (a path, an http(s) URL, bytes, a PIL image or a base64 string) -> its Embedding."""
        return await self._run(_plans.embed(self.options, image))

    async def embed_batch(
        self,
        images: Sequence[ImageInput],
        batch_size: int | None = None,
        progress: bool | _base.Progress | None = None,
        return_exceptions: bool = False,
    ) -> list[Embedding]:
        """Many images, one request each with `batch_size` in flight (Triton batches them)."""
        return await self._run(_plans.embed_batch(self.options, images, batch_size, progress, return_exceptions))

    async def embed_query(self, text: str) -> Embedding:
        """One text query -> its Embedding (one vector per token, augmentation tokens included)."""
        return await self._run(_plans.embed_query(self.options, text))

    async def embed_queries(self, texts: Sequence[str], return_exceptions: bool = False) -> list[Embedding]:
        return await self._run(_plans.embed_queries(self.options, texts, return_exceptions))

    async def score(self, query: str | Embedding, images: Sequence[Embedding | ImageInput]) -> np.ndarray:
        """MaxSim of the query against each image, float32 [len(images)]."""
        return await self._run(_plans.score(self.options, query, images))

    async def canary(self) -> dict[str, Any]:
        """Embed a small image and a query on the health lane (Triton priority 1: served before
        user traffic, never refused by a full queue). Raises the SDK error that stopped it; no retries."""
        return await self._run(_plans.canary(self.options))

    async def health(self) -> dict[str, Any]:
        """`{"status", "gpu_available", "model_loaded", "execution_provider"}`; `model_loaded` only after real
        canary inferences."""
        return await self._run(_plans.health(self.options))

    async def server_info(self) -> dict[str, str]:
        """The image ensemble's config parameters: precision, device, resolution, max_visual_tokens, checkpoint."""
        return await self._run(_plans.server_info(self.options))

    def with_options(self, **overrides: Any) -> AsyncColQwen2Client:
        """A new client with some options changed, e.g. `client.with_options(timeout=5)`."""
        return AsyncColQwen2Client(self.options.endpoint.url, **(self.options.settings() | overrides))

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncColQwen2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
