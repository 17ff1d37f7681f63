"""tritonclient behind one small interface, sync and async, over HTTP or gRPC.

Everything tritonclient, grpc, gevent or aiohttp can raise is translated here into the SDK's
own exceptions, so callers see one hierarchy whatever the protocol.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import re
import socket
import threading
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

import numpy as np

from ._constants import (
    CANARY_PRIORITY,
    DEFAULT_PORTS,
    FINAL_CLAIM,
    IMAGE_INPUT,
    IMAGE_OUTPUTS,
    OUTPUTS,
    PLACE_PARAMETER,
    PROVIDER_OUTPUT,
)
from ._retry import Retry
from .errors import (
    ColQwen2Error,
    InvalidInputError,
    ModelNotFoundError,
    RequestTimeoutError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
)

T = TypeVar("T")
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class Endpoint:
    protocol: str  # "http" | "grpc"
    address: str  # host:port
    ssl: bool

    @property
    def url(self) -> str:
        return f"{self.protocol}{'s' if self.ssl else ''}://{self.address}"


def parse_url(url: str) -> Endpoint:
    """`http://host:8000` (the default scheme), `https://...`, `grpc://host:8001`, `grpcs://...`."""
    if "://" not in url:
        url = f"http://{url}"
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"unsupported scheme {scheme!r} in {url!r}: use http://, https://, grpc:// or grpcs://")
    if not parsed.hostname:
        raise ValueError(f"no host in {url!r}")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    port = parsed.port or DEFAULT_PORTS[scheme]
    return Endpoint("grpc" if scheme.startswith("grpc") else "http", f"{host}:{port}", scheme.endswith("s"))


def translate(exc: BaseException, model: str = "") -> ColQwen2Error:
    """Any transport exception -> the SDK's exception, with the server's message kept."""
    if isinstance(exc, ColQwen2Error):
        return exc
    where = f" ({model})" if model else ""
    status = ""
    message = str(exc)
    if hasattr(exc, "status") and hasattr(exc, "message"):  # tritonclient's InferenceServerException
        status = str(exc.status() or "")
        message = exc.message() or message
        message = re.sub(r"^in ensemble '[^']*', ", "", message)  # Triton's wrapper adds nothing for users
    lowered = message.lower()
    if status in ("400", "StatusCode.INVALID_ARGUMENT"):
        return InvalidInputError(message)
    if lowered.startswith("busy:"):  # the server's admission: refused before any work, with a retry hint
        hint = re.search(r"retry in (\d+) s", message)
        place = re.search(r"with place ([0-9a-f]+)(?: due in ([\d.]+) s)?", message)
        due = float(place.group(2)) if place and place.group(2) else None  # when its place is due, not rounded
        after = due if due is not None else float(hint.group(1)) if hint else None
        return ServerBusyError(f"server {message}{where}", after, place.group(1) if place else "")
    if "maximum queue size" in lowered or "queue is full" in lowered or "request timeout expired" in lowered:
        return ServerBusyError(f"server busy{where}: {message}")
    if "stub process" in lowered and "not healthy" in lowered:
        # A model's process died: the server's supervisor restarts it; embedding is idempotent, so retry.
        return ServerUnavailableError(f"model process down{where}: {message}")
    if "has no available versions" in lowered:  # known but not loaded: a server starting or stopping
        return ServerUnavailableError(f"model not loaded yet{where}: {message}")
    if status in ("404", "StatusCode.NOT_FOUND") or "unknown model" in lowered or "unavailable model" in lowered:
        return ModelNotFoundError(f"model not served{where}: {message}")
    if status in ("504", "StatusCode.DEADLINE_EXCEEDED") or "deadline exceeded" in lowered:
        return RequestTimeoutError(f"timed out{where}: {message}")
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)) or type(exc).__name__ == "Timeout":
        return RequestTimeoutError(f"timed out{where}: {message or type(exc).__name__}")
    if status in ("503", "StatusCode.UNAVAILABLE") or isinstance(exc, (ConnectionError, OSError)):
        return ServerUnavailableError(f"server unavailable{where}: {message or type(exc).__name__}")
    if type(exc).__module__.startswith("aiohttp"):
        return ServerUnavailableError(f"server unavailable{where}: {message or type(exc).__name__}")
    return ServerError(f"server error{where}: {message}")


def _bytes_input(module: Any, protocol: str, name: str, items: Sequence[bytes]) -> Any:
    """A [n, 1] BYTES input of tritonclient's `module` (http, grpc or their aio twins)."""
    tensor = module.InferInput(name, [len(items), 1], "BYTES")
    array = np.array([[item] for item in items], dtype=np.object_)
    if protocol == "http":
        tensor.set_data_from_numpy(array, binary_data=True)  # JSON cannot carry raw bytes
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def _names(input_name: str, canary: bool = False) -> tuple[str, ...]:
    names = IMAGE_OUTPUTS if input_name == IMAGE_INPUT else OUTPUTS
    return (*names, PROVIDER_OUTPUT) if canary else names


