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


class InvalidUpdate(FedkeeperError):
    """A client update has wrong shapes, dtypes or non-finite values."""
