"""Rebuild a platform's invoke client from its catalog entry (:mod:`fedkeeper.function.catalog`).

Classes are imported lazily so that an invoker whose targets are all OpenWhisk needs neither
boto3 nor google-cloud-functions installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedkeeper.function.catalog import platform as catalog_platform
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.invoke.base import InvokeClient


def load_class(path: str, platform: str) -> Any:
    """Import ``path`` (a ``"module:Class"``) for ``platform``, with a ConfigError naming what is missing."""
    module_name, class_name = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"platform {platform!r} needs an extra that is not installed: {exc}") from None
    return getattr(module, class_name)


def client_class(platform: str) -> type[InvokeClient]:
    cls: type[InvokeClient] = load_class(catalog_platform(platform).client_path, platform)
    return cls


def settings_model(platform: str) -> type[Any]:
    """The pydantic model of one cluster's settings under ``providers.<platform>``."""
    return catalog_platform(platform).settings


def client_from_binding(binding: dict[str, Any]) -> InvokeClient:
    """Rebuild an invoke client from a deploy-time binding ``{"platform", "cluster", "settings"}``."""
    model = settings_model(binding["platform"])
    return client_class(binding["platform"])(binding["cluster"], model.model_validate(binding["settings"]))
