"""A whole session with federated evaluation on the fake clock over the scripted provider.

After each round's aggregation the strategy's ``configure_evaluate`` picks among the clients that
can evaluate, the driver runs their evaluate activations, and ``aggregate_evaluate``'s federated
loss and accuracy land in the round's metrics, ``rounds.csv`` and the API's round documents.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.function.config import parse_config
from fedkeeper.function.store.db import Store
from fedkeeper.function.store.statuses import Task
from fedkeeper.function.strategies import ClientPool, make_strategy
from fedkeeper.host.keeper import Keeper
from fedkeeper.host.ledger import Ledger, LedgerStatus
from fedkeeper.host.plan import Plan
from fedkeeper.host.serve.documents import StatusReader
from tests.keeper.fakes import Attempt, FakeClock, ScriptedProvider, evaluation_of

CLIENTS = 4
ROUNDS = 2
STRATEGY = {"name": "fedavg", "fraction_evaluate": 0.5, "min_evaluate_clients": 2}


def _config(tmp_path: Path, strategy: Any) -> Any:
    return parse_config(
        {
            "logs_dir": str(tmp_path / "logs"),
            "providers": {"openwhisk": {"local": {"local": True}}},
            "scenarios": {
                "federated_learning": {
                    "server_config": {
                        "cluster": "local",
                        "max_rounds": ROUNDS,
                        "num_clients_per_round": CLIENTS,
                        "max_retries": 1,
                        "retry_backoff_s": 0.5,
                        "strategy": strategy,
                    },
                    "clients_info": {"total_num_clients": CLIENTS, "ow_clients_count": CLIENTS},
                }
            },
        }
    )


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Any:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _chosen(round_number: int) -> list[int]:
    """Who the strategy picks to evaluate ``round_number`` (seed 0, every client can evaluate)."""
    strategy = make_strategy("fedavg", {k: v for k, v in STRATEGY.items() if k != "name"})
    return [
        ins.client for ins in strategy.configure_evaluate(round_number, ClientPool(tuple(range(CLIENTS)), 1))
    ]


def test_chosen_clients_evaluate_each_round_and_the_weighted_results_and_failures_are_recorded(
    store: Store, tmp_path: Path
) -> None:
    config = _config(tmp_path, STRATEGY)
    clock, plan = FakeClock(), Plan.build(config)
    failing = _chosen(1)[0]  # it fails every evaluation: a failure passed to aggregate_evaluate
    provider = ScriptedProvider(clock, store)
    keeper = Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep)
    # Evaluate calls only in round 1 for this client (round 0's evaluations all succeed).
    original = provider.invoke_async

    def invoke(name: str, params: Any) -> str:
        if params.get("task") == Task.EVALUATE and params["round"] == 1 and params["client"] == failing:
            provider.evaluate_script = {failing: [Attempt(ok=False)]}
        return original(name, params)

    provider.invoke_async = invoke  # type: ignore[method-assign]
    session_id = keeper.start()
    session = store.for_session(session_id)
    rounds = session.rounds.all()
    assert [sorted(r["evaluate"]["selected"]) for r in rounds] == [_chosen(0), _chosen(1)]
    assert sorted({c for c, _ in provider.evaluated}) == sorted(set(_chosen(0)) | set(_chosen(1)))

    for r in rounds:
        included = [c for c in r["evaluate"]["selected"] if not (r["round"] == 1 and c == failing)]
        rows = [evaluation_of(c) for c in included]
        examples = sum(n for n, _, _ in rows)
        metrics = r["metrics"]
        assert metrics["federated_loss"] == pytest.approx(sum(n * loss for n, loss, _ in rows) / examples)
        assert metrics["federated_accuracy"] == pytest.approx(sum(n * a for n, _, a in rows) / examples)
        assert metrics["evaluated_clients"] == len(included)
        assert metrics["failed_evaluations"] == (1 if r["round"] == 1 else 0)
    assert rounds[1]["evaluate"]["failed"] == [failing]
    attempts = [e for e in Ledger(session).entries() if e.task is Task.EVALUATE and e.client == failing]
    assert [e.status for e in attempts if e.round == 1] == [LedgerStatus.APPLICATION_ERROR] * 2

    written = list(csv.DictReader((tmp_path / "logs" / session_id / "rounds.csv").open()))
    assert [float(row["federated_accuracy"]) for row in written] == [
        round(r["metrics"]["federated_accuracy"], 6) for r in rounds
    ]
    assert [row["failed_evaluations"] for row in written] == ["0", "1"]
    documents = StatusReader(store).rounds(session_id)
    assert [d["federatedLoss"] for d in documents] == [r["metrics"]["federated_loss"] for r in rounds]
    assert [d["evaluatedClients"] for d in documents] == [len(_chosen(0)), len(_chosen(1)) - 1]


def test_without_fraction_evaluate_no_client_is_asked_to_evaluate(store: Store, tmp_path: Path) -> None:
    config = _config(tmp_path, "fedavg")
    clock, plan = FakeClock(), Plan.build(config)
    provider = ScriptedProvider(clock, store)
    session_id = Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep).start()
    rounds = store.for_session(session_id).rounds.all()
    assert provider.evaluated == [] and all("evaluate" not in r for r in rounds)
    assert all("federated_loss" not in r["metrics"] for r in rounds)
    written = list(csv.DictReader((tmp_path / "logs" / session_id / "rounds.csv").open()))
    assert {row["federated_accuracy"] for row in written} == {""}


def test_a_resumed_keeper_evaluates_a_round_aggregated_before_it_died(store: Store, tmp_path: Path) -> None:
    config = _config(tmp_path, STRATEGY)
    clock, plan = FakeClock(), Plan.build(config)
    provider = ScriptedProvider(clock, store)
    keeper = Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep)

    class Died(Exception):
        pass

    original = provider.invoke_async

    def die_at_the_first_evaluation(name: str, params: Any) -> str:
        if params.get("task") == Task.EVALUATE:
            raise Died
        return original(name, params)

    provider.invoke_async = die_at_the_first_evaluation  # type: ignore[method-assign]
    with pytest.raises(Died):
        keeper.start()
    (doc,) = store.sessions()
    session = store.for_session(str(doc["_id"]))
    assert (
        session.rounds.get(0)["metrics"]["accuracy"] == 0.5
        and "federated_loss" not in session.rounds.get(0)["metrics"]
    )

    provider.invoke_async = original  # type: ignore[method-assign]
    resumed = Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep)
    resumed.resume(session.id)
    first = session.rounds.get(0)
    assert first["evaluate"]["included"] == _chosen(0) and first["metrics"]["evaluated_clients"] == len(
        _chosen(0)
    )
    assert session.rounds.get(1)["metrics"]["evaluated_clients"] == len(_chosen(1))
    lost = [
        e
        for e in Ledger(session).entries()
        if e.task is Task.EVALUATE and e.status is LedgerStatus.UNAVAILABLE
    ]
    # The batch the keeper died invoking (every entry of it written before the first invoke): each
    # booked as never invoked, at no cost.
    assert sorted(e.client for e in lost) == sorted(_chosen(0))
    assert all(e.round == 0 and e.activation_id is None for e in lost)
