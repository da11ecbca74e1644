"""Federated evaluation end to end on the local fabric: evaluate activations of the real ``fl_client``."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import pytest

from fedkeeper.host.fabric.process import FabricProcess

from .conftest import training_config
from .helpers import assert_every_selected_update_counted_once, run_session

ROUNDS = 2


def test_every_client_evaluates_each_round_and_the_federated_figures_match_the_central_ones(
    fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    strategy = {"name": "fedavg", "fraction_evaluate": 1.0, "min_evaluate_clients": 2}
    data = training_config(fabric.url, mongo_url, tmp_path / "logs", max_rounds=ROUNDS, strategy=strategy)
    store, session = run_session(data)

    assert store.for_session(session).record.get()["phase"] == "Succeeded"
    assert_every_selected_update_counted_once(store, session, rounds=ROUNDS)
    docs = store.for_session(session).rounds.all()
    for doc in docs:
        assert doc["evaluate"]["included"] == [0, 1, 2, 3] and doc["evaluate"]["failed"] == []
        evaluated = Counter(
            e["client"] for e in store.db.evaluations.find({"session": session, "round": doc["round"]})
        )
        assert evaluated == {c: 1 for c in range(4)}  # one evaluation per client, however often it ran
        metrics = doc["metrics"]
        assert (metrics["evaluated_clients"], metrics["failed_evaluations"]) == (4, 0)
        # The clients' held-out rows partition the whole test split, so the example-weighted
        # federated figures are the central evaluation's, computed apart by other functions.
        assert metrics["federated_accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-12)
        assert metrics["federated_loss"] == pytest.approx(metrics["loss"], rel=1e-9)
        assert math.isfinite(metrics["federated_loss"]) and metrics["federated_accuracy"] > 0.1

    logs = tmp_path / "logs" / session
    rounds_csv = list(csv.DictReader((logs / "rounds.csv").open()))
    assert [float(r["federated_accuracy"]) for r in rounds_csv] == [
        round(d["metrics"]["federated_accuracy"], 6) for d in docs
    ]
    activations = list(csv.DictReader((logs / "activations.csv").open()))
    evaluate_rows = [r for r in activations if r["task"] == "evaluate"]
    assert len(evaluate_rows) == 4 * ROUNDS and {r["function"] for r in evaluate_rows} == {"fl_client"}
    assert all(r["status"] == "success" and r["activation_id"] for r in evaluate_rows)
