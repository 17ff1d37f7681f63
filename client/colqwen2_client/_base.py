"""What the sync and async clients share: options, model choice, backoff, results and the health verdict.

`BaseClient` holds the options and the transport; what each method does is in `_plans`.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from ._constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    EMBEDDING_DIM,
    MODELS,
    PROVIDER_OUTPUT,
)
from ._retry import Retry, backoff_delay, retry_delay  # noqa: F401  (the SDK's retry policy, re-exported)
from ._transport import Endpoint, parse_url
from .errors import ColQwen2Error, ServerError
from .fetch import FetchPolicy
from .inputs import image_bytes
from .types import Embedding

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ClientOptions:
    endpoint: Endpoint
    precision: str
    timeout: float
    max_retries: int
    batch_size: int
    fetch: FetchPolicy = field(default_factory=FetchPolicy)  # what image URLs may be fetched from (`fetch.py`)

    @classmethod
    def create(
        cls, url: str, precision: str, timeout: float, max_retries: int, batch_size: int, fetch: FetchPolicy | None
    ) -> ClientOptions:
        """Checked options; the defaults are `BaseClient`'s."""
        if precision not in MODELS:
            raise ValueError(f"precision must be one of {', '.join(MODELS)}, not {precision!r}")
        if timeout <= 0 or max_retries < 0 or batch_size < 1:
            raise ValueError("timeout must be > 0, max_retries >= 0 and batch_size >= 1")
        return cls(parse_url(url), precision, timeout, max_retries, batch_size, fetch or FetchPolicy())

    def settings(self) -> dict[str, Any]:
        """The keyword options a client was made with, for `with_options`."""
        return {
            "precision": self.precision,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "batch_size": self.batch_size,
            "fetch": self.fetch,
        }

    @property
    def image_model(self) -> str:
        return MODELS[self.precision][0]

    @property
    def query_model(self) -> str:
        return MODELS[self.precision][1]


class BaseClient:
    """The options and the transport both clients hold; a subclass names its transport and runs the plans."""

    _transport_type: ClassVar[Callable[[Endpoint, float, int], Any]]

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        precision: str = "fp16",
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        batch_size: int = DEFAULT_BATCH_SIZE,
        fetch: FetchPolicy | None = None,
    ) -> None:
        self.options = ClientOptions.create(url, precision, timeout, max_retries, batch_size, fetch)
        self._transport = self._transport_type(self.options.endpoint, timeout, batch_size)

    @property
    def url(self) -> str:
        return self.options.endpoint.url


def encode_images(images: Sequence[Any]) -> list[Any]:
    """Each image's bytes, or the SDK error it raised locally."""
    data: list[Any] = []
    for image in images:
        try:
            data.append(image_bytes(image))
        except ColQwen2Error as exc:
            data.append(exc)
    return data


def single(outputs: dict[str, np.ndarray]) -> Embedding:
    return Embedding.from_outputs(outputs, 0)


def collect(results: Sequence[Any], return_exceptions: bool, what: str = "image") -> list:
    """Per-item results -> Embeddings; the first error raised (naming its item) unless asked to return them."""
    out: list = []
    for index, result in enumerate(results):
        if isinstance(result, ColQwen2Error):
            if not return_exceptions:
                raise type(result)(f"{what} {index}: {result}") from None
            out.append(result)
        else:
            out.append(single(result))
    return out


def progress_callback(progress: bool | Progress | None, skipped: int = 0) -> Progress | None:
    """The caller's progress callable (or a stderr bar for True), counting inputs refused locally as done."""
    callback = StderrBar() if progress is True else (progress or None)
    if callback is None or not skipped:
        return callback
    return lambda done, total: callback(done + skipped, total + skipped)


class StderrBar:
    """`[#####.....] 640/2000  21.3/s  ETA 1m04s` on stderr, redrawn in place."""

    def __init__(self, width: int = 30) -> None:
        self.width, self.started = width, time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        filled = self.width * done // max(total, 1)
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {_duration((total - done) / rate)}" if rate > 0 and done < total else f"in {_duration(elapsed)}"
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}  {rate:.1f}/s  {eta}{end}")
        sys.stderr.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@lru_cache(maxsize=1)
def canary_png() -> bytes:
    """A small generated PNG: enough to prove decode, preprocess and the encoder all run."""
    image = Image.new("RGB", (56, 40), (255, 255, 255))
    image.paste((30, 90, 200), (8, 8, 48, 32))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def check_canary(embedding: Embedding, what: str) -> None:
    """A canary passes only with finite, unit-length 128-dim vectors."""
    v = embedding.vectors
    if v.ndim != 2 or v.shape[1] != EMBEDDING_DIM or v.shape[0] == 0 or not np.isfinite(v).all():
        raise ServerError(f"{what} canary returned malformed vectors {v.shape}")
    if not np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-2):
        raise ServerError(f"{what} canary vectors are not L2-normalised")


def provider_of(outputs: dict[str, np.ndarray]) -> str:
    value = outputs[PROVIDER_OUTPUT].reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def canary_info(parameters: dict[str, str], image: dict[str, np.ndarray], query: dict[str, np.ndarray]) -> dict:
    """What a passed canary proved: both ensembles answer with well-formed vectors, on which provider."""
    image_embedding, query_embedding = single(image), single(query)
    check_canary(image_embedding, "image")
    check_canary(query_embedding, "query")
    return {
        "parameters": parameters,
        "image_vectors": image_embedding.num_vectors,
        "query_vectors": query_embedding.num_vectors,
        "execution_provider": provider_of(image),
    }


def health_verdict(loaded: bool, parameters: dict[str, str] | None, provider: str | None = None) -> dict[str, Any]:
    """The original service's health shape, plus the ONNX Runtime provider the encoder really runs on.

    A GPU deployment whose encoder fell back to the CPU provider (no CUDA libraries, a driver too old)
    is unhealthy, unless it was rendered with `--allow-cpu-fallback`.
    """
    parameters = parameters or {}
    fell_back = parameters.get("device") == "gpu" and provider == "cpu"
    healthy = loaded and (not fell_back or parameters.get("allow_cpu_fallback") == "true")
    verdict = {
        "status": "healthy" if healthy else "unhealthy",
        "gpu_available": provider in ("cuda", "tensorrt") if provider else parameters.get("device") == "gpu",
        "model_loaded": loaded,
    }
    if provider:
        verdict["execution_provider"] = provider
    return verdict
