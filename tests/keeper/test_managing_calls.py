"""The keeper's calls of the managing functions, on the fake clock over the scripted provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedkeeper.function.catalog import AGGREGATOR_FUNCTION
from fedkeeper.function.config import Config, parse_config
from fedkeeper.function.store.db import Store
from fedkeeper.host.keeper import Keeper
from fedkeeper.host.ledger import Ledger, LedgerStatus
from fedkeeper.host.plan import Plan
from tests.keeper.fakes import FakeClock, ScriptedProvider


def _config(tmp_path: Path, **server: Any) -> Config:
    return parse_config(
        {
            "logs_dir": str(tmp_path / "logs"),
            "providers": {"openwhisk": {"local": {"local": True}}},
            "scenarios": {
                "federated_learning": {
                    "server_config": {
                        "cluster": "local",
                        "max_rounds": 1,
                        "num_clients_per_round": 2,
                        **server,
                    },
                    "clients_info": {"total_num_clients": 2, "ow_clients_count": 2},
                }
            },
        }
    )


def test_a_managing_function_still_running_when_the_wait_ends_is_booked_timed_out_and_retried(
    mongo_url: str, mongo_db_name: str, tmp_path: Path
) -> None:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    config = _config(tmp_path)
    clock, plan = FakeClock(), Plan.build(config)
    provider = ScriptedProvider(clock, store)
    keeper = Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep)
    provider.pending_once.add(AGGREGATOR_FUNCTION)
    try:
        session = store.for_session(keeper.start())
        assert session.record.get()["phase"] == "Succeeded"
        calls = [e for e in Ledger(session).entries() if e.function == AGGREGATOR_FUNCTION]
        assert [e.status for e in calls] == [LedgerStatus.TIMED_OUT, LedgerStatus.SUCCESS]
        assert "no outcome after" in (calls[0].error or "")
    finally:
        store.db.client.drop_database(mongo_db_name)


def test_aggregation_shards_run_before_the_joining_aggregator_each_retried_on_its_own(
    mongo_url: str, mongo_db_name: str, tmp_path: Path
) -> None:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    config = _config(tmp_path, aggregation_shards=3)
    clock, plan = FakeClock(), Plan.build(config)
    provider = ScriptedProvider(clock, store)
    keeper = Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep)
    provider.pending_once.add(f"{AGGREGATOR_FUNCTION} shard 1")
    try:
        session = store.for_session(keeper.start())
        assert session.record.get()["phase"] == "Succeeded"
        calls = [e for e in Ledger(session).entries() if e.function == AGGREGATOR_FUNCTION]
        by_client = {c: [e.status for e in calls if e.client == c] for c in (-1, -2, -3, -4)}
        assert by_client == {
            -1: [LedgerStatus.SUCCESS],  # the joining aggregator
            -2: [LedgerStatus.SUCCESS],  # shard 0
            -3: [LedgerStatus.TIMED_OUT, LedgerStatus.SUCCESS],  # shard 1, retried alone
            -4: [LedgerStatus.SUCCESS],  # shard 2
        }
        aggregations = [c for c in provider.managing if c.startswith(AGGREGATOR_FUNCTION)]
        assert aggregations[-1] == AGGREGATOR_FUNCTION and AGGREGATOR_FUNCTION not in aggregations[:-1]
    finally:
        store.db.client.drop_database(mongo_db_name)


def test_local_aggregators_run_per_group_and_one_failing_for_good_leaves_its_updates_to_the_global_one(
    mongo_url: str, mongo_db_name: str, tmp_path: Path
) -> None:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    topology = {"kind": "hierarchical", "groups": "explicit", "members": [[0], [1]]}
    config = _config(tmp_path, topology=topology, max_retries=1, retry_backoff_s=0.1)
    clock, plan = FakeClock(), Plan.build(config)
    provider = ScriptedProvider(clock, store)
    keeper = Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep)
    provider.failing.add(f"{AGGREGATOR_FUNCTION} group 1")
    try:
        session = store.for_session(keeper.start())
        assert session.record.get()["phase"] == "Succeeded"
        calls = [e for e in Ledger(session).entries() if e.function == AGGREGATOR_FUNCTION]
        by_client = {c: [e.status for e in calls if e.client == c] for c in (-1, -1000, -1001)}
        assert by_client == {
            -1: [LedgerStatus.SUCCESS],  # the global aggregator
            -1000: [LedgerStatus.SUCCESS],  # group 0's local aggregator
            -1001: [LedgerStatus.APPLICATION_ERROR] * 2,  # group 1's: out of its retries
        }
        assert provider.managing[-1] == AGGREGATOR_FUNCTION  # the global one comes last
        doc = session.rounds.get(0)
        assert doc["groups"] == [
            {"group": 0, "clients": [0], "where": "openwhisk/local"},
            {"group": 1, "clients": [1], "where": "openwhisk/local"},
        ]
        assert doc["metrics"]["accepted"] == [0, 1]  # the global aggregator got every included client
    finally:
        store.db.client.drop_database(mongo_db_name)
