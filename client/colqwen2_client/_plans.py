"""The sans-IO core of both clients: each method, written once as a plan.

A plan is a generator that yields the I/O it needs, a transport `Call`, a `Fetch` of image URLs or a
`Sleep`, and is sent the call's answer (or has the call's exception thrown in). It never touches the
network or the clock: `ColQwen2Client` runs a plan with blocking calls, fetches in threads and
`time.sleep`, `AsyncColQwen2Client` awaits the same calls, fetches in `asyncio.to_thread` and
`asyncio.sleep` (psycopg 3's generators and its `wait`/`wait_async` work the same way).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from . import _base, _retry
from ._constants import CANARY_QUERY, IMAGE_INPUT, TEXT_INPUT
from ._transport import Outputs
from .errors import ColQwen2Error
from .fetch import FetchPolicy, is_url
from .inputs import ImageInput, text_bytes
from .scoring import maxsim_scores
from .types import Embedding

T = TypeVar("T")


@dataclass
class Call:
    """`transport.<method>(*args, **kwargs)`: blocking on a `SyncTransport`, a coroutine on an `AsyncTransport`."""

    method: str  # "infer" | "infer_each" | "model_parameters"
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def on(self, transport: Any) -> Any:
        return getattr(transport, self.method)(*self.args, **self.kwargs)


@dataclass(frozen=True)
class Sleep:
    """Wait `seconds` before the next step: the backoff between two retries."""

    seconds: float


@dataclass(frozen=True)
class Fetch:
    """Fetch image URLs (`fetch.fetch_image` under `policy`, side by side): each one's bytes or its FetchError."""

    urls: tuple[str, ...]
    policy: FetchPolicy


Step = Call | Sleep | Fetch
Plan = Generator[Step, Any, T]


class Run(Generic[T]):
    """A plan, stepped for a driver: iterate for its steps, set `reply` (or `error`) to each one's answer,
    then read `result`. An error the plan does not handle leaves the loop as it was raised."""

    def __init__(self, plan: Plan[T]) -> None:
        self.plan = plan
        self.reply: Any = None
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[Step]:
        while True:
            reply, error, self.reply, self.error = self.reply, self.error, None, None
            try:
                step = self.plan.send(reply) if error is None else self.plan.throw(error)
            except StopIteration as stop:
                self.result: T = stop.value
                return
            yield step


def infer(options: _base.ClientOptions, model: str, name: str, items: list[bytes], held: str = "") -> Plan[Outputs]:
    """One request carrying every item, retried with backoff while its error is retryable, each retry claiming
    the place in line its busy refusal gave it (`held`: a place the items already hold)."""
    retry = _base.Retry(options.max_retries)
    place = (held or retry.first_place) if options.max_retries else None
    for attempt in range(options.max_retries + 1):
        try:
            return (yield Call("infer", (model, name, items), {"place": place}))
        except ColQwen2Error as exc:
            pause = retry.after(attempt, exc)
            if pause is None:
                raise
            place = retry.place(attempt, exc, place)
        yield Sleep(pause)
    raise AssertionError("unreachable")


def infer_each(
    options: _base.ClientOptions,
    model: str,
    name: str,
    items: list[bytes],
    progress: _base.Progress | None,
    window: int | None = None,
) -> Plan[list]:
    """One request per item, `window` in flight, in chunks of 4 windows; a result or the item's error, in order.
    Refusals that say when (admission's places in line) the transport retries item by item, each holding its
    slot in the window while it waits, so they come back at their places, not one after another; other retryable
    failures (a full queue, a server restarting) are retried here afterwards, one at a time, which a full queue
    always admits where a window of retries would fill it again."""
    window = window or options.batch_size
    retry = _base.Retry(options.max_retries, hinted_only=True)
    results: list = []
    for chunk in _base.chunks(items, window * 4):
        results.extend((yield Call("infer_each", (model, name, chunk, window), {"retry": retry})))
        for i in range(len(results) - len(chunk), len(results)):
            if isinstance(results[i], ColQwen2Error) and results[i].retryable and not _retry.hinted(results[i]):
                try:  # still holding the place its last hinted refusal gave it, if any
                    results[i] = yield from infer(options, model, name, [items[i]], getattr(results[i], "place", ""))
                except ColQwen2Error as exc:
                    results[i] = exc
        if progress:
            progress(len(results), len(items))
    return results


