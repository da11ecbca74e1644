"""Each catalog platform's ``Provider`` class: ``fedkeeper.host.providers.<module>:<provider>``.

The catalog (function side) names the class; it lives here on the host side, by convention in the
module of the same name as the platform's invoke client. Classes are imported lazily so that a
keeper using only OpenWhisk needs neither boto3 nor google-cloud-functions installed.
"""

from __future__ import annotations

from typing import Any

from fedkeeper.function.catalog import platform as catalog_platform
from fedkeeper.function.config import Config
from fedkeeper.function.invoke.registry import load_class, settings_model
from fedkeeper.host.providers.base import Provider


def provider_path(platform: str) -> str:
    """``"module:Class"`` of ``platform``'s provider."""
    entry = catalog_platform(platform)
    return f"{__package__}.{entry.module}:{entry.provider}"


def provider_class(platform: str) -> type[Provider]:
    cls: type[Provider] = load_class(provider_path(platform), platform)
    return cls


def make_provider(platform: str, cluster: str, settings: Any) -> Provider:
    return provider_class(platform)(cluster, settings)


def providers_from_config(config: Config, platform: str) -> dict[str, Provider]:
    """Every cluster of one platform, by cluster name."""
    clusters = config.providers.clusters(platform)
    cls = provider_class(platform)
    return {name: cls.from_config(name, settings, config) for name, settings in clusters.items()}


def provider_from_binding(binding: dict[str, Any]) -> Provider:
    """Rebuild a provider from a deploy-time binding ``{"platform", "cluster", "settings"}``."""
    model = settings_model(binding["platform"])
    return make_provider(binding["platform"], binding["cluster"], model.model_validate(binding["settings"]))
