"""The installation key reaches the invoker as a deploy-time binding, and nothing else shows it."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from fedkeeper.function.catalog import CLIENT_FUNCTION, INVOKER_FUNCTION
from fedkeeper.function.config import parse_config
from fedkeeper.function.errors import PayloadTooLarge
from fedkeeper.function.invoke.base import ActivationStatus
from fedkeeper.function.invoke.hosts import HostsClient
from fedkeeper.function.invoke.registry import client_from_binding
from fedkeeper.function.redaction import redact
from fedkeeper.function.settings import BoundHost, HostsCluster
from fedkeeper.function.store.db import Store
from fedkeeper.host import deployment
from fedkeeper.host.hosts import keys
from fedkeeper.host.hosts.registry import Host, HostRegistry
from fedkeeper.host.run import opened

from .conftest import registry_config


def _config(mongo_url: str, database: str) -> dict:
    data = registry_config(mongo_url, database, hosts={"lab": {"labels": {"room": "lab"}}})
    fl = data["scenarios"]["federated_learning"]
    fl["clients_info"] = {"total_num_clients": 3, "ow_clients_count": 1, "hosts_clients_count": 2}
    return data


def test_the_key_and_the_registered_hosts_are_bound_to_the_invoker_and_masked_everywhere_else(
    mongo_url: str, mongo_db, mongo_db_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setenv(keys.KEY_DIR_ENV, str(tmp_path / "keys"))
    key = keys.load(create=True)
    registry = HostRegistry(Store(mongo_url, mongo_db_name))
    for fl_id, room in (("b", "lab"), ("a", "lab"), ("c", "office")):
        registry.add(
            Host(
                fl_id,
                f"198.19.1.{ord(fl_id)}",
                22,
                "pi",
                "ssh-ed25519 AAAAC3Nz",
                "SHA256:x",
                labels={"room": room},
            )
        )
    config = parse_config(_config(mongo_url, mongo_db_name))
    caplog.set_level(logging.DEBUG)
    with opened(config) as run:
        written = deployment.write_params(run.plan, tmp_path / "params")
        settings = run.providers[("hosts", "lab")].settings
        logging.getLogger("fedkeeper.test").info("providers: %r, settings %s", run.providers, settings)
    invoker = next(d.spec for d in run.plan.deployments if d.spec.name == INVOKER_FUNCTION)
    binding = invoker.bound["targets"]["hosts/lab"]
    assert binding["settings"]["private_key"] == key.text  # what the invoker logs in with
    assert [h["fl_id"] for h in binding["settings"]["hosts"]] == ["a", "b"]  # the cluster's labels, in order
    with client_from_binding(binding) as rebuilt:  # as the invoker rebuilds it
        assert [h.fl_id for h in rebuilt.hosts] == ["a", "b"]
        assert rebuilt.host_for(3).fl_id == "b"
    body = [line for line in key.text.splitlines() if "-----" not in line]
    shown = "\n".join(p.read_text() for p in written) + caplog.text + redact(key.text)
    assert body and not any(line in shown for line in body)


def test_an_unreachable_host_is_a_failed_activation_and_an_oversized_job_is_refused_unsent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(keys.KEY_DIR_ENV, str(tmp_path / "keys"))
    key = keys.load(create=True)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = BoundHost(fl_id="gone", address="127.0.0.1", port=port, user="pi", host_key=key.public_line)
    with HostsClient("lab", HostsCluster(hosts=[host], private_key=key.text)) as client:
        record = client.invoke_sync(CLIENT_FUNCTION, {"client": 0}, timeout_s=10)
        assert record.status is ActivationStatus.DEVELOPER_ERROR
        assert record.error == f"host gone: pi@127.0.0.1:{port}: cannot connect (Connection refused)"
        limit = client.capabilities.max_request_bytes
        with pytest.raises(PayloadTooLarge, match=f"past the {limit} byte limit"):
            client.invoke_sync(CLIENT_FUNCTION, {"client": 0, "weights": "x" * limit}, timeout_s=10)
