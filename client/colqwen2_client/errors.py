"""The SDK's exceptions. tritonclient's, grpc's and aiohttp's never reach the caller."""

from __future__ import annotations


class ColQwen2Error(Exception):
    """Base class for every error this package raises."""

    retryable = False


class InvalidInputError(ColQwen2Error):
    """The input is unusable (bad image, empty query, ...); the message says why. Not retried."""


class ServerUnavailableError(ColQwen2Error):
    """The server cannot be reached or is not ready. Retried with backoff."""

    retryable = True


class ServerBusyError(ServerUnavailableError):
    """The server refused the request as busy (admission, or a full queue). Retried with backoff, waiting at
    least `retry_after` seconds when the server said how long (capped at the SDK's longest hint), and claiming
    `place`, the room the server holds for the retry from then on, when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None, place: str = "") -> None:
        super().__init__(message)
        self.retry_after, self.place = retry_after, place


class RequestTimeoutError(ColQwen2Error):
    """No answer within the timeout. Not retried: the server may still be working on it."""


class ModelNotFoundError(ColQwen2Error):
    """The server does not serve the requested ensemble (check `precision`)."""


class ServerError(ColQwen2Error):
    """The server failed on a valid request (for example a model whose process died)."""
