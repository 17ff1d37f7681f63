"""The clients' sans-IO core (`_plans`) without a server: plans driven by hand, and both clients over fakes."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from colqwen2_client import (
    AsyncColQwen2Client,
    ColQwen2Client,
    Embedding,
    InvalidInputError,
    ServerBusyError,
    ServerUnavailableError,
    _base,
    _plans,
    _retry,
)
from colqwen2_client._constants import IMAGE_INPUT, TEXT_INPUT

OPTIONS = _base.ClientOptions.create("grpc://triton:8001", "fp16", 60.0, 2, 1, None)


def outputs(n: int = 3, provider: bytes | None = None) -> dict[str, np.ndarray]:
    """One item's ensemble outputs: n unit vectors."""
    vectors = np.zeros((1, n, 128), np.float32)
    vectors[0, :, 0] = 1.0
    out = {"embeddings": vectors, "num_vectors": np.array([[n]]), "pooled": vectors[:, 0]}
    if provider is not None:
        out["execution_provider"] = np.array([[provider]], dtype=np.object_)
    return out


def test_infer_retries_with_backoff_only_what_is_safe_to_retry():
    plan = _plans.infer(OPTIONS, "colqwen2", IMAGE_INPUT, [b"png"])
    # a client that retries says so: a busy server then holds the place in line it hands out
    assert next(plan) == _plans.Call("infer", ("colqwen2", IMAGE_INPUT, [b"png"]), {"place": ""})
    pause = plan.throw(ServerBusyError("queue full"))
    assert isinstance(pause, _plans.Sleep) and 0.125 <= pause.seconds <= 0.25
    assert plan.send(None) == _plans.Call("infer", ("colqwen2", IMAGE_INPUT, [b"png"]), {"place": ""})
    with pytest.raises(StopIteration) as stop:
        plan.send(answer := outputs())
    assert stop.value.value is answer

    hinted = _plans.infer(OPTIONS, "colqwen2", IMAGE_INPUT, [b"png"])
    next(hinted)
    pause = hinted.throw(ServerBusyError("busy: retry in 3 s", retry_after=3.0))
    assert 3.0 <= pause.seconds <= 3.75  # the server's hint, up to a quarter later (clients told the same second)
    assert hinted.send(None) == _plans.Call("infer", ("colqwen2", IMAGE_INPUT, [b"png"]), {"place": ""})
    hinted = _plans.infer(OPTIONS, "colqwen2", IMAGE_INPUT, [b"png"])
    next(hinted)
    pause = hinted.throw(ServerBusyError("busy: retry in 3 s with place 9f3a due in 2.5 s", 2.5, place="9f3a"))
    assert 2.5 <= pause.seconds <= 2.5 + _retry.PLACE_SPREAD  # its place in line: when it is due
    assert hinted.send(None) == _plans.Call("infer", ("colqwen2", IMAGE_INPUT, [b"png"]), {"place": "9f3a"})
    hinted.throw(ServerBusyError("queue full"))  # the retry never reached admission: the place is still held
    assert hinted.send(None).kwargs == {"place": "9f3a!"}  # the last of OPTIONS' 2 retries: claim, hold nothing

    refused = _plans.infer(OPTIONS, "colqwen2", IMAGE_INPUT, [b"png"])
    next(refused)
    with pytest.raises(InvalidInputError):  # not retryable: raised at once, no pause
        refused.throw(InvalidInputError("bad image"))

    down = _plans.infer(OPTIONS, "colqwen2", IMAGE_INPUT, [b"png"])
    next(down)
    for _ in range(OPTIONS.max_retries):
        assert isinstance(down.throw(ServerUnavailableError("down")), _plans.Sleep)
        next(down)
    with pytest.raises(ServerUnavailableError):  # max_retries spent
        down.throw(ServerUnavailableError("down"))

    once = _base.ClientOptions.create("grpc://triton:8001", "fp16", 60.0, 0, 1, None)
    assert next(_plans.infer(once, "colqwen2", IMAGE_INPUT, [b"png"])).kwargs == {"place": None}  # never back


