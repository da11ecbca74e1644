"""Training end to end on the local fabric: the four functions, MongoDB, the keeper."""

from __future__ import annotations

import csv
from pathlib import Path

from fedkeeper.host.fabric.process import FabricProcess

from .conftest import training_config
from .helpers import assert_every_selected_update_counted_once, client_attempts, run_session


def test_four_clients_three_rounds_accuracy_rises_and_each_update_counts_once(
    fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    store, session = run_session(training_config(fabric.url, mongo_url, tmp_path / "logs"))

    doc = store.for_session(session).record.get()
    assert doc["phase"] == "Succeeded"
    assert doc["conditions"][-1]["reason"] == "MaxRoundsReached"
    accuracies = assert_every_selected_update_counted_once(store, session, rounds=3)
    assert accuracies[-1] > accuracies[0], accuracies
    assert accuracies[-1] > 0.8, accuracies
    # Retention (keep_updates: 2 by default): round 0's weights are gone, its records stay.
    kept = store.db.updates.find({"session": session, "blob": {"$ne": None}}, {"round": 1})
    assert {d["round"] for d in kept} == {1, 2}
    weights = store.for_session(session).weights
    assert not weights.has(0) and weights.has(1)

    attempts = client_attempts(store, session)
    assert len(attempts) == 12 and all(a["status"] == "success" for a in attempts)
    assert len({a["id"] for a in attempts}) == 12  # a distinct OpenWhisk activation id each

    logs = tmp_path / "logs" / session
    rounds_csv = list(csv.DictReader((logs / "rounds.csv").open()))
    assert [float(r["accuracy"]) for r in rounds_csv] == [round(a, 6) for a in accuracies]
    activations_csv = list(csv.DictReader((logs / "activations.csv").open()))
    client_rows = [r for r in activations_csv if r["function"] == "fl_client"]
    assert {r["activation_id"] for r in client_rows} == {a["id"] for a in attempts}
    assert all(r["start"] and r["end"] and int(r["duration_ms"]) >= 0 for r in client_rows)
    assert (logs / "accuracy.png").stat().st_size > 1000
    assert (logs / "keeper.jsonl").read_text().count('"event": "round_aggregated"') == 3
