"""semi_async on the local fabric: a client made late by injected latency misses round 0's
deadline, and its update is folded, once, into the first round that closes after it arrives
(round 1 unless a cold start on a loaded machine delays it past round 1's deadline), with the
staleness of that round."""

from __future__ import annotations

import csv
from pathlib import Path

from fedkeeper.function.store.rounds import folded
from fedkeeper.function.store.statuses import UpdateStatus
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.ledger import LedgerStatus

from .conftest import E2E_LIMITS, training_config
from .helpers import client_attempts, run_session

DEADLINE_S = 8
# Seed 5 makes the 3rd fl_client activation (round 0's client 2, clients being invoked in order)
# and the 6th (round 1's client 1) stragglers: each waits the deadline and 2 s more before it
# runs, so it is still running when its round closes on quorum and delivers during a later round.
STRAGGLERS = {
    "seed": 5,
    "actions": {"fl_client": {"straggler": 0.25, "straggler_ms": (DEADLINE_S + 2) * 1000}},
}


def test_semi_async_folds_a_late_update_once_into_the_first_round_closing_after_it_arrives(
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
    (late,) = docs[0]["late"]  # the straggler missed round 0
    assert late not in docs[0]["metrics"]["accepted"]
    # the first round that closed after the update arrived took it, once, and its record says so
    (taker,) = [doc["round"] for doc in docs if (0, late) in folded(doc)]
    arrived = store.db.updates.find_one({"session": session_id, "round": 0, "client": late})["created_at"]
    assert taker >= 1 and all(doc["closed_at"] < arrived for doc in docs[1:taker])
    mark = session.updates.marks(0, [late])[0]
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
    attempts = [a for a in client_attempts(store, session_id) if (a["round"], a["client"]) == (0, late)]
    assert [a["status"] for a in attempts] == [LedgerStatus.SUCCESS]
    rows = list(csv.DictReader((tmp_path / "logs" / session_id / "rounds.csv").open()))
    assert rows[taker]["late_folded"] == str(len(staleness))
    assert float(rows[taker]["staleness_mean"]) == metrics["staleness_mean"]
    assert rows[0]["late_folded"] == ""