def load_images(options: _base.ClientOptions, images: Sequence[ImageInput]) -> Plan[list[Any]]:
    """Each image's bytes, or the SDK error it raised locally; the URLs among them fetched in one `Fetch`."""
    urls = [i for i, image in enumerate(images) if is_url(image)]
    fetched = (yield Fetch(tuple(str(images[i]) for i in urls), options.fetch)) if urls else []
    data = _base.encode_images([b"" if is_url(image) else image for image in images])
    for i, result in zip(urls, fetched, strict=True):
        data[i] = result
    return data


def embed(options: _base.ClientOptions, image: ImageInput) -> Plan[Embedding]:
    (data,) = yield from load_images(options, [image])
    if isinstance(data, Exception):
        raise data
    return _base.single((yield from infer(options, options.image_model, IMAGE_INPUT, [data])))


def embed_batch(
    options: _base.ClientOptions,
    images: Sequence[ImageInput],
    batch_size: int | None = None,
    progress: bool | _base.Progress | None = None,
    return_exceptions: bool = False,
) -> Plan[list]:
    """Images refused locally keep their place (and count as done); the rest are sent, one request each."""
    data = yield from load_images(options, images)
    sendable = [i for i, d in enumerate(data) if isinstance(d, bytes)]
    sent = yield from infer_each(
        options,
        options.image_model,
        IMAGE_INPUT,
        [data[i] for i in sendable],
        _base.progress_callback(progress, skipped=len(data) - len(sendable)),
        batch_size,
    )
    for i, result in zip(sendable, sent, strict=True):
        data[i] = result
    return _base.collect(data, return_exceptions, "image")


def embed_query(options: _base.ClientOptions, text: str) -> Plan[Embedding]:
    items = [text_bytes(text)]
    return _base.single((yield from infer(options, options.query_model, TEXT_INPUT, items)))


def embed_queries(options: _base.ClientOptions, texts: Sequence[str], return_exceptions: bool = False) -> Plan[list]:
    items = [text_bytes(t) for t in texts]
    results = yield from infer_each(options, options.query_model, TEXT_INPUT, items, None)
    return _base.collect(results, return_exceptions, "query")


def score(
    options: _base.ClientOptions, query: str | Embedding, images: Sequence[Embedding | ImageInput]
) -> Plan[np.ndarray]:
    """Embeds the query and the images not embedded yet, then MaxSim."""
    q = query if isinstance(query, Embedding) else (yield from embed_query(options, query))
    todo = [i for i, image in enumerate(images) if not isinstance(image, Embedding)]
    done = dict(zip(todo, (yield from embed_batch(options, [images[i] for i in todo])), strict=True))
    return maxsim_scores(q, [done.get(i, image) for i, image in enumerate(images)])


def server_info(options: _base.ClientOptions) -> Plan[dict[str, str]]:
    return (yield Call("model_parameters", (options.image_model,)))


def canary(options: _base.ClientOptions) -> Plan[dict[str, Any]]:
    """The image ensemble's parameters, then the canary inferences; no retries."""
    parameters = yield from server_info(options)
    return (yield from canary_inferences(options, parameters))


def canary_inferences(options: _base.ClientOptions, parameters: dict[str, str]) -> Plan[dict[str, Any]]:
    """A small image and a query on the health lane; what they proved (or the SDK error that stopped them)."""
    image = yield Call("infer", (options.image_model, IMAGE_INPUT, [_base.canary_png()]), {"canary": True})
    query = yield Call("infer", (options.query_model, TEXT_INPUT, [CANARY_QUERY.encode()]), {"canary": True})
    return _base.canary_info(parameters, image, query)


def health(options: _base.ClientOptions) -> Plan[dict[str, Any]]:
    """The health verdict: unhealthy on any SDK error on the way."""
    parameters = None
    try:
        parameters = yield from server_info(options)
        info = yield from canary_inferences(options, parameters)
    except ColQwen2Error:
        return _base.health_verdict(False, parameters)
    return _base.health_verdict(True, parameters, info["execution_provider"])
