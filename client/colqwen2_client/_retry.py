"""When the SDK retries a failed request, and with what: one policy for both clients and both transports."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._constants import DEFAULT_BACKOFF, FINAL_CLAIM, MAX_BACKOFF, MAX_HINT

# A place's holder comes back when it is due, up to this much later (seconds): places are due apart already, and a
# holder a quarter of its hint late (the spread for clients told the same second) left the room held for it idle.
PLACE_SPREAD = 0.1


def backoff_delay(attempt: int, base: float = DEFAULT_BACKOFF) -> float:
    """Equal jitter: half of min(cap, base * 2**attempt) for sure, the other half uniform, so the retries
    spread out and their sum has a floor (a restart they must outlast)."""
    ceiling = min(MAX_BACKOFF, base * 2**attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def retry_delay(attempt: int, error: BaseException) -> float:
    """How long to wait before retry `attempt + 1`: a server that said when (a busy refusal's `retry_after`: its
    place in the server's line of refused requests) is retried then, up to a quarter later so that clients told
    the same second do not return together (the hint capped at MAX_HINT), or, holding a place (each due at its
    own time), when it is due, up to PLACE_SPREAD later; anything else with `backoff_delay`."""
    hint = getattr(error, "retry_after", None)
    if hint and getattr(error, "place", ""):  # a place of its own in the line: come back when it is due
        return min(hint, MAX_HINT) + random.uniform(0.0, PLACE_SPREAD)
    if hint:
        return min(hint, MAX_HINT) * random.uniform(1.0, 1.25)
    return backoff_delay(attempt)


def hinted(error: BaseException) -> bool:
    """A busy refusal that said when to retry (admission's place in line), not a full queue or a server down."""
    return bool(getattr(error, "retry_after", None))


@dataclass(frozen=True)
class Retry:
    """Up to `max_retries` retries of a request whose error is retryable, each after `retry_delay`; a busy
    refusal's place in line (`ServerBusyError.place`) goes with the retry that claims it."""

    max_retries: int
    hinted_only: bool = False  # retry only busy refusals that said when (the rest are the caller's to retry)
    # The client comes back with the places refusals give it, each at its hint. Off where a transport cannot keep
    # that time (one that reads its answers in order): a place nobody claims holds room against others.
    places: bool = True

    @property
    def first_place(self) -> str | None:
        """What a first attempt says of places: "" (it will come back with the place a refusal gives it) when it
        retries, None (nothing: the server holds no room for a client that will not claim it) when it does not."""
        return "" if self.places and self.max_retries > 0 else None

    def after(self, attempt: int, error: BaseException) -> float | None:
        """Seconds to wait before retrying a request that failed `attempt` + 1 times with `error`; None: give up."""
        if attempt >= self.max_retries or not getattr(error, "retryable", False):
            return None
        if self.hinted_only and not hinted(error):
            return None
        return retry_delay(attempt, error)

    def place(self, attempt: int, error: BaseException, held: str | None = "") -> str | None:
        """The place parameter of the retry after `attempt` failed with `error`: the place that refusal gave, else
        the one still `held` (a full queue's refusal never reached admission, and the place stays the client's),
        else "" (it would come back); on the last retry, the claim alone (FINAL_CLAIM), or nothing to claim."""
        if not self.places:
            return None
        token = getattr(error, "place", "") or (held or "").removesuffix(FINAL_CLAIM)
        if attempt + 1 >= self.max_retries:
            return token + FINAL_CLAIM if token else None
        return token
