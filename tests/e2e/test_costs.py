"""A session on the local fabric is priced from its activations and stops once its budget is spent."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedkeeper.host.fabric.process import FabricProcess

from .conftest import training_config
from .helpers import run_session


def test_a_session_stops_with_budget_exhausted_and_its_cost_is_its_gb_seconds(
    fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    # The fabric is free by default; priced at 1 per GB-second, any round spends the budget.
    config = training_config(
        fabric.url, mongo_url, tmp_path / "logs", max_rounds=5, max_cost=0.001,
        prices={"openwhisk": {"gb_second": 1.0}},
    )  # fmt: skip
    memory = {name: f["memory"] for name, f in config["scenarios"]["federated_learning"]["functions"].items()}
    store, session = run_session(config)

    doc = store.for_session(session).record.get()
    assert doc["phase"] == "Succeeded"
    assert doc["conditions"][-1]["reason"] == "BudgetExhausted", doc["conditions"]
    logs = tmp_path / "logs" / session
    (row,) = csv.DictReader((logs / "rounds.csv").open())  # one round spent it
    activations = list(csv.DictReader((logs / "activations.csv").open()))
    gb_seconds = sum(
        int(a["duration_ms"]) / 1000 * memory[a["function"]] / 1024 for a in activations if a["duration_ms"]
    )
    assert float(row["cost"]) == pytest.approx(gb_seconds, rel=1e-6) and gb_seconds > 0.001
    assert float(row["cumulative_cost"]) == pytest.approx(doc["cost"]["total"]) == pytest.approx(gb_seconds)
    weights = store.for_session(session).rounds.get(0)["metrics"]["weights_bytes"]
    assert int(row["bytes_client_to_store"]) == int(row["update_bytes"]) > 0
    clients_ran = sum(1 for a in activations if a["function"] == "fl_client")
    assert int(row["bytes_store_to_client"]) == clients_ran * weights > 0
    assert int(row["bytes_store_to_aggregator"]) == weights + int(row["update_bytes"])
