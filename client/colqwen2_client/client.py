"""`ColQwen2Client`: the blocking SDK over Triton (HTTP or gRPC, picked by the URL's scheme)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from . import _base, _plans
from ._transport import SyncTransport
from .fetch import fetch_or_error
from .inputs import ImageInput
from .types import Embedding

T = TypeVar("T")


class ColQwen2Client(_base.BaseClient):
    """Embed images and queries with the ColQwen2 service.

    >>> with ColQwen2Client("grpc://127.0.0.1:8001") as client:
    ...     page = client.embed("chart.png")
    ...     scores = client.score("lego price drop", [page])
    """

    _transport_type = SyncTransport
    _transport: SyncTransport

    def _run(self, plan: _plans.Plan[T]) -> T:
        """Make each call the plan asks for, blocking; its answer (or its exception) goes back in."""
        run = _plans.Run(plan)
        for step in run:
            try:
                run.reply = self._do(step)
            except Exception as exc:
                run.error = exc
        return run.result

    def _do(self, step: _plans.Step) -> Any:
        if isinstance(step, _plans.Sleep):
            return time.sleep(step.seconds)
        if isinstance(step, _plans.Fetch):
            with ThreadPoolExecutor(min(8, len(step.urls)), "colqwen2-fetch") as pool:
                return list(pool.map(lambda url: fetch_or_error(url, step.policy), step.urls))
        return step.on(self._transport)

    def embed(self, image: ImageInput) -> Embedding:
        """One image (a path, an http(s) URL, bytes, a PIL image or a base64 string) -> its Embedding."""
        return self._run(_plans.embed(self.options, image))

    def embed_batch(
        self,
        images: Sequence[ImageInput],
        batch_size: int | None = None,
        progress: bool | _base.Progress | None = None,
        return_exceptions: bool = False,
    ) -> list[Embedding]:
        """Many images, one request each with `batch_size` in flight (Triton batches them).

        A bad image raises its error naming its index, unless `return_exceptions`, which puts
        the error in its place and keeps the rest.
        """
        return self._run(_plans.embed_batch(self.options, images, batch_size, progress, return_exceptions))

    def embed_query(self, text: str) -> Embedding:
        """One text query -> its Embedding (one vector per token, augmentation tokens included)."""
        return self._run(_plans.embed_query(self.options, text))

    def embed_queries(self, texts: Sequence[str], return_exceptions: bool = False) -> list[Embedding]:
        return self._run(_plans.embed_queries(self.options, texts, return_exceptions))

    def score(self, query: str | Embedding, images: Sequence[Embedding | ImageInput]) -> np.ndarray:
        """MaxSim of the query against each image, float32 [len(images)]."""
        return self._run(_plans.score(self.options, query, images))

    def canary(self) -> dict[str, Any]:
        """Embed a small image and a query on the health lane (Triton priority 1: served before
        user traffic, never refused by a full queue). Raises the SDK error that stopped it; no retries."""
        return self._run(_plans.canary(self.options))

    def health(self) -> dict[str, Any]:
        """`{"status", "gpu_available", "model_loaded", "execution_provider"}`; `model_loaded` only after real
        canary inferences."""
        return self._run(_plans.health(self.options))

    def server_info(self) -> dict[str, str]:
        """The image ensemble's config parameters: precision, device, resolution, max_visual_tokens, checkpoint."""
        return self._run(_plans.server_info(self.options))

    def with_options(self, **overrides: Any) -> ColQwen2Client:
        """A new client with some options changed, e.g. `client.with_options(timeout=5)`."""
        return ColQwen2Client(self.options.endpoint.url, **(self.options.settings() | overrides))

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> ColQwen2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
