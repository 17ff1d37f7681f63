"""The one exception that becomes an INVALID_ARG response for the request that caused it."""

from __future__ import annotations


class InputError(ValueError):
    """A request's input is unusable; the message names the problem and is shown to the caller."""
