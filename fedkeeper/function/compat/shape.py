"""Tell FedKeeper's original config shape from fedkeeper's native one.

A document is FedKeeper-shaped when it holds a key that only that shape has. Every such key is one
the native models forbid (they reject unknown keys), so no document the native shape accepts is
ever read as FedKeeper's: native files keep working exactly as before.
"""

from __future__ import annotations

from typing import Any

FL = "scenarios.federated_learning"

# Per native section: the keys only FedKeeper's shape has there.
_OLD_ONLY: dict[str, frozenset[str]] = {
    "": frozenset({"version", "name"}),
    "server_config": frozenset({"server_cluster_name", "server_manager_functions"}),
    "clients_info": frozenset({"num_clients_per_round", "client_functions"}),
    "data_sampling": frozenset(
        {"input_size", "hidden_size", "output_size", "input_shape_x", "input_shape_y", "batch_size", "model"}
    ),
    "mongo_config": frozenset({"db", "collection"}),
    "training_test_data": frozenset(
        {"train_images_url", "train_labels_url", "test_images_url", "test_labels_url"}
    ),
    "model_params": frozenset({"lr", "optim"}),
}
_OPENWHISK_OLD_ONLY = frozenset({"prometheus_config", "configurations"})
_GOOGLE_OLD_ONLY = frozenset({"base_url", "auth"})


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def fedkeeper_marker(data: dict[str, Any]) -> str | None:
    """The path of the first key only FedKeeper's original shape has, or ``None`` (a native document)."""
    for key in sorted(_OLD_ONLY[""] & data.keys()):
        return key
    providers = _mapping(data.get("providers"))
    for name, cluster in _mapping(providers.get("openwhisk")).items():
        cluster = _mapping(cluster)
        if isinstance(cluster.get("auth"), dict):
            return f"providers.openwhisk.{name}.auth.{next(iter(cluster['auth']), '')}".rstrip(".")
        for key in sorted(_OPENWHISK_OLD_ONLY & cluster.keys()):
            return f"providers.openwhisk.{name}.{key}"
    for name, cluster in _mapping(providers.get("google")).items():
        for key in sorted(_GOOGLE_OLD_ONLY & _mapping(cluster).keys()):
            return f"providers.google.{name}.{key}"
    fl = _mapping(_mapping(data.get("scenarios")).get("federated_learning"))
    for section, keys in _OLD_ONLY.items():
        if section:
            for key in sorted(keys & _mapping(fl.get(section)).keys()):
                return f"{FL}.{section}.{key}"
    for function, settings in _mapping(fl.get("functions")).items():
        for platform, value in _mapping(settings).items():
            if isinstance(
                value, dict
            ):  # native settings are numbers; FedKeeper's nest one block per platform
                return f"{FL}.functions.{function}.{platform}"
    return None
