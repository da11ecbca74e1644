"""Devices joining and leaving a running gateway: each add and remove is a new fleet generation
that the keeper's client reads; a crashed device comes back under its id, not as a change."""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil
import pytest
import requests

from fedkeeper.function.config import EdgeCluster
from fedkeeper.function.errors import ProviderError
from fedkeeper.function.invoke.edge import EdgeClient, EdgeFleet
from fedkeeper.host.edge.firmware import FIRMWARES
from fedkeeper.host.edge.process import GatewayProcess

from .conftest import kernel_for


def _details(gateway: GatewayProcess) -> dict[int, dict[str, Any]]:
    health = requests.get(
        gateway.url + "/v1/health", headers={"Authorization": f"Bearer {gateway.token}"}, timeout=10
    ).json()
    return {int(d["device"]): d for d in health["details"]}


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_adding_and_removing_devices_bumps_the_generation_and_a_crash_restart_does_not() -> None:
    kernel = kernel_for(FIRMWARES["baremetal"])
    with GatewayProcess(2, args=["--firmware", "baremetal", "--kernel", str(kernel)]) as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        client = EdgeClient("edge-fleet", EdgeCluster(gateway_port=port, token=gateway.token))
        assert client.fleet() == EdgeFleet(0, (0, 1))

        device, fleet = client.add_device()
        assert (device, fleet) == (2, EdgeFleet(1, (0, 1, 2)))
        assert _details(gateway)[2]["alive"]

        victim = _details(gateway)[0]["pid"]
        psutil.Process(victim).send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not ((d := _details(gateway)[0])["alive"] and d["restarts"] == 1):
            assert time.monotonic() < deadline, "the killed device was not restarted"
            time.sleep(0.1)
        assert d["pid"] != victim
        assert client.fleet() == EdgeFleet(1, (0, 1, 2))  # the same device, restarted: no change

        leaving = _details(gateway)[1]["pid"]
        assert client.remove_device(1) == EdgeFleet(2, (0, 2))
        assert client.fleet() == EdgeFleet(2, (0, 2)) and sorted(_details(gateway)) == [0, 2]
        assert _gone(leaving)
        with pytest.raises(
            ProviderError, match=r"^edge cluster 'edge-fleet': edge device 1 is not in the fleet"
        ):
            client.remove_device(1)
        client.remove_device(0)
        with pytest.raises(ProviderError, match="edge device 2 is the fleet's last one"):
            client.remove_device(2)
        assert client.fleet() == EdgeFleet(3, (2,))
        client.close()
