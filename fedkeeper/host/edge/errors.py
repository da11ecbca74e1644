"""Errors of the edge fleet, split by what the caller should do about them."""

from __future__ import annotations

from fedkeeper.function.errors import ProviderError


class EdgeError(ProviderError):
    """Something about the edge fleet failed (firmware, launch, configuration)."""


class GuestUnavailable(EdgeError):
    """The guest died or did not answer in time; the fleet restarts it, so a retry can succeed."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class GuestRefused(EdgeError):
    """The guest answered a request with an ERROR frame (the same request would fail again)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
