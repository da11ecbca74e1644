"""A keeper SIGKILLed mid-round is resumed and the session finishes with every update counted once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from fedkeeper.function.store.db import Store
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.ledger import LedgerStatus

from .conftest import E2E_LIMITS, training_config
from .helpers import assert_every_selected_update_counted_once, wait_for

ROOT = Path(__file__).resolve().parents[2]
SLOW_CLIENTS = {"seed": 1, "actions": {"fl_client": {"latency_ms": 2500}}}


def test_sigkilled_keeper_resumes_mid_round_and_counts_each_update_once(
    mongo_url: str, tmp_path: Path
) -> None:
    with FabricProcess(limits=E2E_LIMITS, faults=SLOW_CLIENTS) as fabric:
        data = training_config(fabric.url, mongo_url, tmp_path / "logs")
        config_file = tmp_path / "config.yaml"
        config_file.write_text(yaml.safe_dump(data))
        mongo = data["scenarios"]["federated_learning"]["mongo_config"]
        store = Store(mongo["url"], mongo["database"])
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "-c", str(config_file), "-d"],
            check=True, cwd=tmp_path, env=env, capture_output=True, timeout=120,
        )  # fmt: skip
        keeper = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "-c", str(config_file), "-s"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            wait_for(
                lambda: (
                    store.db.activations.count_documents(
                        {"round": 1, "function": "fl_client", "status": LedgerStatus.SUBMITTED}
                    )
                    > 0
                ),
                timeout_s=240,
                what="round 1 activations in flight",
            )
            keeper.send_signal(signal.SIGKILL)
            keeper.wait(timeout=30)
        finally:
            if keeper.poll() is None:
                keeper.kill()
        (session_doc,) = list(store.db.sessions.find())
        session = session_doc["_id"]
        assert session_doc["phase"] == "Running" and session_doc["round"] == 1
        in_flight = store.db.activations.count_documents(
            {"session": session, "status": LedgerStatus.SUBMITTED}
        )
        assert in_flight > 0

        resumed = subprocess.run(
            [sys.executable, "-m", "fedkeeper", "resume", session, "-c", str(config_file)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resuming" in resumed.stdout

    doc = store.for_session(session).record.get()
    assert doc["phase"] == "Succeeded"
    assert_every_selected_update_counted_once(store, session, rounds=3)
    # the activations the dead keeper left behind were adopted, not abandoned
    assert store.db.activations.count_documents({"session": session, "status": LedgerStatus.SUBMITTED}) == 0
    assert (tmp_path / "logs" / session / "rounds.csv").read_text().count("\n") == 4
