"""Async mode: a keeper SIGKILLed mid-stream is resumed and every update is counted exactly once."""

from __future__ import annotations

from pathlib import Path

from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.ledger import LedgerStatus

from .conftest import E2E_LIMITS, training_config
from .helpers import kill_keeper_when
from .test_resume import SLOW_CLIENTS

VERSIONS = 4
BUFFER = 2


def test_sigkilled_async_keeper_resumes_mid_stream_and_counts_each_update_once(
    mongo_url: str, tmp_path: Path
) -> None:
    with FabricProcess(limits=E2E_LIMITS, faults=SLOW_CLIENTS) as fabric:
        data = training_config(
            fabric.url, mongo_url, tmp_path / "logs",
            mode="async", max_in_flight=3, buffer_size=BUFFER, max_rounds=VERSIONS,
        )  # fmt: skip
        killed = kill_keeper_when(
            data,
            tmp_path,
            lambda store: (
                store.db.sessions.count_documents({"round": {"$gte": 1}}) > 0
                and store.db.activations.count_documents(
                    {"function": "fl_client", "status": LedgerStatus.SUBMITTED}
                )
                > 0
            ),
            "a version made and activations in flight",
        )
        store = killed.store
        (session_doc,) = list(store.db.sessions.find())
        session_id = session_doc["_id"]
        assert session_doc["phase"] == "Running" and 1 <= session_doc["round"] < VERSIONS
        in_flight = {
            d["round"]
            for d in store.db.activations.find(
                {"session": session_id, "function": "fl_client", "status": LedgerStatus.SUBMITTED}
            )
        }
        assert in_flight

        resumed = killed.resume(session_id, tmp_path)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resuming" in resumed.stdout

    session = store.for_session(session_id)
    assert session.record.get()["phase"] == "Succeeded"
    buffers = [session.updates.claimed(v) for v in range(VERSIONS)]
    assert [len(b) for b in buffers] == [BUFFER] * VERSIONS
    keys = [(int(m["round"]), int(m["client"])) for b in buffers for m in b]
    assert len(keys) == len(set(keys))
    # the activations the dead keeper left running were adopted: settled, none left open by it
    for dispatch in in_flight:
        entry = store.db.activations.find_one(
            {"session": session_id, "round": dispatch, "function": "fl_client"}
        )
        assert entry["status"] != LedgerStatus.SUBMITTED, entry
    dispatches = [
        d["round"] for d in store.db.activations.find({"session": session_id, "function": "fl_client"})
    ]
    assert len(dispatches) == len(set(dispatches))  # the resumed keeper took fresh dispatch numbers
    assert (tmp_path / "logs" / session_id / "rounds.csv").read_text().count("\n") == VERSIONS + 1