def test_infer_each_sends_chunks_and_retries_unhinted_failures_one_at_a_time():
    """Refusals with a place in line are the transport's to retry (each item on its own, `hinted_only`); what is
    left retryable without a hint (a full queue) is retried one at a time, as a full queue always admits."""
    items = [bytes([i]) for i in range(6)]
    seen: list[tuple[int, int]] = []
    plan = _plans.infer_each(OPTIONS, "colqwen2", IMAGE_INPUT, items, lambda done, total: seen.append((done, total)))
    retry = _retry.Retry(OPTIONS.max_retries, hinted_only=True)
    assert next(plan) == _plans.Call("infer_each", ("colqwen2", IMAGE_INPUT, items[:4], 1), {"retry": retry})
    spent = ServerBusyError("busy: retry in 2 s", retry_after=2.0)  # its hinted retries spent in the transport
    first = [outputs(), ServerBusyError("queue full"), InvalidInputError("bad"), spent]
    assert plan.send(first) == _plans.Call("infer", ("colqwen2", IMAGE_INPUT, [items[1]]), {"place": ""})
    retried = outputs()
    assert plan.send(retried) == _plans.Call("infer_each", ("colqwen2", IMAGE_INPUT, items[4:], 1), {"retry": retry})
    assert seen == [(4, 6)]
    with pytest.raises(StopIteration) as stop:
        plan.send([outputs(), outputs()])
    results = stop.value.value
    assert results[1] is retried and isinstance(results[2], InvalidInputError) and results[3] is spent
    assert len(results) == 6 and seen == [(4, 6), (6, 6)]


def test_the_retry_policy_follows_hints_claims_places_and_gives_up():
    retry = _retry.Retry(2)
    assert retry.first_place == "" and _retry.Retry(0).first_place is None
    busy = ServerBusyError("busy: retry in 4 s with place ab12 due in 3.51 s", retry_after=3.51, place="ab12")
    assert 3.51 <= retry.after(0, busy) <= 3.51 + _retry.PLACE_SPREAD  # when the place is due, barely later
    assert retry.place(0, busy, "") == "ab12"
    full = ServerBusyError("queue full")  # refused before admission: no place of its own
    assert retry.place(0, full, "") == ""  # the retry still says it comes back
    assert retry.place(0, full, "ab12") == "ab12"  # and keeps the place it holds
    assert retry.place(1, busy, "") == "ab12!"  # the last retry: claim it, hold nothing new
    assert retry.place(1, full, "") is None  # nothing to claim on the last: no place asked
    assert (
        _retry.Retry(2, places=False).place(0, busy, "ab12") is None and not _retry.Retry(2, places=False).first_place
    )
    assert retry.after(2, busy) is None  # spent
    assert retry.after(0, InvalidInputError("bad")) is None  # not retryable
    hinted_only = _retry.Retry(2, hinted_only=True)
    assert hinted_only.after(0, busy) and hinted_only.after(0, ServerBusyError("queue full")) is None
    assert _retry.retry_delay(0, ServerBusyError("x", retry_after=600.0)) <= 1.25 * 60  # the hint capped


