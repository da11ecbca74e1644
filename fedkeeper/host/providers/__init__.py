"""Platforms that host fedkeeper's functions."""

from fedkeeper.host.providers.base import (
    ActivationRecord,
    ActivationStatus,
    Capabilities,
    FunctionSpec,
    Provider,
)
from fedkeeper.host.providers.registry import provider_class, providers_from_config

__all__ = [
    "ActivationRecord",
    "ActivationStatus",
    "Capabilities",
    "FunctionSpec",
    "Provider",
    "provider_class",
    "providers_from_config",
]
