"""The keeper's calls of the managing functions, on the fake clock over the scripted provider."""

from __future__ import annotations

from pathlib import Path

from fedkeeper.function.catalog import AGGREGATOR_FUNCTION
from fedkeeper.function.config import parse_config
from fedkeeper.function.store.db import Store
from fedkeeper.host.keeper import Keeper
from fedkeeper.host.ledger import Ledger, LedgerStatus
from fedkeeper.host.plan import Plan
from tests.keeper.fakes import FakeClock, ScriptedProvider


def test_a_managing_function_still_running_when_the_wait_ends_is_booked_timed_out_and_retried(
    mongo_url: str, mongo_db_name: str, tmp_path: Path
) -> None:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    config = parse_config(
        {
            "logs_dir": str(tmp_path / "logs"),
            "providers": {"openwhisk": {"local": {"local": True}}},
            "scenarios": {
                "federated_learning": {
                    "server_config": {"cluster": "local", "max_rounds": 1, "num_clients_per_round": 2},
                    "clients_info": {"total_num_clients": 2, "ow_clients_count": 2},
                }
            },
        }
    )
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
