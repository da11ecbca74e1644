"""What rounds cost: the arithmetic over real ledger records, and the budget stop on the fake clock."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.function.catalog import AGGREGATOR_FUNCTION, CLIENT_FUNCTION, INVOKER_FUNCTION
from fedkeeper.function.config import parse_config
from fedkeeper.function.invoke.base import ActivationRecord, ActivationStatus
from fedkeeper.function.prices import GB, Prices
from fedkeeper.function.store.db import Store
from fedkeeper.function.strategies import ClientRate
from fedkeeper.host.costs import (
    AGGREGATOR_TO_STORE,
    CLIENT_TO_STORE,
    LOCAL_TO_GLOBAL,
    STORE_TO_AGGREGATOR,
    STORE_TO_CLIENT,
    client_rates,
    round_cost,
)
from fedkeeper.host.keeper import Keeper
from fedkeeper.host.ledger import Ledger, LedgerStatus, local_aggregator
from fedkeeper.host.plan import Plan
from tests.keeper.fakes import scripted_keeper
from tests.keeper.test_plan import _config as three_platforms

PRICES = {
    "openwhisk": Prices(gb_second=0.5, invocation=0.01, gb_transferred=2.0),
    "google": Prices(gb_second=3.0, invocation=0.1, gb_transferred=4.0),
}
MEMORY = {CLIENT_FUNCTION: 2048, INVOKER_FUNCTION: 512, AGGREGATOR_FUNCTION: 1024}


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Any:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _ran(ledger: Ledger, function: str, client: int, platform: str, ms: int, **kw: Any) -> None:
    entry = ledger.new_entry(0, function, client, 1, platform, "c")
    entry.target = kw.pop("target", None)
    ledger.submit(entry)
    ledger.set_activation_id(entry, f"{function}-{client}")
    status = kw.pop("status", ActivationStatus.SUCCESS)
    result = kw.pop("result", None)
    ledger.settle(
        entry,
        LedgerStatus(status.value),
        ActivationRecord(f"{function}-{client}", status, result, 1000, 1000 + ms),
    )


def test_a_hierarchical_rounds_bytes_count_each_local_aggregators_group_and_partial(store: Store) -> None:
    """Group 0's local aggregator ran on GCF; group 1's failed for good, so the global aggregator
    read its clients' updates itself; each partial crosses the local-to-global link once."""
    session = store.for_session("s-tree")
    session.record.create({})
    ledger = Ledger(session)
    for client in (0, 1, 2):
        _ran(ledger, CLIENT_FUNCTION, client, "openwhisk", 0)
    _ran(ledger, AGGREGATOR_FUNCTION, local_aggregator(0), "google", 0)
    _ran(ledger, AGGREGATOR_FUNCTION, local_aggregator(0), "google", 0)  # ran again: counted once
    _ran(
        ledger,
        AGGREGATOR_FUNCTION,
        local_aggregator(1),
        "openwhisk",
        0,
        status=ActivationStatus.APPLICATION_ERROR,
    )
    _ran(ledger, AGGREGATOR_FUNCTION, -1, "openwhisk", 0)
    weights, up, part = GB // 4, GB // 8, GB // 2
    metrics = {
        "weights_bytes": weights,
        "update_bytes_by_client": {"0": up, "1": up, "2": up},
        "groups": {"0": [0, 1], "1": [2]},
        "partial_bytes_by_group": {"0": part},
    }
    cost = round_cost(ledger.round_entries(0), metrics, PRICES.__getitem__, MEMORY.__getitem__)
    assert dict(cost.bytes) == {
        CLIENT_TO_STORE: 3 * up,
        STORE_TO_CLIENT: 3 * weights,
        STORE_TO_AGGREGATOR: (weights + 2 * up) + (weights + up),  # group 0's local; the global for group 1
        AGGREGATOR_TO_STORE: weights,
        LOCAL_TO_GLOBAL: part,
    }
    ow, g = PRICES["openwhisk"], PRICES["google"]
    transfer = (3 * 0.125 + 3 * 0.25 + 0.25 + 0.125 + 0.25) * ow.gb_transferred + (
        0.25 + 0.25 + 0.5
    ) * g.gb_transferred
    assert cost.transfer == pytest.approx(transfer)


