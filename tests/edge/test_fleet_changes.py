"""Devices joining and leaving a running gateway: each add and remove is a new fleet generation
that the keeper's client reads; a crashed device comes back under its id, not as a change."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml
from click.testing import CliRunner

from fedkeeper.function.config import EdgeCluster
from fedkeeper.function.errors import ProviderError
from fedkeeper.function.invoke.edge import EdgeClient, EdgeFleet
from fedkeeper.host.cli import cli
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
        assert client.fleet() == EdgeFleet(0, (0, 1), {})

        device, fleet = client.add_device()
        assert (device, fleet) == (2, EdgeFleet(1, (0, 1, 2), {}))
        assert _details(gateway)[2]["alive"]
        client.pin_clients({5: 2})  # the keeper binds a joining slot to the new device
        assert _details(gateway)[2]["clients"] == [5]
        with pytest.raises(ProviderError, match=r"clients\.6: edge device 9 is not in the fleet$"):
            client.pin_clients({6: 9})

        victim = _details(gateway)[0]["pid"]
        psutil.Process(victim).send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not ((d := _details(gateway)[0])["alive"] and d["restarts"] == 1):
            assert time.monotonic() < deadline, "the killed device was not restarted"
            time.sleep(0.1)
        assert d["pid"] != victim
        assert client.fleet() == EdgeFleet(1, (0, 1, 2), {5: 2})  # the same device, restarted: no change

        leaving = _details(gateway)[1]["pid"]
        assert client.remove_device(1) == EdgeFleet(2, (0, 2), {5: 2})
        assert client.fleet() == EdgeFleet(2, (0, 2), {5: 2}) and sorted(_details(gateway)) == [0, 2]
        assert _gone(leaving)
        with pytest.raises(
            ProviderError, match=r"^edge cluster 'edge-fleet': edge device 1 is not in the fleet"
        ):
            client.remove_device(1)
        client.remove_device(0)
        with pytest.raises(ProviderError, match="edge device 2 is the fleet's last one"):
            client.remove_device(2)
        assert client.fleet() == EdgeFleet(3, (2,), {5: 2})
        client.close()


def test_the_edge_commands_add_list_and_remove_devices_and_say_what_is_wrong_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDKEEPER_EDGE_STATE_DIR", str(tmp_path / "edge"))
    kernel = kernel_for(FIRMWARES["baremetal"])
    with GatewayProcess(1, args=["--firmware", "baremetal", "--kernel", str(kernel)]) as gateway:
        settings = {"gateway_port": int(gateway.url.rsplit(":", 1)[1]), "token": gateway.token}
        config = tmp_path / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "providers": {"openwhisk": {"local": {"local": True}}, "edge": {"qemu": settings}},
                    "scenarios": {
                        "federated_learning": {
                            "server_config": {"cluster": "local", "num_clients_per_round": 1},
                            "clients_info": {"total_num_clients": 1, "edge_clients_count": 1},
                        }
                    },
                }
            )
        )

        def run(*args: str) -> Any:
            return CliRunner().invoke(cli, ["edge", *args, "-c", str(config)])

        added = run("add", "--cluster", "qemu")
        assert added.exit_code == 0, added.output
        assert added.output.splitlines() == [
            "edge cluster qemu: device 1 joined",
            "edge cluster qemu: generation 1, devices 0, 1",
        ]
        removed = run("remove", "--cluster", "qemu", "0")
        assert removed.exit_code == 0 and "generation 2, devices 1" in removed.output, removed.output
        listed = run("list", "--cluster", "qemu")
        assert listed.output == "edge cluster qemu: generation 2, devices 1\n", listed.output
        last = run("remove", "--cluster", "qemu", "1")
        assert last.exit_code != 0 and last.output.count("\n") == 1, last.output
        assert "fedkeeper: edge cluster 'qemu': edge device 1 is the fleet's last one" in last.output
        wrong = run("list", "--cluster", "nowhere")
        assert wrong.exit_code != 0 and wrong.output == (
            f"fedkeeper: --cluster nowhere: not an edge cluster of {config} (edge clusters: qemu)\n"
        )
