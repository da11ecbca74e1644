"""The user's commands from a clean directory: deploy.py's cluster check, main.py's whole job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import yaml

from fedkeeper.function.config import GUEST_AUTH
from fedkeeper.function.store.db import Store

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


def store_processes(pid: int) -> list[psutil.Process]:
    """The embedded store's guard and server among ``pid``'s descendants."""
    return [
        p
        for p in psutil.Process(pid).children(recursive=True)
        if any("fedkeeper.host.store.guard" in a or "secantusd" in a for a in p.cmdline())
    ]


def left_behind(tmp_path: Path, *ports: int) -> list[str]:
    """Processes working for this test's directory, or listening on its ports."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            listening = {c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
            if str(tmp_path) in " ".join(proc.info["cmdline"] or []) or listening & set(ports):
                found.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or [])}")
    return found


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (a zombie has ended; only its parent has not reaped it)."""
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def start_training(cwd: Path, main: list[str]) -> subprocess.Popen[bytes]:
    """``main.py -s`` in the background, its output discarded (the tests read the store instead)."""
    return subprocess.Popen(
        [sys.executable, *main, "-s"], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_a_sigkilled_keeper_leaves_no_store_running_and_resume_starts_it_again(tmp_path: Path) -> None:
    config, fabric_port, mongo_port = local_config(tmp_path)
    main = [str(ROOT / "main.py"), "-c", str(config)]
    deployed = run(tmp_path, *main, "-d")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    keeper = start_training(tmp_path, main)
    try:
        store = Store(f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true", "fedkeeper")
        wait_for(lambda: port_open(mongo_port), 60, "the embedded store")
        wait_for(lambda: store.db.activations.count_documents({"function": "fl_client"}) > 0, 240, "a round")
        (session,) = [doc["_id"] for doc in store.db.sessions.find()]
        held = store_processes(keeper.pid)
        assert held
        keeper.kill()
        keeper.wait(30)
    finally:
        if keeper.poll() is None:
            keeper.kill()
            keeper.wait(30)
    # No keeper holds the store any more: its guard stops it and exits.
    wait_for(lambda: not running(held), 60, f"the store to exit: {running(held)}")
    assert not port_open(mongo_port)

    resumed = run(tmp_path, "-m", "fedkeeper", "resume", session, "-c", str(config), timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout and "succeeded" in resumed.stdout  # the store's data survived
    assert not port_open(mongo_port)  # the last holder out stopped it
    removed = run(tmp_path, *main, "-r")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert left_behind(tmp_path, fabric_port, mongo_port) == []


def test_remove_stops_the_embedded_store_even_while_a_keeper_holds_it(tmp_path: Path) -> None:
    config, fabric_port, mongo_port = local_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    # Nothing is deployed: the keeper keeps retrying fl_server_init while the test looks at it.
    data["scenarios"]["federated_learning"]["server_config"].update(max_retries=100, retry_backoff_s=0.5)
    config.write_text(yaml.safe_dump(data))
    main = [str(ROOT / "main.py"), "-c", str(config)]
    keeper = start_training(tmp_path, main)
    try:
        wait_for(lambda: port_open(mongo_port), 120, "the embedded store")
        held = store_processes(keeper.pid)
        keeper.send_signal(signal.SIGSTOP)  # alive, and so still holding the store
        removed = run(tmp_path, *main, "-r")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert "stopped the embedded MongoDB server" in removed.stdout
        wait_for(lambda: not running(held), 30, f"the store to exit: {running(held)}")
    finally:
        keeper.kill()
        keeper.wait(30)
    assert left_behind(tmp_path, fabric_port, mongo_port) == []
