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


class Unavailable(FedkeeperError):
    """``what`` (a platform's ``platform/cluster``, or ``store``) does not answer: an outage.

    An outage is not a failed request: the keeper waits for ``what`` instead of spending a retry.
    A function that meets one says so in its error result (``details``), so the keeper can tell
    an activation that failed from one that could not reach the store or its target.
    """

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message, {"unavailable": what, "outage": type(self).__name__})
        self.what = what

    @staticmethod
    def in_result(result: dict[str, Any] | None) -> Unavailable | None:
        """The outage a function's error result reports, if any."""
        if not isinstance(result, dict) or not isinstance(result.get("unavailable"), str):
            return None
        kind = StoreUnavailable if result.get("outage") == "StoreUnavailable" else PlatformUnavailable
        return kind(result["unavailable"], str(result.get("error", "unavailable")))


class PlatformUnavailable(Unavailable, ProviderError):
    """A platform's API is unreachable or answers 5xx (connection refused, DNS, controller down)."""


class StoreUnavailable(Unavailable, StoreError):
    """MongoDB is unreachable (connection refused, no server selected, network timeout)."""


class InvalidUpdate(FedkeeperError):
    """A client update has wrong shapes, dtypes or non-finite values."""
