"""What every request meets before the app parses it (ASGI middleware): a bearer token, a concurrency
limit, a body size limit and one deadline.

- Token (when configured): `Authorization: Bearer <token>`, compared in constant time (SHA-256 of
  both sides, then `hmac.compare_digest`); anything else is 401 and the reply echoes nothing.
- Headers: over 16 KiB in all is 431 (the HTTP server itself drops a connection whose header block
  passes 64 KiB, with a 400 when the client reads it).
- Concurrency: at most `max_concurrency` requests inside the app; the next is 503 at once, with
  `Retry-After`, instead of waiting without end.
- Body: a declared Content-Length over the limit is 413 at once; a chunked body is read up to the
  limit. The app then gets the body replayed (raising from inside `receive` would not work:
  FastAPI turns any error while reading the body into a 400).
- Deadline: `timeout` seconds for the whole request. A body still arriving then (a slow client
  trickling bytes) is 408; an app still waiting on Triton is 504.

`open_paths` (`/health`) skip the token and the concurrency limit, so the original probe and
troubleshooting command keep working under load.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

MAX_HEADER_BYTES = 16 * 1024  # all headers together; the HTTP server closes the connection past 64 KiB


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class RequestGuard:
    def __init__(
        self,
        app: Any,
        *,
        max_bytes: int,
        token: str = "",
        max_concurrency: int = 0,
        timeout: float = 0.0,
        open_paths: tuple[str, ...] = ("/health",),
    ) -> None:
        self.app, self.max_bytes, self.open_paths = app, max_bytes, open_paths
        self.expected = _digest(f"Bearer {token}".encode()) if token else None
        self.max_concurrency, self.timeout = max_concurrency, timeout
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers") or []
        if sum(len(k) + len(v) + 4 for k, v in raw_headers) > MAX_HEADER_BYTES:
            await _reply(send, 431, f"request headers over {MAX_HEADER_BYTES} bytes")
            return
        headers = dict(raw_headers)
        is_open = scope.get("path", "") in self.open_paths
        if self.expected is not None and not is_open:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(_digest(given), self.expected):
                await _reply(send, 401, "missing or invalid bearer token", [(b"www-authenticate", b"Bearer")])
                return
        limited = self.max_concurrency > 0 and not is_open
        if limited and self.in_flight >= self.max_concurrency:
            detail = f"gateway busy: {self.in_flight} requests in flight, the limit; retry shortly"
            await _reply(send, 503, detail, [(b"retry-after", b"1")])
            return
        if limited:
            self.in_flight += 1
        try:
            await self._guarded(scope, receive, send, headers)
        finally:
            if limited:
                self.in_flight -= 1

    async def _guarded(self, scope: dict, receive: Any, send: Any, headers: dict) -> None:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _reply(send, 413, f"request body over the limit of {self.max_bytes} bytes")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout if self.timeout > 0 else None
        try:
            messages = await asyncio.wait_for(self._read_body(receive), _left(deadline, loop))
        except TimeoutError:
            await _reply(send, 408, f"request body not received within {self.timeout:g} s")
            return
        if messages is None:
            await _reply(send, 413, f"request body over the limit of {self.max_bytes} bytes")
            return

        async def replay() -> dict:
            return messages.pop(0) if messages else await receive()

        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, replay, tracking_send), _left(deadline, loop))
        except TimeoutError:
            if not started:
                await _reply(send, 504, f"no answer within {self.timeout:g} s")

    async def _read_body(self, receive: Any) -> list[dict] | None:
        """The request's messages, or None once the body passes the limit."""
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return messages


def _left(deadline: float | None, loop: asyncio.AbstractEventLoop) -> float | None:
    return None if deadline is None else max(0.0, deadline - loop.time())


async def _reply(send: Any, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
