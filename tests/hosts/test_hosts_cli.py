"""``fedkeeper hosts`` against real OpenSSH servers: register, list, ping, deploy, remove; pinned keys."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import paramiko
import pytest
import yaml

from fedkeeper.function.catalog import CLIENT_FUNCTION
from fedkeeper.function.config import parse_config
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.invoke import ssh
from fedkeeper.function.invoke.base import ActivationStatus
from fedkeeper.function.settings import HostsCluster
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import Store
from fedkeeper.host.hosts import keys
from fedkeeper.host.hosts.registry import Host, HostQuery, HostRegistry
from fedkeeper.host.providers.base import FunctionSpec
from fedkeeper.host.providers.hosts import HostsProvider
from fedkeeper.host.services import Services

from .conftest import Cli
from .sshd import SshdFleet, SshdHost, add_args, start_host


def _registry(cli: Cli) -> tuple[Services, HostRegistry]:
    services = Services(parse_config(yaml.safe_load(cli.config.read_text())))
    return services, HostRegistry(services.store())


@pytest.fixture(scope="module")
def three_hosts(fleet: SshdFleet, key_store: Path, hosts_cli: Cli, tmp_path_factory: pytest.TempPathFactory):
    """Three hosts registered through the CLI: two by password, one with an existing key."""
    hosts = [start_host(fleet) for _ in range(3)]
    old_key = tmp_path_factory.mktemp("old") / "id_rsa"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(old_key))
    (hosts[2].home / ".ssh").mkdir(mode=0o700)
    pub = paramiko.RSAKey.from_private_key_file(str(old_key))
    (hosts[2].home / ".ssh" / "authorized_keys").write_text(f"{ssh.public_line(pub)} old-admin-key\n")
    outputs = [
        hosts_cli(*add_args(hosts[0], "pi-0", "--label", "room=lab", "--contact", "alice"), "--password-stdin",
                  stdin=hosts[0].password + "\n"),
        hosts_cli(*add_args(hosts[1], "pi-1", "--label", "room=lab", "--contact", "bob"), "--password-stdin",
                  stdin=hosts[1].password + "\n"),
        hosts_cli(*add_args(hosts[2], "pi-2", "--label", "room=office", "--contact", "alice"), "-i", str(old_key)),
    ]  # fmt: skip
    for result in outputs:
        assert result.exit_code == 0, result.output
    return hosts


def test_add_pins_the_checked_host_key_and_installs_the_installation_key_once(
    three_hosts: list[SshdHost], hosts_cli: Cli
) -> None:
    key = keys.load()
    services, registry = _registry(hosts_cli)
    with services:
        for index, host in enumerate(three_hosts):
            record = registry.require(f"pi-{index}")
            assert record.host_key_fingerprint == host.fingerprint()  # as ssh-keygen -lf says
            assert record.arch == "x86_64"
            mine = [line for line in host.authorized_keys() if ssh.public_line(key.pkey) in line]
            assert len(mine) == 1
    assert "old-admin-key" in three_hosts[2].authorized_keys()[0]  # the existing key is kept
    assert (key.path.stat().st_mode & 0o777) == 0o600


def test_first_contact_without_a_checked_fingerprint_is_refused_and_registers_nothing(
    fleet: SshdFleet, three_hosts: list[SshdHost], hosts_cli: Cli
) -> None:
    host = three_hosts[0]
    args = ["add", host.address, "--fl-id", "unchecked", "--password-stdin"]
    result = hosts_cli(*args, stdin=host.password + "\n")
    assert result.exit_code != 0
    line = result.output.strip()
    assert (
        "\n" not in line
        and "is not confirmed" in line
        and f"--host-key-fingerprint {host.fingerprint()}" in line
    )
    wrong = hosts_cli(*args, "--host-key-fingerprint", "SHA256:" + "A" * 43, stdin=host.password + "\n")
    assert wrong.exit_code != 0 and "is not the expected SHA256:AAAA" in wrong.output
    assert host.password not in result.output + wrong.output
    assert "unchecked" not in hosts_cli("list").output


def test_list_filters_by_label_contact_address_and_fl_id_in_pages_of_at_most_100(
    three_hosts: list[SshdHost], hosts_cli: Cli
) -> None:
    def listed(*args: str) -> list[str]:
        result = hosts_cli("list", *args)
        assert result.exit_code == 0, result.output
        return [line.split()[0] for line in result.output.splitlines()[:-1]]

    assert listed() == ["pi-0", "pi-1", "pi-2"]
    assert listed("--label", "room=lab") == ["pi-0", "pi-1"]
    assert listed("--contact", "alice") == ["pi-0", "pi-2"]
    assert listed("--address", three_hosts[1].address) == ["pi-1"]
    assert listed("--fl-id", "pi-2") == ["pi-2"]
    assert listed("--limit", "2") == ["pi-0", "pi-1"]
    assert listed("--limit", "2", "--skip", "2") == ["pi-2"]
    too_many = hosts_cli("list", "--limit", "101")
    assert too_many.exit_code != 0 and "limit: 101 is outside 1..100" in too_many.output


def test_deploy_installs_the_runtime_records_dependencies_and_is_idempotent(
    three_hosts: list[SshdHost], hosts_cli: Cli
) -> None:
    first = hosts_cli("deploy")
    assert first.exit_code == 0, first.output
    assert [line.split()[1] for line in first.output.splitlines()] == ["deployed:"] * 3
    assert f"numpy {np.__version__}" in first.output
    services, registry = _registry(hosts_cli)
    with services:
        before = {h.fl_id: (h.deps, h.deployed_at) for h in registry.all()}
        second = hosts_cli("deploy", "--label", "room=lab")
        assert second.exit_code == 0, second.output
        assert [line.split()[1:3] for line in second.output.splitlines()] == [["up", "to"]] * 2
        after = {h.fl_id: (h.deps, h.deployed_at) for h in registry.all()}
    assert after == before
    deps = before["pi-0"][0]
    assert deps["runtime"] in first.output and deps["mode"] == "system"
    assert deps["packages"]["numpy"] == np.__version__
    assert (three_hosts[0].home / ".fedkeeper-client" / "app" / deps["runtime"] / ".complete").is_file()


def test_a_deployed_host_runs_a_function_through_the_invoke_client(
    three_hosts: list[SshdHost], hosts_cli: Cli
) -> None:
    assert hosts_cli("deploy", "pi-1").exit_code == 0
    config = parse_config(yaml.safe_load(hosts_cli.config.read_text()))
    with HostsProvider.from_config("lab", HostsCluster(labels={"room": "lab"}), config) as provider:
        assert [h.fl_id for h in provider.hosts] == ["pi-0", "pi-1"]
        record = provider.invoke_sync("nodeinfo", {"client": 3, "echo": "hi"}, timeout_s=60)
    assert record.status is ActivationStatus.SUCCESS, record.result
    assert record.result is not None and record.result["echo"] == "hi"
    assert record.result["activation_id"] == record.activation_id
    assert record.result["machine"] == "x86_64"


def test_ping_reports_each_host_and_a_host_whose_link_is_down(
    three_hosts: list[SshdHost], hosts_cli: Cli
) -> None:
    ok = hosts_cli("ping")
    assert ok.exit_code == 0, ok.output
    assert [line.split()[:2] for line in ok.output.splitlines()] == [
        ["pi-0", "ok"],
        ["pi-1", "ok"],
        ["pi-2", "ok"],
    ]
    three_hosts[1].link(up=False)
    try:
        started = time.monotonic()
        down = hosts_cli("ping", "pi-0", "pi-1")
        elapsed = time.monotonic() - started
    finally:
        three_hosts[1].link(up=True)
    assert down.exit_code != 0
    assert down.output.splitlines()[1].startswith("pi-1             unreachable: pi@")
    assert "1 host(s) did not answer" in down.output
    assert elapsed < 60
    services, registry = _registry(hosts_cli)
    with services:
        assert registry.require("pi-1").last_ping["ok"] is False
        assert registry.require("pi-0").last_ping["ok"] is True


def test_a_host_whose_key_changed_is_refused_with_a_clear_error(
    fleet: SshdFleet, key_store: Path, hosts_cli: Cli
) -> None:
    host = start_host(fleet)
    added = hosts_cli(*add_args(host, "reinstalled"), "--password-stdin", stdin=host.password + "\n")
    assert added.exit_code == 0, added.output
    pinned = host.fingerprint()
    host.new_host_key()
    host.restart()
    offered = host.fingerprint()
    result = hosts_cli("ping", "reinstalled")
    assert result.exit_code != 0
    assert f"host key changed: pinned {pinned}, offered {offered}; refused" in result.output
    deploy = hosts_cli("deploy", "reinstalled")
    assert deploy.exit_code != 0 and "host key changed" in deploy.output
    services, registry = _registry(hosts_cli)
    with services:
        bound = [registry.require("reinstalled").bound()]
    settings = HostsCluster(hosts=bound, private_key=keys.load().text)
    with HostsProvider("x", settings) as provider:
        record = provider.invoke_sync("nodeinfo", {}, timeout_s=30)
    assert record.status is ActivationStatus.DEVELOPER_ERROR
    assert "host key changed" in (record.error or "")
    assert hosts_cli("remove", "reinstalled").output.strip() == "removed: reinstalled"


def test_registry_pages_and_filters_hold_past_one_page(mongo_url: str, mongo_db, mongo_db_name: str) -> None:
    registry = HostRegistry(Store(mongo_url, mongo_db_name))
    registry.ensure_indexes()
    for n in range(105):
        registry.add(
            Host(f"h{n:03d}", f"198.19.0.{n}", 22, "pi", "ssh-ed25519 AAAA", "SHA256:x",
                 labels={"rack": str(n % 2)}, contact=f"c{n % 3}")
        )  # fmt: skip
    assert len(registry.find()) == 100
    assert [h.fl_id for h in registry.find(skip=100)] == [f"h{n}" for n in range(100, 105)]
    assert len(list(registry.all())) == 105
    assert registry.count(HostQuery(labels={"rack": "1"}, contact="c0")) == len(
        [n for n in range(105) if n % 2 == 1 and n % 3 == 0]
    )
    with pytest.raises(ConfigError, match="already registered as 'h001'"):
        registry.add(Host("other", "198.19.0.1", 22, "pi", "ssh-ed25519 AAAA", "SHA256:x"))


def test_deploy_stages_the_scenarios_data_file_and_a_job_trains_on_the_hosts_copy(
    three_hosts: list[SshdHost], hosts_cli: Cli, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    source = tmp_path / "mnist-small.npz"
    np.savez(
        source,
        x_train=rng.integers(0, 255, (40, 28, 28), dtype=np.uint8),
        y_train=np.arange(40) % 10,
        x_test=rng.integers(0, 255, (10, 28, 28), dtype=np.uint8),
        y_test=np.arange(10),
    )
    data = yaml.safe_load(hosts_cli.config.read_text())
    fl = data["scenarios"]["federated_learning"]
    fl["training_test_data"] = {"dataset": "mnist", "path": str(source)}
    fl["model_params"] = {"input_size": 784, "hidden_size": 4}
    config = parse_config(data)
    with HostsProvider.from_config("office", HostsCluster(labels={"room": "office"}), config) as provider:
        provider.deploy(FunctionSpec(CLIENT_FUNCTION, Path(CLIENT_FUNCTION), memory_mb=512, timeout_s=120))
        staged = provider.settings.data_files[str(source)]
        copy = three_hosts[2].home / ".fedkeeper-client" / staged
        assert copy.read_bytes() == source.read_bytes()
        source.unlink()  # the job can only train on the host's copy now
        model = config.fl.model_params
        job = {
            "session": "s", "round": 0, "client": 7, "attempt": 1,
            "weights": wire.to_b64([np.zeros((784, 4), np.float32), np.zeros(4, np.float32),
                                    np.zeros((4, 10), np.float32), np.zeros(10, np.float32)]),
            "model": model.model_dump(mode="json"),
            "data": {"dataset": {"dataset": "mnist", "path": str(source)}, "indices": list(range(0, 40, 4))},
        }  # fmt: skip
        record = provider.invoke_sync(CLIENT_FUNCTION, job, timeout_s=120)
    assert record.status is ActivationStatus.SUCCESS, record.result
    assert record.result is not None and record.result["num_examples"] == 10
    services, registry = _registry(hosts_cli)
    with services:
        assert registry.require("pi-2").deps["data"] == [staged]
