"""SSH hosts beside fabric clients in one session: 3 sshd hosts (network namespaces) and 2 OpenWhisk clients.

The hosts are registered and trained through the same commands and code a user runs: ``fedkeeper
hosts add`` pins each host key, the session's deploy installs the client runtime on every host,
and the keeper reaches host clients through ``fl_invoker_weights_update`` over SSH. In the
second round one host's link goes down while its client trains; the activation fails, the
keeper revives it once the link is back, and the round closes with every update counted once.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
import yaml
from click.testing import CliRunner
from hosts.sshd import SshdFleet, SshdHost, add_args, start_host

from fedkeeper.function.catalog import INVOKER_FUNCTION
from fedkeeper.function.store.db import Store
from fedkeeper.host.cli import cli
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.hosts.keys import KEY_DIR_ENV
from fedkeeper.host.hosts.registry import HostRegistry

from .conftest import E2E_LIMITS, training_config
from .helpers import assert_every_selected_update_counted_once, client_attempts, run_session

RUNNER = "fedkeeper.function.tasks.stdio"


def _training_on(host: SshdHost) -> bool:
    """Whether the host's client runtime is running a job (a process in the host's namespace)."""
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        if RUNNER in " ".join(proc.info["cmdline"] or []) and proc.info["cwd"] == str(host.home):
            return True
    return False


def _drop_link_mid_job(
    store: Store, host: SshdHost, client: int, round_number: int, events: list[str]
) -> None:
    """Once ``client``'s job of ``round_number`` runs on ``host``, take the link down until the
    keeper has seen that activation fail; then bring it back up."""
    ours = {"round": round_number, "function": INVOKER_FUNCTION, "client": client}
    deadline = time.monotonic() + 900  # round 1 starts after init and round 0, minutes on a busy machine
    while time.monotonic() < deadline:
        if store.db.activations.find_one(ours) and _training_on(host):
            host.link(up=False)
            events.append("down")
            break
        time.sleep(0.05)
    else:
        return
    failed = {**ours, "status": {"$nin": ["submitted", "success"]}}
    try:
        while time.monotonic() < deadline and not store.db.activations.find_one(failed):
            time.sleep(0.1)
    finally:
        host.link(up=True)
        events.append("up")


def test_three_hosts_and_two_fabric_clients_train_and_a_host_losing_its_link_is_revived(
    mongo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_DIR_ENV, str(tmp_path / "keys"))
    fleet = SshdFleet(tmp_path / "sshd")
    try:
        hosts = [start_host(fleet) for _ in range(3)]
        with FabricProcess(limits=E2E_LIMITS) as fabric:
            data = training_config(
                fabric.url, mongo_url, tmp_path / "logs", num_clients_per_round=5, max_rounds=2
            )
            data["providers"]["hosts"] = {
                "pis": {"labels": {"fleet": "e2e"}, "dead_link_s": 6, "connect_timeout_s": 5}
            }
            fl = data["scenarios"]["federated_learning"]
            fl["clients_info"] = {"total_num_clients": 5, "ow_clients_count": 2, "hosts_clients_count": 3}
            config = tmp_path / "config.yaml"
            config.write_text(yaml.safe_dump(data))
            for index, host in enumerate(hosts):
                added = CliRunner().invoke(
                    cli,
                    ["hosts", *add_args(host, f"pi-{index}", "--label", "fleet=e2e"), "--password-stdin", "-c", str(config)],
                    input=host.password + "\n",
                )  # fmt: skip
                assert added.exit_code == 0, added.output
            # Clients 0-1 are the fabric's; 2, 3, 4 run on pi-2, pi-0, pi-1 (client n on host n mod 3).
            events: list[str] = []
            store, session = run_session(
                data, during=lambda store: _drop_link_mid_job(store, hosts[1], 4, 1, events)
            )
    finally:
        fleet.close()

    assert_every_selected_update_counted_once(store, session, rounds=2)
    assert events == ["down", "up"], "the link never went down mid-job"
    attempts = client_attempts(store, session)
    on_hosts = [a for a in attempts if a["client"] >= 2]
    assert {a["client"] for a in on_hosts} == {2, 3, 4}
    dropped = [a for a in on_hosts if a["client"] == 4 and a["round"] == 1]
    assert dropped[0]["status"] != "success" and dropped[-1]["status"] == "success", dropped
    lost = store.db.activations.find_one(
        {"session": session, "round": 1, "client": 4, "attempt": dropped[0]["attempt"]}
    )
    assert "host pi-1: " in lost["error"] and "lost the connection" in lost["error"], lost["error"]
    entries = store.db.activations.find({"session": session, "client": {"$gte": 2}})
    assert {e["function"] for e in entries} == {INVOKER_FUNCTION}
    deployed = {h.fl_id: h.deps for h in HostRegistry(store).all()}
    assert sorted(deployed) == ["pi-0", "pi-1", "pi-2"]
    assert all(deps.get("runtime") for deps in deployed.values())
