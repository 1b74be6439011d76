"""The one error type a client is told about: a request the policy cannot serve."""

from __future__ import annotations


class RequestError(ValueError):
    """A bad observation or RTC request (missing key, wrong shape / dtype, NaN). The message names
    the key and what was expected; the server sends it to the client and keeps serving."""
