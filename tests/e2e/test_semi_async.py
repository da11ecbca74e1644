"""semi_async on the local fabric: a client the fault plan makes late misses round 1's deadline,
and its update is folded, once, into round 2, with the staleness of that round."""

from __future__ import annotations

import csv
from pathlib import Path

from fedkeeper.function.store.rounds import folded
from fedkeeper.function.store.statuses import UpdateStatus
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.ledger import LedgerStatus

from .conftest import E2E_LIMITS, training_config
from .helpers import client_attempts, run_session

DEADLINE_S = 6
# Targeted, not drawn, so arrival order cannot move them: round 0 (cold workers) has none; round 1's client 2 waits 9.5 s
# before it runs, so round 1 closes at its deadline without it (6 s) and it arrives ~3 s into
# round 2; round 2's client 3 waits as long, so round 2 stays open to its deadline (~12.5 s).
LATE_MS = (DEADLINE_S + 3.5) * 1000
STRAGGLERS = {
    "targets": [
        {"action": "fl_client", "params": {"round": 1, "client": 2}, "latency_ms": LATE_MS},
        {"action": "fl_client", "params": {"round": 2, "client": 3}, "latency_ms": LATE_MS},
    ]
}


def test_semi_async_folds_a_round_late_update_once_into_the_next_round_with_its_staleness(
    mongo_url: str, tmp_path: Path
) -> None:
    with FabricProcess(limits=E2E_LIMITS, faults=STRAGGLERS) as fabric:
        data = training_config(
            fabric.url,
            mongo_url,
            tmp_path / "logs",
            mode="semi_async",
            max_rounds=3,
            min_fit_fraction=0.75,
            round_deadline_s=DEADLINE_S,
            staleness={"kind": "polynomial", "a": 0.5},
        )
        store, session_id = run_session(data)

    session = store.for_session(session_id)
    assert session.record.get()["phase"] == "Succeeded"
    docs = session.rounds.all()
    # (round 0's cold starts may make a client late too on a loaded machine: checked as any other)
    assert 2 in docs[1]["late"] and 3 in docs[2]["late"]
    assert 2 not in docs[1]["metrics"]["accepted"]
    # round 2, open when the update arrived, took it, once, and its record says so
    (taker,) = [doc["round"] for doc in docs if (1, 2) in folded(doc)]
    arrived = store.db.updates.find_one({"session": session_id, "round": 1, "client": 2})["created_at"]
    assert taker == 2 and docs[1]["closed_at"] < arrived < docs[2]["closed_at"]
    mark = session.updates.marks(1, [2])[0]
    assert mark["consumed_by"] == taker and mark["status"] == UpdateStatus.ACCEPTED
    staleness = [taker - number for number, _ in folded(docs[taker])]
    metrics = docs[taker]["metrics"]
    assert metrics["late_folded"] == len(staleness) and metrics["staleness_max"] == max(staleness)
    assert metrics["staleness_mean"] == sum(staleness) / len(staleness)
    takers = [(key, doc["round"]) for doc in docs for key in folded(doc)]
    assert len(takers) == len({key for key, _ in takers})  # no late update in two rounds
    for (number, client), round_number in takers:
        assert round_number > number and client in session.rounds.get(number)["late"]
    # its activation was tracked until its record came (not a failure) and never invoked again
    attempts = [a for a in client_attempts(store, session_id) if (a["round"], a["client"]) == (1, 2)]
    assert [a["status"] for a in attempts] == [LedgerStatus.SUCCESS]
    rows = list(csv.DictReader((tmp_path / "logs" / session_id / "rounds.csv").open()))
    assert rows[taker]["late_folded"] == str(len(staleness))
    assert float(rows[taker]["staleness_mean"]) == metrics["staleness_mean"]
    assert rows[0]["late_folded"] == ""
