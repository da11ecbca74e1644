"""Local services a command may need: the embedded MongoDB-compatible server, local fabrics."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fedkeeper.function.catalog import PLATFORMS
from fedkeeper.function.config import Config, MongoConfig, OpenWhiskCluster
from fedkeeper.function.store.db import Store
from fedkeeper.host.store.embedded import EmbeddedMongo

STATE_ROOT = Path(".fedkeeper")


def store_url(mongo: MongoConfig) -> str:
    """The URL functions are bound to: the embedded server's fixed address, or the configured one."""
    if mongo.url == "embedded":
        return f"mongodb://127.0.0.1:{mongo.embedded_port}/?directConnection=true"
    return mongo.url


class Services(contextlib.ExitStack):
    """Starts what a command needs and stops, on exit, what it started itself."""

    def __init__(self, config: Config, state_root: Path = STATE_ROOT) -> None:
        super().__init__()
        self.config = config
        self.state_root = state_root

    def store(self) -> Store:
        mongo = self.config.fl.mongo_config
        url = store_url(mongo)
        if mongo.url == "embedded":  # held while this command runs; the last holder out stops it
            self.callback(self._embedded(mongo).start().stop)
        store = Store(url, mongo.database)
        store.ensure_indexes()
        return store

    def _embedded(self, mongo: MongoConfig) -> EmbeddedMongo:
        return EmbeddedMongo(mongo.embedded_path, port=mongo.embedded_port, state_dir=self.state_root)

    def stop_embedded_store(self) -> bool:
        """Stop the embedded MongoDB server, whoever started it (``-r``); False when none ran."""
        mongo = self.config.fl.mongo_config
        return mongo.url == "embedded" and self._embedded(mongo).daemon.stop(timeout=15.0)

    def local_fabrics(self) -> list[str]:
        """Start a fabric daemon for every OpenWhisk cluster marked ``local`` that is not running.

        The daemons outlive this command, because functions deployed by ``-d`` must still be there
        for a later ``-s``; ``-r`` (or ``fedkeeper fabric down``) stops them.
        """
        from fedkeeper.host.fabric.process import ensure_local_fabric

        started = []
        for name, cluster in self._local_clusters():
            if ensure_local_fabric(cluster, self.state_root / "fabric"):
                started.append(name)
        return started

    def _local_clusters(self) -> list[tuple[str, OpenWhiskCluster]]:
        """The OpenWhisk-compatible clusters marked ``local`` (the fabric serves them), by name."""
        return [
            (name, cluster)
            for platform in PLATFORMS
            for name, cluster in self.config.providers.clusters(platform.name).items()
            if isinstance(cluster, OpenWhiskCluster) and cluster.local
        ]

    def stop_local_fabrics(self) -> list[str]:
        from fedkeeper.host.fabric.process import stop_local_fabric

        return [
            name
            for name, cluster in self._local_clusters()
            if stop_local_fabric(cluster, self.state_root / "fabric")
        ]
