"""`AsyncColQwen2Client`: the SDK on asyncio, method for method the same as `ColQwen2Client`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _base
from ._constants import (
    CANARY_QUERY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    IMAGE_INPUT,
    TEXT_INPUT,
)
from ._transport import AsyncTransport, retrying_async
from .errors import ColQwen2Error
from .inputs import ImageInput, image_bytes, text_bytes
from .scoring import maxsim_scores
from .types import Embedding


class AsyncColQwen2Client:
    """Embed images and queries with the ColQwen2 service, from asyncio code.

    >>> async with AsyncColQwen2Client("grpc://127.0.0.1:8001") as client:
    ...     page = await client.embed("chart.png")
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        precision: str = "fp16",
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        batch_size: int = _base.DEFAULT_BATCH_SIZE,
    ) -> None:
        self.options = _base.ClientOptions.create(url, precision, timeout, max_retries, batch_size)
        self._transport = AsyncTransport(self.options.endpoint, timeout, batch_size)

    @property
    def url(self) -> str:
        return self.options.endpoint.url

    async def _infer(self, model: str, name: str, items: list[bytes]) -> dict[str, np.ndarray]:
        return await retrying_async(lambda: self._transport.infer(model, name, items), self.options.max_retries)

    async def _infer_each(
        self, model: str, name: str, items: list[bytes], progress: _base.Progress | None, window: int | None = None
    ) -> list:
        window = window or self.options.batch_size
        results: list = []
        for chunk in _base.chunks(items, window * 4):
            results.extend(await self._transport.infer_each(model, name, chunk, window))
            for i in range(len(results) - len(chunk), len(results)):
                if isinstance(results[i], ColQwen2Error) and results[i].retryable:
                    try:
                        results[i] = await self._infer(model, name, [items[i]])
                    except ColQwen2Error as exc:
                        results[i] = exc
            if progress:
                progress(len(results), len(items))
        return results

    async def embed(self, image: ImageInput) -> Embedding:
        """One image (a path, bytes, a PIL image or a base64 string) -> its Embedding."""
        return _base.single(await self._infer(self.options.image_model, IMAGE_INPUT, [image_bytes(image)]))

    async def embed_batch(
        self,
        images: Sequence[ImageInput],
        batch_size: int | None = None,
        progress: bool | _base.Progress | None = None,
        return_exceptions: bool = False,
    ) -> list[Embedding]:
        """Many images, one request each with `batch_size` in flight (Triton batches them)."""
        data, sendable = _base.encode_images(images)
        sent = await self._infer_each(
            self.options.image_model,
            IMAGE_INPUT,
            [data[i] for i in sendable],
            _base.progress_callback(progress, skipped=len(data) - len(sendable)),
            batch_size,
        )
        for i, result in zip(sendable, sent, strict=True):
            data[i] = result
        return _base.collect(data, return_exceptions, "image")

    async def embed_query(self, text: str) -> Embedding:
        """One text query -> its Embedding (one vector per token, augmentation tokens included)."""
        items = [text_bytes(text)]
        return _base.single(await self._infer(self.options.query_model, TEXT_INPUT, items))

    async def embed_queries(self, texts: Sequence[str], return_exceptions: bool = False) -> list[Embedding]:
        items = [text_bytes(t) for t in texts]
        results = await self._infer_each(self.options.query_model, TEXT_INPUT, items, None)
        return _base.collect(results, return_exceptions, "query")

    async def score(self, query: str | Embedding, images: Sequence[Embedding | ImageInput]) -> np.ndarray:
        """MaxSim of the query against each image, float32 [len(images)]."""
        q = query if isinstance(query, Embedding) else await self.embed_query(query)
        todo = [i for i, image in enumerate(images) if not isinstance(image, Embedding)]
        done = dict(zip(todo, await self.embed_batch([images[i] for i in todo]), strict=True))
        return maxsim_scores(q, [done.get(i, image) for i, image in enumerate(images)])

    async def canary(self) -> dict[str, Any]:
        """Embed a small image and a query on the health lane (Triton priority 1: served before
        user traffic, never refused by a full queue). Raises the SDK error that stopped it; no retries."""
        return await self._canary_inferences(await self._transport.model_parameters(self.options.image_model))

    async def _canary_inferences(self, parameters: dict[str, str]) -> dict[str, Any]:
        image = await self._transport.infer(self.options.image_model, IMAGE_INPUT, [_base.canary_png()], canary=True)
        query = await self._transport.infer(self.options.query_model, TEXT_INPUT, [CANARY_QUERY.encode()], canary=True)
        return _base.canary_info(parameters, image, query)

    async def health(self) -> dict[str, Any]:
        """`{"status", "gpu_available", "model_loaded", "execution_provider"}`; `model_loaded` only after real
        canary inferences."""
        parameters = None
        try:
            parameters = await self._transport.model_parameters(self.options.image_model)
            info = await self._canary_inferences(parameters)
        except ColQwen2Error:
            return _base.health_verdict(False, parameters)
        return _base.health_verdict(True, parameters, info["execution_provider"])

    async def server_info(self) -> dict[str, str]:
        """The image ensemble's config parameters: precision, device, resolution, max_visual_tokens, checkpoint."""
        return await self._transport.model_parameters(self.options.image_model)

    def with_options(self, **overrides: Any) -> AsyncColQwen2Client:
        """A new client with some options changed, e.g. `client.with_options(timeout=5)`."""
        return AsyncColQwen2Client(self.options.endpoint.url, **(self.options.settings() | overrides))

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncColQwen2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