def test_a_rounds_cost_is_gb_seconds_invocations_and_bytes_at_each_platforms_prices(store: Store) -> None:
    session = store.for_session("s-cost")
    session.record.create({})
    ledger = Ledger(session)
    _ran(ledger, CLIENT_FUNCTION, 0, "openwhisk", 2000)  # direct: 2 s x 2 GB
    _ran(
        ledger, CLIENT_FUNCTION, 1, "openwhisk", 500, status=ActivationStatus.APPLICATION_ERROR
    )  # billed all the same
    # through the invoker to a GCF client: the invoker at the server's prices, the client at GCF's
    _ran(
        ledger, INVOKER_FUNCTION, 2, "openwhisk", 4000, target="google/g", result={"target_activation": "g-1"}
    )
    _ran(ledger, AGGREGATOR_FUNCTION, -1, "openwhisk", 1000)
    refused = ledger.new_entry(0, CLIENT_FUNCTION, 3, 1, "openwhisk", "c")
    ledger.submit(refused)
    ledger.settle(refused, LedgerStatus.NOT_STARTED, error="refused")  # never ran: free

    weights, up0, up2 = GB // 4, GB // 8, GB // 2
    metrics = {"weights_bytes": weights, "update_bytes_by_client": {"0": up0, "2": up2}}
    cost = round_cost(ledger.round_entries(0), metrics, PRICES.__getitem__, MEMORY.__getitem__)

    ow, g = PRICES["openwhisk"], PRICES["google"]
    compute = (
        (2.0 * 2 * ow.gb_second + ow.invocation)
        + (0.5 * 2 * ow.gb_second + ow.invocation)
        + (4.0 * 0.5 * ow.gb_second + ow.invocation)
        + (4.0 * 2 * g.gb_second + g.invocation)
        + (1.0 * 1 * ow.gb_second + ow.invocation)
    )
    assert cost.compute == pytest.approx(compute)
    assert dict(cost.bytes) == {
        CLIENT_TO_STORE: up0 + up2,
        STORE_TO_CLIENT: 3 * weights,
        STORE_TO_AGGREGATOR: weights + up0 + up2,
        AGGREGATOR_TO_STORE: weights,
        LOCAL_TO_GLOBAL: 0,
    }
    transfer = (
        (2 * 0.25 + 0.125 + 0.25 + 0.125 + 0.5 + 0.25) * ow.gb_transferred  # clients 0, 1; aggregator
        + (0.25 + 0.5) * g.gb_transferred  # client 2 on GCF: weights down, update up
    )
    assert cost.transfer == pytest.approx(transfer)
    assert cost.total == pytest.approx(compute + transfer)


def _keeper(store: Store, tmp_path: Path, clients: int = 2, slow_from: int = 2, **server: Any) -> Keeper:
    """Clients below ``slow_from`` run 2 s, the others 20 s; ``fl_client`` has 1 GB."""
    durations = [2.0 if c < slow_from else 20.0 for c in range(clients)]
    server = {"max_rounds": 10, "num_clients_per_round": 2, **server}
    return scripted_keeper(
        store, tmp_path / "logs", durations, server, {"fl_client": {"timeout": 50, "memory": 1024}}
    )


def test_a_session_stops_with_budget_exhausted_once_its_cost_reaches_max_cost(
    store: Store, tmp_path: Path
) -> None:
    # Each round: two 2 s client runs of 1 GB at 1 per GB-second, plus 0.5 per invocation of
    # those and of the aggregator (whose scripted run takes no time): 5.5. Round 0 also pays init.
    keeper = _keeper(store, tmp_path, max_cost=12, prices={"openwhisk": {"gb_second": 1, "invocation": 0.5}})
    session_id = keeper.start()
    doc = store.for_session(session_id).record.get()
    assert doc["phase"] == "Succeeded"
    assert doc["conditions"][-1]["reason"] == "BudgetExhausted"
    assert "reached max_cost 12" in doc["conditions"][-1]["message"]
    rows = list(csv.DictReader((tmp_path / "logs" / session_id / "rounds.csv").open()))
    costs = [float(r["cost"]) for r in rows]
    assert costs == pytest.approx([6.0, 5.5, 5.5])  # stopped at the first round past 12, not before
    assert [float(r["cumulative_cost"]) for r in rows] == pytest.approx([6.0, 11.5, 17.0])
    assert doc["cost"] == {"total": pytest.approx(17.0), "round": pytest.approx(5.5), "currency": "USD"}


