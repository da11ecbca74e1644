"""semi_async on the local fabric: a client made late by injected latency misses round 0's
deadline, and its update is folded into round 1 once, with staleness 1."""

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
# runs, so it is still running when its round closes on quorum and delivers during the next round.
STRAGGLERS = {
    "seed": 5,
    "actions": {"fl_client": {"straggler": 0.25, "straggler_ms": (DEADLINE_S + 2) * 1000}},
}


def test_semi_async_folds_a_late_update_into_the_next_round_once_with_staleness_one(
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
    # round 1 took its update: once, with staleness 1, and its record says so
    assert folded(docs[1]) == [(0, late)]
    mark = session.updates.marks(0, [late])[0]
    assert mark["consumed_by"] == 1 and mark["status"] == UpdateStatus.ACCEPTED
    metrics = docs[1]["metrics"]
    assert metrics["late_folded"] == 1 and metrics["staleness_mean"] == 1.0 and metrics["staleness_max"] == 1
    takers = [(key, doc["round"]) for doc in docs for key in folded(doc)]
    assert len(takers) == len({key for key, _ in takers})  # no late update in two rounds
    for (number, client), taker in takers:
        assert taker > number and client in session.rounds.get(number)["late"]
    # its activation was tracked until its record came (not a failure) and never invoked again
    attempts = [a for a in client_attempts(store, session_id) if (a["round"], a["client"]) == (0, late)]
    assert [a["status"] for a in attempts] == [LedgerStatus.SUCCESS]
    rows = list(csv.DictReader((tmp_path / "logs" / session_id / "rounds.csv").open()))
    assert rows[1]["late_folded"] == "1" and float(rows[1]["staleness_mean"]) == 1.0
    assert rows[0]["late_folded"] == ""
