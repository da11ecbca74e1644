"""Map a config section (``providers.<platform>``) to its ``Provider`` class.

Classes are imported lazily so that a keeper using only OpenWhisk needs neither boto3 nor
google-cloud-functions installed.
"""

from __future__ import annotations

from typing import Any

from fedkeeper.function.config import Config
from fedkeeper.function.invoke.registry import load_class, settings_model
from fedkeeper.host.providers.base import Provider

# platform (the key under ``providers:``) -> "module:Class"
_CLASSES: dict[str, str] = {
    "openwhisk": "fedkeeper.host.providers.openwhisk:OpenWhiskProvider",
    "google": "fedkeeper.host.providers.gcf:GcfProvider",
    "aws": "fedkeeper.host.providers.aws_lambda:LambdaProvider",
    "edge": "fedkeeper.host.providers.edge:EdgeProvider",
}


def provider_class(platform: str) -> type[Provider]:
    cls: type[Provider] = load_class(platform, _CLASSES)
    return cls


def make_provider(platform: str, cluster: str, settings: Any) -> Provider:
    return provider_class(platform)(cluster, settings)


def providers_from_config(config: Config, platform: str) -> dict[str, Provider]:
    """Every cluster of one platform, by cluster name."""
    clusters: dict[str, Any] = getattr(config.providers, platform)
    return {name: make_provider(platform, name, settings) for name, settings in clusters.items()}


def provider_from_binding(binding: dict[str, Any]) -> Provider:
    """Rebuild a provider from a deploy-time binding ``{"platform", "cluster", "settings"}``."""
    model = settings_model(binding["platform"])
    return make_provider(binding["platform"], binding["cluster"], model.model_validate(binding["settings"]))
