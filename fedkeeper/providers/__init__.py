"""Platforms that host fedkeeper's functions."""

from fedkeeper.providers.base import (
    ActivationRecord,
    ActivationStatus,
    Capabilities,
    FunctionSpec,
    Provider,
)
from fedkeeper.providers.registry import provider_class, providers_from_config

__all__ = [
    "ActivationRecord",
    "ActivationStatus",
    "Capabilities",
    "FunctionSpec",
    "Provider",
    "provider_class",
    "providers_from_config",
]