class FakeTransport:
    """Answers like a server: `fail` maps a method to the errors its next calls raise, in turn."""

    def __init__(self, fail: dict[str, list[Exception]] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail or {}

    def _answer(self, method: str, args: Any, reply: Any) -> Any:
        self.calls.append((method, args))
        if self.fail.get(method):
            raise self.fail[method].pop(0)
        return reply

    def infer(self, model: str, name: str, items: list[bytes], canary: bool = False, place: str | None = None) -> Any:
        provider = b"cpu" if canary else None
        return self._answer(
            "infer", (model, name, len(items), canary), outputs(2 if name == TEXT_INPUT else 3, provider)
        )

    def infer_each(self, model: str, name: str, items: list[bytes], window: int, retry: Any = None) -> Any:
        return self._answer("infer_each", (model, name, len(items), window), [outputs() for _ in items])

    def model_parameters(self, model: str) -> Any:
        return self._answer("model_parameters", (model,), {"device": "cpu"})

    def close(self) -> None:
        pass


class AsyncFakeTransport(FakeTransport):
    async def infer(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return FakeTransport.infer(self, *args, **kwargs)

    async def infer_each(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return FakeTransport.infer_each(self, *args, **kwargs)

    async def model_parameters(self, model: str) -> Any:  # type: ignore[override]
        return FakeTransport.model_parameters(self, model)

    async def close(self) -> None:  # type: ignore[override]
        pass


def both_clients(monkeypatch: pytest.MonkeyPatch, fail: dict[str, list[Exception]] | None = None) -> list:
    """A sync and an async client over fakes that fail the same way; no backoff pauses."""
    monkeypatch.setattr(_retry, "backoff_delay", lambda attempt: 0.0)
    fail = fail or {}
    sync_fake, async_fake = FakeTransport({k: list(v) for k, v in fail.items()}), AsyncFakeTransport(fail)
    monkeypatch.setattr(ColQwen2Client, "_transport_type", staticmethod(lambda *args: sync_fake))
    monkeypatch.setattr(AsyncColQwen2Client, "_transport_type", staticmethod(lambda *args: async_fake))
    return [
        ColQwen2Client("grpc://triton:8001", max_retries=1),
        AsyncColQwen2Client("grpc://triton:8001", max_retries=1),
    ]


def call(client: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    result = getattr(client, method)(*args, **kwargs)
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def test_both_clients_make_the_same_calls_and_return_the_same(monkeypatch):
    answers = []
    for client in both_clients(monkeypatch, {"infer": [ServerBusyError("busy")]}):
        embedded = call(client, "embed", b"png")
        batch = call(client, "embed_batch", [b"a", 42, b"c"], return_exceptions=True)
        scores = call(client, "score", "query", [embedded, b"d"])
        answers.append((client._transport.calls, embedded.num_vectors, [type(b) for b in batch], scores.tolist()))
    assert answers[0] == answers[1]
    calls, vectors, kinds, scores = answers[0]
    assert calls[:2] == [("infer", ("colqwen2", IMAGE_INPUT, 1, False))] * 2  # the busy one retried
    assert ("infer_each", ("colqwen2", IMAGE_INPUT, 2, 16)) in calls  # 42 refused locally, never sent
    assert vectors == 3 and kinds == [Embedding, InvalidInputError, Embedding] and len(scores) == 2


def test_both_clients_agree_on_errors_and_health(monkeypatch):
    for client in both_clients(monkeypatch):
        assert call(client, "health")["status"] == "healthy"
        with pytest.raises(InvalidInputError, match=r"^image 1: unsupported image input"):
            call(client, "embed_batch", [b"a", 42])
    for client in both_clients(monkeypatch, {"model_parameters": [ServerUnavailableError("down")] * 2}):
        assert call(client, "health") == {"status": "unhealthy", "gpu_available": False, "model_loaded": False}
        with pytest.raises(ServerUnavailableError):  # the canary raises; no retries
            call(client, "canary")


def test_image_urls_are_fetched_in_one_step_and_a_failed_fetch_keeps_its_place():
    """A URL is fetched (a `Fetch` step, every URL of the call together); its failure is that image's alone."""
    from colqwen2_client.fetch import FetchError

    images = ["https://m.media-amazon.com/images/I/a.jpg", b"png", "http://keepa.example/chart.png"]
    plan = _plans.embed_batch(OPTIONS, images, return_exceptions=True)
    fetch = next(plan)
    assert fetch == _plans.Fetch((images[0], images[2]), OPTIONS.fetch)
    failed = FetchError("keepa.example", "HTTP 404 Not Found")
    sent = plan.send([b"jpg", failed])
    assert sent.args == ("colqwen2", IMAGE_INPUT, [b"jpg", b"png"], 1)
    with pytest.raises(StopIteration) as stop:
        plan.send([outputs(), outputs()])
    first, second, third = stop.value.value
    assert isinstance(first, Embedding) and isinstance(second, Embedding) and third is failed
    assert str(third) == "cannot fetch the image at keepa.example: HTTP 404 Not Found"
