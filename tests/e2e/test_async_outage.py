"""Async mode (FedBuff) with the fabric down mid-stream: the keeper waits the outage out and the
session completes, no stored update lost, none in two versions."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedkeeper.function.store.db import Store

from .conftest import training_config
from .helpers import run_session, wait_for
from .test_outages import _fabric

VERSIONS = 5
BUFFER = 2
IN_FLIGHT = 3
OUTAGE_S = 20
ACTIVATION_TIMEOUT_S = 40  # what the outage killed is timed out after this and its client goes again


def _events(logs: Path, session: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (logs / session / "keeper.jsonl").read_text().splitlines()]


def test_async_waits_out_a_fabric_outage_mid_stream_and_loses_no_update(
    mongo_url: str, tmp_path: Path
) -> None:
    fabrics = [_fabric(tmp_path / "fabric", faults=None)]
    port = fabrics[0].port
    down_at: list[datetime] = []
    ended = threading.Event()  # the session ended early: start no fabric that nobody would stop

    def outage(store: Store) -> None:
        wait_for(lambda: bool(store.sessions()), 120, "the session to start")
        record = store.for_session(store.sessions()[0]["_id"]).record
        wait_for(lambda: int(record.get()["round"]) >= 2, 240, "two model versions")
        down_at.append(datetime.now(UTC))
        fabrics[0].stop()
        if not ended.wait(OUTAGE_S):
            fabrics.append(_fabric(tmp_path / "fabric", port, faults=None))

    try:
        data = training_config(
            fabrics[0].url, mongo_url, tmp_path / "logs", mode="async", max_in_flight=IN_FLIGHT,
            buffer_size=BUFFER, max_rounds=VERSIONS, max_retries=3, retry_backoff_s=0.2,
            activation_timeout_s=ACTIVATION_TIMEOUT_S,
        )  # fmt: skip
        data["scenarios"]["federated_learning"]["functions"]["fl_client"]["timeout"] = 30
        store, session_id = run_session(data, during=outage)
    finally:
        ended.set()
        for fabric in fabrics:
            fabric.cleanup()

    assert down_at and len(fabrics) == 2  # the outage happened, and ended, while the session ran
    session = store.for_session(session_id)
    assert session.record.get()["phase"] == "Succeeded"
    buffers = [session.updates.claimed(v) for v in range(VERSIONS)]
    assert [len(b) for b in buffers] == [BUFFER] * VERSIONS
    keys = [(int(m["round"]), int(m["client"])) for b in buffers for m in b]
    assert len(keys) == len(set(keys))  # no update in two versions
    # none lost: every update stored before the fabric went down was folded into a version, or
    # else the session's versions were all made before any later update was taken (clients train
    # on while a version is made, so it may end with such a backlog, the outage notwithstanding)
    before = list(store.db.updates.find({"session": session_id, "created_at": {"$lt": down_at[0]}}))
    assert before
    if any(doc.get("consumed_by") is None for doc in before):
        assert all(m["created_at"] < down_at[0] for b in buffers for m in b)
    assert session.weights.has(VERSIONS)
    events = _events(tmp_path / "logs", session_id)
    assert any(e["event"] == "waiting" and e["what"] == "openwhisk/local" for e in events)
    assert any(e["event"] == "outage_over" and e["what"] == "openwhisk/local" for e in events)
