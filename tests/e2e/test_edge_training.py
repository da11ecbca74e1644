"""Edge and fabric clients in one session: 4 QEMU guests beside 4 TensorFlow clients."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from fedkeeper.function.store.db import Store
from fedkeeper.host.fabric.process import FabricProcess

from .conftest import E2E_LIMITS, training_config
from .helpers import assert_every_selected_update_counted_once, client_attempts, run_session
from .test_cli import free_port


def _kill_guests_when_round_opens(
    store: Store, round_number: int, state_dir: Path, killed: list[int], images: set[str]
) -> None:
    """Once the round's edge activations are out, SIGKILL every guest of this session's gateway
    (``state_dir``) it brings up until one of those activations has failed (a single kill can land
    between jobs and go unnoticed); ``images`` gets the kernels they ran."""
    deadline = time.monotonic() + 300
    failed = {
        "round": round_number,
        "function": "fl_invoker_weights_update",
        "status": {"$nin": ["submitted", "success"]},
    }
    while time.monotonic() < deadline:
        if store.db.activations.find_one({"round": round_number, "function": "fl_invoker_weights_update"}):
            storm_end = time.monotonic() + 60
            while time.monotonic() < storm_end and not store.db.activations.find_one(failed):
                for proc in psutil.process_iter(["name", "cmdline"]):
                    cmdline = proc.info["cmdline"] or []
                    ours = "-kernel" in cmdline and str(state_dir) in " ".join(cmdline)
                    if proc.info["name"] == "qemu-system-i386" and ours and proc.pid not in killed:
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
                        images.add(Path(cmdline[cmdline.index("-kernel") + 1]).name)
                time.sleep(0.02)
            return
        time.sleep(0.05)


def test_four_edge_and_four_fabric_clients_train_together_and_survive_a_killed_guest(
    mongo_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDKEEPER_EDGE_STATE_DIR", str(tmp_path / "edge"))
    with FabricProcess(limits=E2E_LIMITS) as fabric:
        data = training_config(fabric.url, mongo_url, tmp_path / "logs", num_clients_per_round=8)
        data["providers"]["edge"] = {"qemu": {"gateway_port": free_port()}}
        fl = data["scenarios"]["federated_learning"]
        fl["clients_info"] = {"total_num_clients": 8, "ow_clients_count": 4, "edge_clients_count": 4}
        killed: list[int] = []
        images: set[str] = set()
        store, session = run_session(
            data,
            during=lambda store: _kill_guests_when_round_opens(store, 1, tmp_path / "edge", killed, images),
        )

    accuracies = assert_every_selected_update_counted_once(store, session, rounds=3)
    assert accuracies[-1] > accuracies[0], accuracies
    attempts = client_attempts(store, session)
    edge = [a for a in attempts if a["client"] >= 4]
    assert {a["client"] for a in edge} == {4, 5, 6, 7}
    assert all(
        e["function"] == "fl_invoker_weights_update"
        for e in store.db.activations.find({"client": {"$gte": 4}})
    )
    assert killed, "no guest was killed"
    assert images == {"zephyr.elf"}  # the default firmware: Zephyr RTOS guests
    assert any(a["status"] != "success" for a in edge), "the killed guest's activation did not fail"
    assert not [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if p.info["name"] == "qemu-system-i386"
        and str(tmp_path / "edge") in " ".join(p.info["cmdline"] or [])
    ]
