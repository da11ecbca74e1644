"""The user's commands from a clean directory: deploy.py's cluster check, main.py's whole job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from fedkeeper.config import GUEST_AUTH

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def local_config(tmp_path: Path) -> tuple[Path, int, int]:
    """The sample config, moved to free ports so it cannot collide with anything running."""
    data = yaml.safe_load((ROOT / "config-sample.yaml").read_text())
    fabric_port, mongo_port = free_port(), free_port()
    data["providers"]["openwhisk"]["local"]["base_url"] = f"http://127.0.0.1:{fabric_port}"
    fl = data["scenarios"]["federated_learning"]
    fl["mongo_config"].update(embedded_port=mongo_port, embedded_path=str(tmp_path / "mongo"))
    fl["server_config"].update(max_rounds=2, target_accuracy=0.99)
    fl["clients_info"].update(total_num_clients=4, ow_clients_count=4)
    fl["server_config"]["num_clients_per_round"] = 2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, fabric_port, mongo_port


def run(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def test_deploy_py_checks_the_auto_started_local_fabric_then_removes_it(tmp_path: Path) -> None:
    config, fabric_port, _ = local_config(tmp_path)
    deployed = run(
        tmp_path, str(ROOT / "deploy.py"), "-c", str(config), "-a", "-s", "test", "-f", "nodeinfo", "-d"
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    (line,) = [ln for ln in deployed.stdout.splitlines() if ln.startswith("openwhisk/local")]
    assert ("reachable" in line and "cold start" in line and "2 cpu" not in line) or os.cpu_count() == 2
    assert port_open(fabric_port)  # the daemon outlives deploy.py
    removed = run(tmp_path, str(ROOT / "deploy.py"), "-c", str(config), "-a", "-f", "nodeinfo", "-r")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "removed nodeinfo" in removed.stdout
    assert not port_open(fabric_port)
    again = run(tmp_path, str(ROOT / "deploy.py"), "-c", str(config), "-a", "-f", "nodeinfo", "-r")
    assert again.returncode == 0 and "not deployed nodeinfo" in again.stdout


def test_main_deploys_trains_on_embedded_defaults_and_removes_everything(tmp_path: Path) -> None:
    config, fabric_port, mongo_port = local_config(tmp_path)
    job = run(tmp_path, str(ROOT / "main.py"), "-c", str(config), "-d", "-s", "-r", timeout=600)
    assert job.returncode == 0, job.stdout + job.stderr
    out = job.stdout
    assert "deployed fl_client x4 to openwhisk/local" in out
    assert "round 2/2: accuracy" in out and "succeeded" in out
    assert "removed: fl_client on openwhisk/local" in out
    session = next(ln.split()[1].rstrip(":") for ln in out.splitlines() if ln.startswith("session "))
    logs = tmp_path / "logs" / session
    assert {p.name for p in logs.iterdir()} >= {
        "rounds.csv",
        "activations.csv",
        "keeper.jsonl",
        "accuracy.png",
    }
    params = json.loads((tmp_path / "params" / "fl_invoker_weights_update.json").read_text())
    assert params["deployments"][0]["bound"]["store"]["url"] == "***"  # no secret written to disk
    assert GUEST_AUTH.split(":")[1] not in (tmp_path / "params" / "fl_client.json").read_text()
    key = GUEST_AUTH.split(":")[1]
    written = [
        p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".json", ".jsonl", ".csv", ".log"}
    ]
    assert written and not [
        p for p in written if key in p.read_text(errors="replace")
    ]  # no secret in any log
    assert not port_open(fabric_port) and not port_open(mongo_port)  # both stopped at the end
    second = run(tmp_path, str(ROOT / "main.py"), "-c", str(config), "-r")
    assert second.returncode == 0 and "not deployed: fl_client" in second.stdout
