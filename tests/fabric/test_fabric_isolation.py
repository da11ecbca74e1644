"""Tenant isolation: an action sees nothing of other namespaces, and nothing it starts escapes.

Each test starts an attacker action (tests/fabric/snippets.py) in a fabric of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from fedkeeper.host.fabric.process import FabricProcess

from .conftest import QUICK_LIMITS, FabricClient
from .snippets import ECHO, ESCAPE, LITTER, SNOOP

CONFINED = pytest.mark.skipif(
    os.geteuid() != 0, reason="containment needs root (CI and dev machines run as root)"
)


def escaped(marker: str) -> list[psutil.Process]:
    """Processes whose command line carries ``marker``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def none_left(marker: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not [p for p in escaped(marker) if _running(p)]:
            return True
        time.sleep(0.1)
    return False


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique command-line marker; whatever still carries it is killed after the test."""
    value = f"escapee-{uuid.uuid4().hex}"
    yield value
    for process in escaped(value):
        process.kill()


@CONFINED
def test_action_cannot_read_another_namespaces_parameters_code_or_records(
    start_fabric: Callable[..., FabricClient], name: str, tmp_path: Path
) -> None:
    password, code_secret, result_secret = (f"{kind}-{uuid.uuid4().hex}" for kind in ("pw", "code", "result"))
    alice_key = f"{uuid.uuid4()}:{uuid.uuid4().hex}"  # fresh: no file anywhere holds it but the fabric's
    state = tmp_path / "state"
    guest = start_fabric(auth=[f"{alice_key}=alice"], state_dir=state, limits={"blocking_wait_s": 200})
    alice = FabricClient(guest.url, key=alice_key)
    victim = ECHO + f"\nCODE_SECRET = {code_secret!r}\n"
    alice.deploy("victim", victim, parameters={"password": password})
    record = alice.run("victim", {"note": result_secret})
    assert record["response"]["result"]["params"]["password"] == password  # warm, with the secret inside
    assert guest.activation(record["activationId"]).status_code == 404

    guest.deploy(name, SNOOP, limits={"timeout": 120_000, "memory": 512})
    secrets = [password, code_secret, result_secret, alice_key]
    roots = [str(state), "/tmp", "/dev/shm"]
    response = guest.invoke(name, {"reversed": [s[::-1] for s in secrets], "roots": roots, "budget_s": 60})
    snoop = guest.wait_record(response.json()["activationId"], timeout=150)
    assert snoop["response"]["success"], snoop["response"]
    result = snoop["response"]["result"]
    assert result["found"] == {}
    assert str(state) not in result["unfinished"]  # the fabric's own state was searched to the end
    assert result["pids"] <= 1  # only its namespace's init: no other process is visible


@CONFINED
def test_what_one_tenant_leaves_in_tmp_is_out_of_another_tenants_sight(
    start_fabric: Callable[..., FabricClient],
) -> None:
    alice_key = f"{uuid.uuid4()}:{uuid.uuid4().hex}"
    guest = start_fabric(auth=[f"{alice_key}=alice"])
    alice = FabricClient(guest.url, key=alice_key)
    for client in (alice, guest):
        client.deploy("litter", LITTER)
    left = alice.run("litter", {"file": "alice-was-here"})["response"]["result"]
    assert "alice-was-here" in left["tmp"] and "alice-was-here" in left["shm"]  # the writes worked
    seen = guest.run("litter", {"file": "guest-was-here"})["response"]["result"]
    assert "alice-was-here" not in seen["tmp"] + seen["shm"]
    assert not Path("/tmp/alice-was-here").exists() and not Path("/dev/shm/alice-was-here").exists()


@CONFINED
@pytest.mark.parametrize("background_mb", [400])
def test_double_forked_grandchild_counts_for_memory_and_dies(
    start_fabric: Callable[..., FabricClient], name: str, marker: str, background_mb: int
) -> None:
    fabric = start_fabric()
    fabric.deploy(name, ESCAPE, limits={"memory": 128, "timeout": 60_000})
    record = fabric.run(name, {"marker": marker, "mb": background_mb, "hold": 20})
    assert record["response"]["result"] == {"error": "The action exhausted its memory and was aborted."}
    assert none_left(marker)


@CONFINED
def test_double_forked_grandchild_dies_at_the_activation_timeout(
    start_fabric: Callable[..., FabricClient], name: str, marker: str
) -> None:
    fabric = start_fabric()
    fabric.deploy(name, ESCAPE, limits={"timeout": 2_000})
    record = fabric.run(name, {"marker": marker, "hold": 30})
    assert record["response"]["result"] == {
        "error": "The action exceeded its time limits of 2000 milliseconds."
    }
    assert none_left(marker)


@CONFINED
def test_double_forked_grandchild_dies_when_the_fabric_stops(marker: str) -> None:
    process = FabricProcess(limits=QUICK_LIMITS).start()
    try:
        fabric = FabricClient(process.url, process.admin_key)
        fabric.deploy("escape", ESCAPE)
        assert fabric.run("escape", {"marker": marker})["response"]["result"] == {"escaped": True}
        assert escaped(marker)  # it runs past its activation, as it may on OpenWhisk
    finally:
        process.cleanup()
    assert none_left(marker)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_fabric_up_ends_its_fabric_and_workers_on_signal(tmp_path: Path, marker: str, signum: int) -> None:
    command = [
        sys.executable,
        "-m",
        "fedkeeper",
        "fabric",
        "up",
        "--port",
        "0",
        "--state-dir",
        str(tmp_path / "s"),
    ]
    with open(tmp_path / "log", "w") as log:
        up = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True
        )
    try:
        assert up.stdout is not None
        line = up.stdout.readline()
        assert line.startswith("fabric listening on "), (tmp_path / "log").read_text()
        fabric = FabricClient(line.split()[-1])
        fabric.deploy("w", ECHO)
        fabric.deploy("escape", ESCAPE)
        fabric.run("w")
        fabric.run("escape", {"marker": marker})
        started = psutil.Process(up.pid).children(recursive=True) + escaped(marker)
        assert len(started) >= 3
        up.send_signal(signum)
        up.wait(timeout=60)
        assert none_left(marker)
        assert not [p for p in started if _running(p)]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if up.stdout is not None:
            up.stdout.close()


HOME_WRITER = """
import os, pathlib

def main(params):
    cache = pathlib.Path.home() / ".cache" / "fedkeeper" / "data.bin"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"kept")
    return {"uid": os.getuid(), "read": cache.read_bytes().decode()}
"""


def test_a_worker_may_write_its_own_home_under_a_daemons_umask() -> None:
    """A daemon runs with umask 077; its workers (another user) must still reach their own folder."""
    previous = os.umask(0o077)
    try:
        with FabricProcess() as process:
            os.umask(previous)  # the fabric started with it
            client = FabricClient(process.url)
            client.deploy("home", HOME_WRITER)
            result = client.run("home")["response"]["result"]
    finally:
        os.umask(previous)
    assert result["read"] == "kept", result
    assert result["uid"] != 0  # it ran as the namespace's own user
