"""A keeper SIGKILLed mid-round is resumed and the session finishes with every update counted once."""

from __future__ import annotations

from pathlib import Path

from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.ledger import LedgerStatus

from .conftest import E2E_LIMITS, training_config
from .helpers import assert_every_selected_update_counted_once, kill_keeper_when

SLOW_CLIENTS = {"seed": 1, "actions": {"fl_client": {"latency_ms": 2500}}}


def test_sigkilled_keeper_resumes_mid_round_and_counts_each_update_once(
    mongo_url: str, tmp_path: Path
) -> None:
    with FabricProcess(limits=E2E_LIMITS, faults=SLOW_CLIENTS) as fabric:
        data = training_config(fabric.url, mongo_url, tmp_path / "logs")
        killed = kill_keeper_when(
            data,
            tmp_path,
            lambda store: (
                store.db.activations.count_documents(
                    {"round": 1, "function": "fl_client", "status": LedgerStatus.SUBMITTED}
                )
                > 0
            ),
            "round 1 activations in flight",
        )
        store = killed.store
        (session_doc,) = list(store.db.sessions.find())
        session = session_doc["_id"]
        assert session_doc["phase"] == "Running" and session_doc["round"] == 1
        in_flight = store.db.activations.count_documents(
            {"session": session, "status": LedgerStatus.SUBMITTED}
        )
        assert in_flight > 0

        resumed = killed.resume(session, tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resuming" in resumed.stdout

    doc = store.for_session(session).record.get()
    assert doc["phase"] == "Succeeded"
    assert_every_selected_update_counted_once(store, session, rounds=3)
    # the activations the dead keeper left behind were adopted, not abandoned
    assert store.db.activations.count_documents({"session": session, "status": LedgerStatus.SUBMITTED}) == 0
    assert (tmp_path / "logs" / session / "rounds.csv").read_text().count("\n") == 4