def test_without_prices_a_local_session_costs_nothing_and_runs_to_max_rounds(
    store: Store, tmp_path: Path
) -> None:
    session_id = _keeper(store, tmp_path, max_rounds=2, max_cost=0.000001).start()  # openwhisk is free
    doc = store.for_session(session_id).record.get()
    assert doc["conditions"][-1]["reason"] == "MaxRoundsReached"
    assert doc["cost"]["total"] == 0.0


def test_min_cost_to_target_spends_less_than_random_and_every_partition_still_trains(
    store: Store, tmp_path: Path
) -> None:
    # 6 clients, 2 a round, each at least once in 6 rounds (one rotation slot); two are fast, so cheap.
    common: dict[str, Any] = {
        "max_rounds": 12,
        "rotation_rounds": 6,
        "prices": {"openwhisk": {"gb_second": 1}},
    }
    sessions = {
        objective: store.for_session(
            _keeper(store, tmp_path, clients=6, objective=objective, **common).start()
        )
        for objective in ("none", "min_cost_to_target")
    }
    spent = {objective: s.record.get()["cost"]["total"] for objective, s in sessions.items()}
    assert spent["min_cost_to_target"] < spent["none"], spent
    picks = [set(doc["selected"]) for doc in sessions["min_cost_to_target"].rounds.all()]
    # Once every client has been timed (one rotation window), each round's scored slot is a fast one.
    assert all(chosen & {0, 1} for chosen in picks[6:]), picks
    for start in range(len(picks) - 6 + 1):
        assert set().union(*picks[start : start + 6]) == set(range(6)), start


def test_a_clients_rate_is_its_platforms_price_plus_the_invokers_where_one_calls_it() -> None:
    data = three_platforms()
    data["scenarios"]["federated_learning"]["server_config"]["prices"] = {
        "openwhisk": {"gb_second": 1, "invocation": 0.5}
    }
    config = parse_config(data)
    plan, prices = Plan.build(config), config.fl.server_config.prices_of
    rates = client_rates(plan, prices, weights_bytes=GB // 2, update_bytes=GB // 4)
    ow, gcf = prices("openwhisk"), prices("google")
    invoker = plan.limits[INVOKER_FUNCTION].memory / 1024 * ow.gb_second
    assert rates[0] == ClientRate(
        per_second=2.0, per_run=0.5
    )  # fl_client: 2048 MB, OpenWhisk moves bytes for free
    assert rates[2].per_second == pytest.approx(2.0 * gcf.gb_second + invoker)
    assert rates[2].per_run == pytest.approx(gcf.invocation + 0.75 * gcf.gb_transferred + ow.invocation)
    assert rates[3] == ClientRate(per_second=invoker, per_run=0.5)  # the edge fleet is free


def test_a_keeper_resumed_after_the_last_aggregation_prices_no_round_twice(
    store: Store, tmp_path: Path
) -> None:
    prices = {"openwhisk": {"gb_second": 1, "invocation": 0.5}}
    session_id = _keeper(store, tmp_path, max_rounds=2, prices=prices).start()
    session = store.for_session(session_id)
    before = session.record.get()["cost"]
    # What a keeper that died right after aggregating the last round leaves: the round not advanced.
    store.db.sessions.update_one({"_id": session_id}, {"$set": {"round": 1, "phase": "Running"}})
    resumed = _keeper(store, tmp_path, max_rounds=2, prices=prices)
    assert resumed.resume(session_id) == session_id
    assert session.record.get()["cost"] == before
    assert [r["metrics"]["cost"] for r in session.rounds.all()] == pytest.approx([6.0, 5.5])
    assert resumed.providers[resumed.plan.server].invoked == []  # type: ignore[attr-defined]
