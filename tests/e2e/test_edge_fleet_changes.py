"""An edge device added to a running session's gateway joins it: the keeper notices the new device
at a round boundary, a standby edge slot joins through the validation window, and it trains there."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from fedkeeper.function.config import EdgeCluster
from fedkeeper.function.store.db import Store
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.providers.edge import EdgeProvider

from .conftest import training_config
from .helpers import run_session
from .test_cli import free_port


def test_a_device_added_to_the_gateway_mid_session_takes_a_standby_slot_that_trains_on_it(
    fabric: FabricProcess, mongo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDKEEPER_EDGE_STATE_DIR", str(tmp_path / "edge"))
    settings = {"gateway_port": free_port(), "firmware": "baremetal"}
    data = training_config(
        fabric.url, mongo_url, tmp_path / "logs", max_rounds=4, standby_clients=1, num_clients_per_round=3
    )
    data["providers"]["edge"] = {"qemu": settings}
    fl = data["scenarios"]["federated_learning"]
    fl["clients_info"] = {"total_num_clients": 3, "ow_clients_count": 1, "edge_clients_count": 2}
    added: list[int] = []
    routed: dict[int, list[int]] = {}

    def add_device_after_round_zero(store: Store) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            sessions = store.sessions()
            if sessions and int(sessions[0]["round"]) >= 1:
                edge = EdgeProvider("qemu", EdgeCluster.model_validate(settings))
                added.append(edge.add_device()[0])
                # once slot 2 has trained, see where the gateway ran it
                while not store.db.activations.find_one({"client": 2, "status": "success"}):
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
                health = requests.get(
                    edge.gateway_url() + "/v1/health",
                    headers={"Authorization": f"Bearer {edge.token}"},
                    timeout=10,
                ).json()
                routed.update({d["device"]: d["clients"] for d in health["details"]})
                edge.close()
                return
            time.sleep(0.1)

    store, session = run_session(data, during=add_device_after_round_zero)

    # deployed with a device per edge slot: device 0 serves slot 1, device 1 is spare; the new one is 2
    assert added == [2]
    events = [json.loads(line) for line in (tmp_path / "logs" / session / "keeper.jsonl").open()]
    (changed,) = [e for e in events if e["event"] == "edge_fleet_changed"]
    (reconfigured,) = [e for e in events if e["event"] == "reconfigured"]
    assert (changed["joined"], changed["left"]) == ([[2, 2]], [])
    assert reconfigured["joined"] == [2] and reconfigured["previous"] == [0, 1]
    start = reconfigured["round"]
    rounds = {d["round"]: d["selected"] for d in store.for_session(session).rounds.all()}
    assert [rounds[r] for r in range(start)] == [[0, 1]] * start
    assert [rounds[r] for r in range(start, 4)] == [[0, 1, 2]] * (4 - start)
    assert routed[0] == [1] and routed[2] == [2], routed  # each slot on the device bound to it
