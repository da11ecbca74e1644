"""The fabric as a process: persistence across restarts, the detached daemon, no orphan workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from fedkeeper.function.config import GUEST_AUTH, OpenWhiskCluster
from fedkeeper.host.fabric.process import FabricProcess, ensure_local_fabric, fabric_pid, stop_local_fabric

from .conftest import FabricClient
from .snippets import ECHO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def descendants(pid: int) -> list[int]:
    """Every process ``pid`` started (workers, their sandboxes and whatever actions forked)."""
    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def all_gone(pids: list[int], within: float = 5.0) -> bool:
    return all(gone(pid, within) for pid in pids)


def test_actions_persist_across_restarts(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with FabricProcess(state_dir=state) as first:
        client = FabricClient(first.url)
        client.deploy("kept", ECHO, parameters={"p": 1})
        client.deploy("kept", ECHO, parameters={"p": 2})
        client.deploy("dropped", ECHO)
        assert client.session.delete(client.ns("actions/dropped"), timeout=5).status_code == 200
    with FabricProcess(state_dir=state) as second:
        client = FabricClient(second.url)
        action = client.session.get(client.ns("actions/kept"), timeout=5).json()
        assert action["version"] == "0.0.2"
        assert action["exec"]["code"] == ECHO
        assert action["parameters"] == [{"key": "p", "value": 2}]
        assert client.session.get(client.ns("actions/dropped"), timeout=5).status_code == 404
        assert client.run("kept")["response"]["result"]["params"] == {"p": 2}
        assert client.deploy("kept", ECHO)["version"] == "0.0.3"


def test_stop_leaves_no_worker_behind() -> None:
    process = FabricProcess().start()
    try:
        client = FabricClient(process.url)
        client.deploy("w", ECHO)
        client.run("w")
        assert process.process is not None
        workers = descendants(process.process.pid)
        assert workers
    finally:
        process.cleanup()
    assert all_gone(workers)


def test_workers_die_with_a_killed_fabric() -> None:
    process = FabricProcess().start()
    try:
        client = FabricClient(process.url)
        client.deploy("w", ECHO)
        client.run("w")
        assert process.process is not None
        workers = descendants(process.process.pid)
        assert workers
        os.kill(process.process.pid, signal.SIGKILL)
        assert all_gone(workers)
    finally:
        process.cleanup()


def test_a_killed_fabrics_worker_folders_are_reclaimed_by_the_next_fabric(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A temp root of its own: a fabric started meanwhile by another test (-n 2) would reclaim the
    # folder in the shared /tmp before this test looks. Open to the workers' users, like /tmp.
    root = Path(tempfile.mkdtemp(prefix="reclaim-"))
    root.chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(root))  # the fabrics' temp root (they inherit it)
    try:
        killed = FabricProcess().start()
        try:
            client = FabricClient(killed.url)
            client.deploy("w", ECHO)
            client.run("w")
            assert killed.process is not None
            workdir = root / f"fedkeeper-fabric-{killed.process.pid}"
            assert any(workdir.iterdir())  # the worker's folder
            os.kill(killed.process.pid, signal.SIGKILL)
            assert gone(killed.process.pid)
        finally:
            killed.cleanup()
        assert workdir.exists()  # nobody was left to clean it up
        with FabricProcess():
            assert not workdir.exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_ensure_local_fabric_starts_a_detached_daemon_once(tmp_path: Path) -> None:
    cluster = OpenWhiskCluster(base_url=f"http://127.0.0.1:{free_port()}", local=True)
    try:
        assert ensure_local_fabric(cluster, tmp_path) is True
        assert ensure_local_fabric(cluster, tmp_path) is False  # already answering
        pid = fabric_pid(cluster, tmp_path)
        assert pid is not None
        assert os.getsid(pid) != os.getsid(0)  # its own session: it survives the caller
        client = FabricClient(cluster.base_url)
        client.deploy("daemon", ECHO)
        client.run("daemon")
        workers = descendants(pid)
        assert (tmp_path / cluster.base_url.rsplit(":", 1)[1] / "actions").is_dir()
    finally:
        stopped = stop_local_fabric(cluster, tmp_path)
    assert stopped is True
    assert workers and gone(pid) and all_gone(workers)
    assert stop_local_fabric(cluster, tmp_path) is False  # safe twice


def test_ensure_local_fabric_leaves_remote_clusters_alone(tmp_path: Path) -> None:
    cluster = OpenWhiskCluster(base_url=f"http://127.0.0.1:{free_port()}", local=False)
    assert ensure_local_fabric(cluster, tmp_path) is False
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-workers", "0"], "fabric limit max_workers must be positive (got 0)"),
        (["--default-memory-mb", "4096"], "default_memory_mb must lie within"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedkeeper.host.fabric", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_bad_fault_plan_file_names_file_and_field(tmp_path: Path) -> None:
    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps({"default": {"lost_record": -1}}))
    result = subprocess.run(
        [sys.executable, "-m", "fedkeeper.host.fabric", "--port", "0", "--faults", str(plan)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{plan}.default.lost_record must be a probability in [0, 1] (got -1)" in result.stderr


def run_fabric(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedkeeper.host.fabric", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_auth_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "auth"
    keys.write_text("someone:s3cret-key=ns\n")
    keys.chmod(0o640)
    result = run_fabric("--auth-file", str(keys))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"fabric: {keys}: the auth file must not be group or world readable (mode 0640)"
    )


def test_bad_auth_file_line_names_file_and_line_not_the_key(tmp_path: Path) -> None:
    keys = tmp_path / "auth"
    keys.write_text("# tenants\nsomeone:s3cret-key=ns\nnocolon-s3cret\n")
    keys.chmod(0o600)
    result = run_fabric("--auth-file", str(keys))
    assert result.returncode == 2
    assert result.stderr.strip() == f"fabric: {keys}:3: auth key must be 'uuid:key' or 'uuid:key=namespace'"
    assert "s3cret" not in result.stderr


def test_daemon_keeps_its_key_off_command_lines_and_refuses_the_guest_key(tmp_path: Path) -> None:
    key = "5a1e0c3b-tenant:a-cluster-own-secret-key"
    cluster = OpenWhiskCluster(
        base_url=f"http://127.0.0.1:{free_port()}", local=True, auth=key, namespace="team"
    )
    try:
        assert ensure_local_fabric(cluster, tmp_path) is True
        pid = fabric_pid(cluster, tmp_path)
        assert pid is not None
        own = FabricClient(cluster.base_url, key=key)
        own.deploy("w", ECHO)
        assert own.run("w")["response"]["result"]["namespace"] == "team"
        guest = FabricClient(cluster.base_url)
        assert guest.session.get(guest.ns("actions"), timeout=5).status_code == 401
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        assert len(processes) > 1  # the fabric and its worker's processes
        for process in processes:
            assert key.split(":")[1] not in " ".join(process.cmdline())
        assert not list(tmp_path.glob("*.auth"))  # read at start, then removed
        state = tmp_path / cluster.base_url.rsplit(":", 1)[1]
        assert state.stat().st_mode & 0o777 == 0o700
        assert (state / "admin.key").stat().st_mode & 0o777 == 0o600
    finally:
        stop_local_fabric(cluster, tmp_path)


def test_guest_key_stays_accepted_for_a_guest_cluster(tmp_path: Path) -> None:
    cluster = OpenWhiskCluster(base_url=f"http://127.0.0.1:{free_port()}", local=True, auth=GUEST_AUTH)
    try:
        assert ensure_local_fabric(cluster, tmp_path) is True
        guest = FabricClient(cluster.base_url)
        assert guest.session.get(guest.ns("actions"), timeout=5).status_code == 200
    finally:
        stop_local_fabric(cluster, tmp_path)