def _outputs(result: Any, input_name: str, canary: bool = False) -> Outputs:
    return {name: result.as_numpy(name) for name in _names(input_name, canary)}


def _parameters(config: dict) -> dict[str, str]:
    config = config.get("config", config)  # gRPC's JSON wraps the config
    return {k: v.get("string_value", v.get("stringValue", "")) for k, v in (config.get("parameters") or {}).items()}


def _holding(outcome: Any, place: str | None) -> Any:
    """An item's last outcome; a busy refusal that gave no place of its own (a full queue's, which never reached
    admission) keeps the one its attempt claimed, for the caller's own retries."""
    if isinstance(outcome, ServerBusyError) and not outcome.place and place:
        outcome.place = place.removesuffix(FINAL_CLAIM)
    return outcome


class _Transport:
    """What both transports share: the endpoint, the timeout, tritonclient's client and request building."""

    aio: ClassVar[bool]  # tritonclient's asyncio client (`tritonclient.http.aio`, `tritonclient.grpc.aio`)

    def __init__(self, endpoint: Endpoint, timeout: float, concurrency: int) -> None:
        self.endpoint, self.timeout = endpoint, timeout
        self.module: Any = importlib.import_module(f"tritonclient.{endpoint.protocol}{'.aio' if self.aio else ''}")
        http = self._http_options(timeout, max(1, concurrency)) if endpoint.protocol == "http" else {}
        self.client = self.module.InferenceServerClient(endpoint.address, ssl=endpoint.ssl, **http)

    @staticmethod
    def _http_options(timeout: float, connections: int) -> dict[str, Any]:
        raise NotImplementedError

    def _input(self, name: str, items: Sequence[bytes]) -> Any:
        return _bytes_input(self.module, self.endpoint.protocol, name, items)

    def _infer_options(self, canary: bool, place: str | None = None) -> dict[str, Any]:
        """A canary rides the health lane; gRPC takes the timeout per request; `place` (None: none) is the
        request's PLACE_PARAMETER, its place in the server's line of refused requests."""
        options: dict[str, Any] = {"priority": CANARY_PRIORITY if canary else 0}
        if self.endpoint.protocol == "grpc":
            options["client_timeout"] = self.timeout
        if place is not None:
            options["parameters"] = {PLACE_PARAMETER: place}
        return options


