"""Platforms that host fedkeeper's functions: each one's deploy API over its invoke client.

The invoke clients (and the records, statuses and capabilities they report) are function side,
in :mod:`fedkeeper.function.invoke`, because the invoker function calls its targets with them.
"""

from fedkeeper.function.invoke.base import ActivationRecord, ActivationStatus, Capabilities
from fedkeeper.host.providers.base import FunctionSpec, Provider
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
