"""Edge devices joining and leaving a running gateway become the keeper's membership events: a new
device takes a standby edge slot, a device that left takes its slot out, a crash-restart is no
change; each goes through the same re-plan and validation window as `fedkeeper clients add|remove`."""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from fedkeeper.function.config import EdgeCluster, parse_config
from fedkeeper.function.invoke.edge import EdgeClient
from fedkeeper.function.store.db import Store
from fedkeeper.host.edge.firmware import FIRMWARES, ensure_built
from fedkeeper.host.edge.process import GatewayProcess
from fedkeeper.host.ledger import Ledger
from fedkeeper.host.plan import Plan
from fedkeeper.host.reconfiguration import Reconfigurer
from fedkeeper.host.reporting import Reporter

CLUSTER = "edge/qemu"


@pytest.fixture
def gateway() -> Iterator[GatewayProcess]:
    """A real gateway with one bare-metal guest."""
    kernel = ensure_built(FIRMWARES["baremetal"])
    with GatewayProcess(1, args=["--firmware", "baremetal", "--kernel", str(kernel)]) as process:
        yield process


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[Store]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _details(gateway: GatewayProcess) -> dict[int, dict[str, Any]]:
    """Each device's health: its QEMU pid (None while down) and the clients routed to it."""
    health = requests.get(
        gateway.url + "/v1/health", headers={"Authorization": f"Bearer {gateway.token}"}, timeout=10
    ).json()
    return {int(d["device"]): d for d in health["details"]}


class Keeper:
    """A session of 2 fabric and 2 edge slots (slot 3 on standby) and a keeper's reconfigurer over
    it, reading the gateway on ``port``."""

    def __init__(self, store: Store, port: int, token: str, logs: Path) -> None:
        settings = {"gateway_port": port, "token": token, "firmware": "baremetal"}
        config = parse_config(
            {
                "providers": {"openwhisk": {"local": {"local": True}}, "edge": {"qemu": settings}},
                "scenarios": {
                    "federated_learning": {
                        "server_config": {
                            "cluster": "local",
                            "num_clients_per_round": 4,
                            "standby_clients": 1,
                            "validation_window": 2,
                        },
                        "clients_info": {
                            "total_num_clients": 4,
                            "ow_clients_count": 2,
                            "edge_clients_count": 2,
                        },
                    }
                },
            }
        )
        plan = Plan.build(config)
        assert [(p.client, f"{p.platform}/{p.cluster}") for p in plan.placements][2:] == [
            (2, CLUSTER),
            (3, CLUSTER),
        ]
        self.session = store.for_session("s-edge-fleet")
        scenario = config.fl.model_dump(mode="json", exclude={"mongo_config", "functions"})
        self.session.record.create({"scenario": scenario, "clients": [p.as_doc() for p in plan.placements]})
        self.edge = EdgeClient("qemu", EdgeCluster(gateway_port=port, token=token))
        self.logs = logs
        reporter = Reporter(logs, self.session.id, io.StringIO())
        self.reconfigurer = Reconfigurer(
            config.fl.server_config,
            plan,
            self.session,
            Ledger(self.session),
            reporter,
            fleets={CLUSTER: self.edge},
        )

    def boundary(self, round_number: int) -> tuple[int, ...]:
        """The keeper's round boundary, then the round run and aggregated (accuracy +0.1 a round)."""
        members = self.reconfigurer.at_boundary(round_number)
        self.session.rounds.open(round_number, list(members))
        self.session.rounds.add_metrics(round_number, {"accuracy": 0.5 + 0.1 * round_number, "cost": 1.0})
        return members

    def events(self, kind: str) -> list[dict[str, Any]]:
        lines = (self.logs / self.session.id / "keeper.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_gateway_devices_joining_leaving_and_crashing_become_membership_events(
    gateway: GatewayProcess, store: Store, tmp_path: Path
) -> None:
    keeper = Keeper(store, int(gateway.url.rsplit(":", 1)[1]), gateway.token, tmp_path)
    session, edge, boundary, events = keeper.session, keeper.edge, keeper.boundary, keeper.events

    assert boundary(0) == (0, 1, 2)  # slot 3 on standby; the gateway's device 0 serves slot 2
    binding = session.membership.binding(CLUSTER)
    assert binding is not None and (binding.generation, binding.slots) == (0, {0: 2})
    assert _details(gateway)[0]["clients"] == [2]  # the gateway routes slot 2 to device 0

    assert edge.add_device()[0] == 1
    assert boundary(1) == (0, 1, 2, 3)  # device 1 took the standby slot
    [changed] = events("edge_fleet_changed")
    assert (changed["generation"], changed["joined"], changed["left"]) == (1, [[1, 3]], [])
    [reconfigured] = events("reconfigured")
    assert (reconfigured["round"], reconfigured["joined"], reconfigured["left"]) == (1, [3], [])
    assert {d: v["clients"] for d, v in _details(gateway).items()} == {0: [2], 1: [3]}

    victim = _details(gateway)[1]["pid"]
    psutil.Process(victim).send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    # a crash, then the gateway's restart under the same id
    while _details(gateway)[1]["pid"] in (victim, None):
        assert time.monotonic() < deadline, "the killed device was not restarted"
        time.sleep(0.1)
    assert boundary(2) == (0, 1, 2, 3)
    assert len(events("edge_fleet_changed")) == 1  # no change noticed

    edge.remove_device(0)
    assert boundary(3) == (0, 1, 3)  # the join's window closed (kept), then slot 2 left with its device
    assert [e["left"] for e in events("edge_fleet_changed")] == [[], [[0, 2]]]
    assert [(e["joined"], e["left"]) for e in events("reconfigured")] == [([3], []), ([], [2])]
    members = session.membership.get()
    assert (members.active, members.left) == ((0, 1, 3), (2,))
    assert [(c["type"], c["reason"]) for c in session.record.get()["conditions"]] == [
        ("Reconfigured", "ClientsJoined"),
        ("ReconfigurationKept", "NoBaseline"),  # a join at round 1 has no rounds before it
        ("Reconfigured", "ClientsLeft"),
    ]
    edge.close()


def test_a_restarted_gateway_is_no_change_and_gets_its_slots_pinned_again(
    store: Store, tmp_path: Path
) -> None:
    kernel = ensure_built(FIRMWARES["baremetal"])
    args = ["--firmware", "baremetal", "--kernel", str(kernel)]
    with GatewayProcess(1, args=args) as first:
        port = int(first.url.rsplit(":", 1)[1])
        keeper = Keeper(store, port, first.token, tmp_path)
        assert keeper.boundary(0) == (0, 1, 2)
        assert _details(first)[0]["clients"] == [2]
    with GatewayProcess(1, port=port, args=args, token=first.token) as second:
        assert _details(second)[0]["clients"] == []  # a new gateway knows no client
        assert keeper.boundary(1) == (0, 1, 2)
        assert _details(second)[0]["clients"] == [2]  # pinned again
    assert keeper.events("edge_fleet_changed") == [] and keeper.events("reconfigured") == []
    keeper.edge.close()