class SyncTransport(_Transport):
    """Blocking calls; `infer_each` keeps up to `concurrency` single-item requests in flight."""

    aio = False

    @staticmethod
    def _http_options(timeout: float, connections: int) -> dict[str, Any]:
        return {"concurrency": connections, "connection_timeout": timeout, "network_timeout": timeout}

    def _outputs_requested(self, input_name: str, canary: bool = False) -> list:
        if self.endpoint.protocol == "http":
            return [self.module.InferRequestedOutput(n, binary_data=True) for n in _names(input_name, canary)]
        return [self.module.InferRequestedOutput(n) for n in _names(input_name, canary)]

    def infer(
        self, model: str, input_name: str, items: Sequence[bytes], canary: bool = False, place: str | None = None
    ) -> Outputs:
        """One request carrying every item; a canary rides the health lane and asks which provider ran it."""
        kwargs = self._infer_options(canary, place) | {"outputs": self._outputs_requested(input_name, canary)}
        try:
            return _outputs(self.client.infer(model, [self._input(input_name, items)], **kwargs), input_name, canary)
        except Exception as exc:
            raise translate(exc, model) from None

    def infer_each(
        self, model: str, input_name: str, items: Sequence[bytes], window: int, retry: Retry | None = None
    ) -> list[Outputs | ColQwen2Error]:
        """One request per item, `window` in flight, each retried on its own under `retry` (holding its slot
        while it waits); a result or the item's last error, in order."""
        retry = retry or Retry(0)
        if self.endpoint.protocol == "http":
            return self._each_http(model, input_name, items, window, retry)
        return self._each_grpc(model, input_name, items, window, retry)

    def _each_http(self, model: str, input_name: str, items: Sequence[bytes], window: int, retry: Retry) -> list:
        results: list = [None] * len(items)
        pending: dict[int, Any] = {}
        next_item = 0
        # answers are read in order, so a retry's pause starts only once those before it are done: past the time
        # its place would be held, which would then hold room for nobody. Hints are followed, places not asked.
        retry = dataclasses.replace(retry, places=False)
        options = self._infer_options(False, retry.first_place)
        for done in range(len(items)):
            while next_item < len(items) and len(pending) < window:
                request = self._input(input_name, [items[next_item]])
                outputs = self._outputs_requested(input_name)
                pending[next_item] = self.client.async_infer(model, [request], outputs=outputs, **options)
                next_item += 1
            try:
                results[done] = _outputs(pending.pop(done).get_result(), input_name)
            except Exception as exc:
                results[done] = self._retried(model, input_name, items[done], translate(exc, model), retry)
        return results

    def _retried(self, model: str, input_name: str, item: bytes, error: ColQwen2Error, retry: Retry) -> Any:
        """`item` sent again while `retry` says so (its first attempt failed with `error`): a result or the last
        error. The other requests of the window stay in flight meanwhile."""
        attempt = 0
        while (pause := retry.after(attempt, error)) is not None:
            time.sleep(pause)
            try:
                return self.infer(model, input_name, [item], place=retry.place(attempt, error, None))
            except ColQwen2Error as exc:
                error, attempt = exc, attempt + 1
        return error

    def _each_grpc(self, model: str, input_name: str, items: Sequence[bytes], window: int, retry: Retry) -> list:
        results: list = [None] * len(items)
        slots = threading.Semaphore(window)
        finished = threading.Event()
        remaining = [len(items)]
        lock = threading.Lock()

        def send(index: int, attempt: int, place: str | None) -> None:
            try:
                self.client.async_infer(
                    model,
                    [self._input(input_name, [items[index]])],
                    callback=lambda result, error: callback(index, attempt, place, result, error),
                    outputs=self._outputs_requested(input_name),
                    **self._infer_options(False, place),
                )
            except Exception as exc:
                callback(index, attempt, place, None, exc)

        def callback(index: int, attempt: int, place: str | None, result: Any, error: Exception | None) -> None:
            final = True
            try:  # runs on a gRPC thread: whatever happens, the slot and the count must be released
                outcome = translate(error, model) if error is not None else _outputs(result, input_name)
                pause = retry.after(attempt, outcome) if isinstance(outcome, ColQwen2Error) else None
                if pause is not None:  # again after the pause, from a timer thread, still holding the slot
                    timer = threading.Timer(pause, send, (index, attempt + 1, retry.place(attempt, outcome, place)))
                    timer.daemon = True
                    timer.start()
                    final = False
                    return
                results[index] = _holding(outcome, place)
            except Exception as exc:
                results[index] = translate(exc, model)
            finally:
                if final:
                    slots.release()
                    with lock:
                        remaining[0] -= 1
                        if remaining[0] == 0:
                            finished.set()

        if not items:
            return results
        for index in range(len(items)):
            slots.acquire()
            send(index, 0, retry.first_place)
        finished.wait()
        return results

    def server_ready(self) -> bool:
        try:
            return bool(self.client.is_server_ready())
        except Exception as exc:
            raise translate(exc) from None

    def model_parameters(self, model: str) -> dict[str, str]:
        try:
            if self.endpoint.protocol == "grpc":
                return _parameters(self.client.get_model_config(model, as_json=True, client_timeout=self.timeout))
            return _parameters(self.client.get_model_config(model))
        except Exception as exc:
            raise translate(exc, model) from None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing must never raise
            pass


class AsyncTransport(_Transport):
    """The same calls on asyncio (tritonclient's `aio` clients)."""

    aio = True

    @staticmethod
    def _http_options(timeout: float, connections: int) -> dict[str, Any]:
        return {"conn_limit": connections, "conn_timeout": timeout}

    async def _call(self, awaitable: Awaitable[T], model: str = "") -> T:
        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except Exception as exc:
            raise translate(exc, model) from None

    async def infer(
        self, model: str, input_name: str, items: Sequence[bytes], canary: bool = False, place: str | None = None
    ) -> Outputs:
        kwargs = self._infer_options(canary, place)  # no outputs named: all come
        result = await self._call(self.client.infer(model, [self._input(input_name, items)], **kwargs), model)
        return _outputs(result, input_name, canary)

    async def infer_each(
        self, model: str, input_name: str, items: Sequence[bytes], window: int, retry: Retry | None = None
    ) -> list:
        """As `SyncTransport.infer_each`."""
        slots, retry = asyncio.Semaphore(window), retry or Retry(0)

        async def one(item: bytes) -> Outputs | ColQwen2Error:
            async with slots:
                place, attempt = retry.first_place, 0
                while True:
                    try:
                        return await self.infer(model, input_name, [item], place=place)
                    except ColQwen2Error as exc:
                        pause = retry.after(attempt, exc)
                        if pause is None:
                            return _holding(exc, place)
                        place, attempt = retry.place(attempt, exc, place), attempt + 1
                    await asyncio.sleep(pause)

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def server_ready(self) -> bool:
        return bool(await self._call(self.client.is_server_ready()))

    async def model_parameters(self, model: str) -> dict[str, str]:
        if self.endpoint.protocol == "grpc":
            return _parameters(await self._call(self.client.get_model_config(model, as_json=True), model))
        return _parameters(await self._call(self.client.get_model_config(model), model))

    async def close(self) -> None:
        try:
            await self.client.close()
        except Exception:
            pass
