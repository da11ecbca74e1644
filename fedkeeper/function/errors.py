"""Errors that reach the user as one clear line."""

from __future__ import annotations

from typing import Any


class FedkeeperError(Exception):
    """Base class: the message is shown to the user as is, without a traceback.

    ``details`` are extra JSON fields a function adds to its ``{"error": ...}`` result.
    """

    exit_code = 1

    def __init__(self, message: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details: dict[str, Any] = details or {}


class ConfigError(FedkeeperError):
    """A configuration file is missing, unreadable, or has a bad field."""

    exit_code = 2


class ProviderError(FedkeeperError):
    """A platform refused or failed a control-plane request (deploy, remove, invoke)."""


class PayloadTooLarge(ProviderError):
    """A request or result is past the platform's payload limit."""


class StoreError(FedkeeperError):
    """The MongoDB store is unreachable or holds inconsistent state."""


STORE = "mongodb"  # what a StoreUnavailable names


class Unavailable(FedkeeperError):
    """``what`` (a platform's ``platform/cluster``, or :data:`STORE`) does not answer: an outage.

    An outage is not a failed request: the keeper waits for ``what`` instead of spending a retry.
    A function that meets one answers ``{"error": "StoreUnavailable: ..."}`` (the entry adapter's
    ``Type: message``), so the keeper can tell an activation that failed from one that could not
    reach the store or its target. OpenWhisk keeps only the ``error`` field of an error result, so
    the type name in that string is what carries the classification; ``details`` add ``what``
    where a platform keeps the whole result.
    """

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message, {"unavailable": what, "outage": type(self).__name__})
        self.what = what

    @staticmethod
    def in_result(result: dict[str, Any] | None, where: str) -> Unavailable | None:
        """The outage a function's error result reports, if any (``where``: the platform it ran on)."""
        if not isinstance(result, dict):
            return None
        error = str(result.get("error", ""))
        kind = error.split(":", 1)[0]
        if kind == "StoreUnavailable":
            return StoreUnavailable(STORE, error)
        if kind == "PlatformUnavailable":
            what = result.get("unavailable")
            return PlatformUnavailable(what if isinstance(what, str) else where, error)
        return None


class PlatformUnavailable(Unavailable, ProviderError):
    """A platform's API is unreachable or answers 5xx (connection refused, DNS, controller down)."""


class Throttled(PlatformUnavailable):
    """The platform refused an invocation at its concurrency limit (HTTP 429): up, but full.

    Nothing started, so the caller may wait for room (the round driver's backpressure).
    """


class StoreUnavailable(Unavailable, StoreError):
    """MongoDB is unreachable (connection refused, no server selected, network timeout)."""


class InvalidUpdate(FedkeeperError):
    """A client update has wrong shapes, dtypes or non-finite values."""


class InvalidEvaluation(FedkeeperError):
    """A client's evaluation has a bad example count or non-finite loss or accuracy."""
