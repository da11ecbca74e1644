"""Topology hierarchical end to end: two clusters on the local fabric, a local aggregator on each, the flat weights."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from fedkeeper.function.catalog import AGGREGATOR_FUNCTION
from fedkeeper.function.config import GUEST_AUTH
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.ledger import Ledger, LedgerStatus, local_aggregator

from .conftest import training_config
from .helpers import assert_every_selected_update_counted_once, run_session

ROUNDS = 2


def _two_clusters(fabric: FabricProcess, mongo_url: str, tmp_path: Path, **server: Any) -> dict[str, Any]:
    data = training_config(fabric.url, mongo_url, tmp_path / "logs", max_rounds=ROUNDS, **server)
    # a second cluster on the same fabric: clients 1 and 3 run there (round robin over sorted names)
    data["providers"]["openwhisk"]["near"] = {"base_url": fabric.url, "auth": GUEST_AUTH}
    return data


def test_a_hierarchical_session_over_two_clusters_runs_a_local_aggregator_on_each_and_trains_as_flat(
    fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    store, session = run_session(_two_clusters(fabric, mongo_url, tmp_path, topology="hierarchical"))

    bound = store.for_session(session)
    assert bound.record.get()["phase"] == "Succeeded"
    assert_every_selected_update_counted_once(store, session, rounds=ROUNDS)
    entries = [e for e in Ledger(bound).entries() if e.function == AGGREGATOR_FUNCTION]
    for round_number in range(ROUNDS):
        doc = bound.rounds.get(round_number)
        assert [(g["clients"], g["where"]) for g in doc["groups"]] == [
            ([0, 2], "openwhisk/local"),
            ([1, 3], "openwhisk/near"),
        ]
        ran = {
            (e.client, e.cluster)
            for e in entries
            if e.round == round_number and e.status == LedgerStatus.SUCCESS
        }
        assert ran == {(-1, "local"), (local_aggregator(0), "local"), (local_aggregator(1), "near")}
        assert set(doc["metrics"]["partial_bytes_by_group"]) == {"0", "1"}
    assert store.db.partial_aggregates.count_documents({"session": session}) == 0
    rows = list(csv.DictReader((tmp_path / "logs" / session / "rounds.csv").open()))
    assert len(rows) == ROUNDS and all(int(row["bytes_local_to_global"]) > 0 for row in rows)
    # the same seeds without the hierarchy: the same weights every round (FedAvg is hierarchy-exact)
    flat_store, flat = run_session(_two_clusters(fabric, mongo_url, tmp_path / "flat"))
    for round_number in range(1, ROUNDS + 1):
        got, want = bound.weights.get(round_number), flat_store.for_session(flat).weights.get(round_number)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
