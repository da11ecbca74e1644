"""Local services a command may need: the embedded MongoDB-compatible server, local fabrics."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pymongo
from pymongo.errors import PyMongoError

from fedkeeper.config import Config, MongoConfig
from fedkeeper.store.db import Store
from fedkeeper.store.embedded import EmbeddedMongo

STATE_ROOT = Path(".fedkeeper")


def store_url(mongo: MongoConfig) -> str:
    """The URL functions are bound to: the embedded server's fixed address, or the configured one."""
    if mongo.url == "embedded":
        return f"mongodb://127.0.0.1:{mongo.embedded_port}/?directConnection=true"
    return mongo.url


def _answers(url: str) -> bool:
    client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=1500)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


class Services(contextlib.ExitStack):
    """Starts what a command needs and stops, on exit, what it started itself."""

    def __init__(self, config: Config, state_root: Path = STATE_ROOT) -> None:
        super().__init__()
        self.config = config
        self.state_root = state_root

    def store(self) -> Store:
        mongo = self.config.fl.mongo_config
        url = store_url(mongo)
        if mongo.url == "embedded" and not _answers(url):
            server = EmbeddedMongo(mongo.embedded_path, port=mongo.embedded_port).start()
            self.callback(server.stop)
        store = Store(url, mongo.database)
        store.ensure_indexes()
        return store

    def local_fabrics(self) -> list[str]:
        """Start a fabric daemon for every OpenWhisk cluster marked ``local`` that is not running.

        The daemons outlive this command, because functions deployed by ``-d`` must still be there
        for a later ``-s``; ``-r`` (or ``fedkeeper fabric down``) stops them.
        """
        from fedkeeper.fabric.process import ensure_local_fabric

        started = []
        for name, cluster in self.config.providers.openwhisk.items():
            if cluster.local and ensure_local_fabric(cluster, self.state_root / "fabric"):
                started.append(name)
        return started

    def stop_local_fabrics(self) -> list[str]:
        from fedkeeper.fabric.process import stop_local_fabric

        return [
            name
            for name, cluster in self.config.providers.openwhisk.items()
            if cluster.local and stop_local_fabric(cluster, self.state_root / "fabric")
        ]
