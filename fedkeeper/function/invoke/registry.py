"""Map a platform name (the key under ``providers:``) to its invoke client.

Classes are imported lazily so that an invoker whose targets are all OpenWhisk needs neither
boto3 nor google-cloud-functions installed.
"""

from __future__ import annotations

import importlib
from typing import Any, get_args

from fedkeeper.function.config import Providers
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.invoke.base import InvokeClient

# platform -> "module:Class"
_CLASSES: dict[str, str] = {
    "openwhisk": "fedkeeper.function.invoke.openwhisk:OpenWhiskClient",
    "google": "fedkeeper.function.invoke.gcf:GcfClient",
    "aws": "fedkeeper.function.invoke.aws_lambda:LambdaClient",
    "edge": "fedkeeper.function.invoke.edge:EdgeClient",
}


def load_class(platform: str, classes: dict[str, str]) -> Any:
    """Import ``classes[platform]`` (a ``"module:Class"``), with a ConfigError naming what is missing."""
    try:
        module_name, class_name = classes[platform].split(":")
    except KeyError:
        raise ConfigError(f"unknown platform {platform!r} (known: {', '.join(classes)})") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"platform {platform!r} needs an extra that is not installed: {exc}") from None
    return getattr(module, class_name)


def client_class(platform: str) -> type[InvokeClient]:
    cls: type[InvokeClient] = load_class(platform, _CLASSES)
    return cls


def settings_model(platform: str) -> type[Any]:
    """The pydantic model of one cluster's settings under ``providers.<platform>``."""
    field = Providers.model_fields.get(platform)
    if field is None:
        raise ConfigError(f"unknown platform {platform!r}")
    _, model = get_args(field.annotation)
    return model


def client_from_binding(binding: dict[str, Any]) -> InvokeClient:
    """Rebuild an invoke client from a deploy-time binding ``{"platform", "cluster", "settings"}``."""
    model = settings_model(binding["platform"])
    return client_class(binding["platform"])(binding["cluster"], model.model_validate(binding["settings"]))
