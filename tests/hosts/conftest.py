"""Fixtures: real sshd hosts in network namespaces, an installation key store, a registry config."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from fedkeeper.function.config import GUEST_AUTH
from fedkeeper.host.cli import cli
from fedkeeper.host.hosts.keys import KEY_DIR_ENV

from .sshd import SshdFleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdFleet]:
    hosts = SshdFleet(tmp_path_factory.mktemp("sshd"))
    try:
        yield hosts
    finally:
        hosts.close()


@pytest.fixture(scope="module")
def key_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's installation key store (``$FEDKEEPER_SSH_DIR``)."""
    folder = tmp_path_factory.mktemp("keys") / "ssh"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_DIR_ENV, str(folder))
        yield folder


def registry_config(mongo_url: str, database: str, **providers: Any) -> dict[str, Any]:
    """The smallest config whose scenario names the MongoDB that holds the registry."""
    return {
        "providers": {
            "openwhisk": {"local": {"base_url": "http://127.0.0.1:9", "auth": GUEST_AUTH}},
            **providers,
        },
        "scenarios": {
            "federated_learning": {
                "server_config": {"cluster": "local", "num_clients_per_round": 1},
                "clients_info": {"total_num_clients": 1, "ow_clients_count": 1},
                "mongo_config": {"url": mongo_url, "database": database},
            }
        },
    }


@dataclass
class Cli:
    """``fedkeeper hosts ...`` against one config file."""

    config: Path

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["hosts", *args, "-c", str(self.config)], input=stdin)


@pytest.fixture(scope="module")
def hosts_cli(tmp_path_factory: pytest.TempPathFactory, mongo_url: str) -> Cli:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(registry_config(mongo_url, f"fk_hosts_{uuid.uuid4().hex[:8]}")))
    return Cli(path)
