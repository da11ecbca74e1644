"""Sharded aggregation (``server_config.aggregation_shards``) through the real ``fl_server_aggregator``.

Two sessions get the same random updates for three rounds (one client never delivers, one update
is rejected when stored, one holds a NaN in its last array so that it is rejected while
streaming); one aggregates unsharded, the other in shard activations and a joining one. The
weights and the strategy's state must be the same bits, and the verdicts on the updates the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedkeeper.function.config import FederatedLearning, parse_config
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.strategies.sharding import array_ranges
from fedkeeper.function.tasks.entry import run

CLIENTS = 4
ROUNDS = 3
SHARDS = 3
PARAMS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedavgm": {"server_learning_rate": 0.9, "server_momentum": 0.5},
    "fedadam": {"eta": 0.02},
}
SAMPLE = Path(__file__).resolve().parents[2] / "config-sample.yaml"


def _scenario(strategy: str, **server: Any) -> dict[str, Any]:
    return FederatedLearning.model_validate(
        {
            "server_config": {
                "cluster": "local",
                "num_clients_per_round": CLIENTS,
                "seed": 4,
                "strategy": {"name": strategy, **PARAMS[strategy]},
                **server,
            },
            "clients_info": {"total_num_clients": CLIENTS, "ow_clients_count": CLIENTS},
            "training_test_data": {"dataset": "digits"},
            "model_params": {"model": "mlp", "hidden_size": 16},
            "data_sampling": {"method": "iid", "seed": 1},
        }
    ).model_dump(mode="json", exclude={"mongo_config"})


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[Store]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _session(store: Store, name: str, strategy: str, **server: Any) -> tuple[dict[str, Any], SessionStore]:
    session = store.for_session(name)
    session.record.create({"scenario": _scenario(strategy, **server)})
    bound = {"store": {"url": store.url, "database": store.db.name}}
    assert "error" not in run("fl_server_init", {"session": session.id}, bound)
    return bound, session


def _aggregator(
    bound: dict[str, Any], session: SessionStore, round_number: int, **extra: Any
) -> dict[str, Any]:
    clients = session.rounds.get(round_number)["included"]
    call = {"session": session.id, "round": round_number, "clients": clients, **extra}
    return run("fl_server_aggregator", call, bound)


@pytest.mark.parametrize("strategy", list(PARAMS))
def test_sharded_aggregation_gives_the_unsharded_bits(store: Store, strategy: str) -> None:
    whole_bound, whole = _session(store, f"whole-{strategy}", strategy)
    sharded_bound, sharded = _session(store, f"sharded-{strategy}", strategy, aggregation_shards=SHARDS)
    assert wire.checksum(whole.weights.get(0)) == wire.checksum(sharded.weights.get(0))
    sizes = [w.size for w in whole.weights.get(0)]
    assert len({stop - start for start, stop in array_ranges(sizes, SHARDS)}) > 1  # uneven ranges
    rng = np.random.default_rng(11)
    for round_number in range(ROUNDS):
        selected = list(range(CLIENTS))
        delivered = selected[1:] if round_number == 1 else selected  # one client never delivers
        current = whole.weights.get(round_number)
        updates = {}
        for client in delivered:
            update = [w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in current]
            if round_number == 2 and client == 3:
                update[-1][0] = np.nan  # in the last shard's range only: every shard must reject it
            updates[client] = (update, int(rng.integers(20, 60)))
        for session in (whole, sharded):
            session.rounds.open(round_number, selected, {})
            for client, (update, count) in updates.items():
                if round_number == 2 and client == 2:
                    session.updates.reject(round_number, client, "update norm 99 is past max_update_norm 20")
                else:
                    session.updates.put(round_number, client, update, count, 1.0, 0.5)
            session.rounds.close(round_number, delivered)

        expected = _aggregator(whole_bound, whole, round_number)
        for shard in range(SHARDS):
            reply = _aggregator(sharded_bound, sharded, round_number, shard=shard)
            assert reply == {"round": round_number, "shard": shard}
            assert not sharded.weights.has(round_number + 1)  # a shard writes only its slice
        got = _aggregator(sharded_bound, sharded, round_number)

        assert "error" not in expected and "error" not in got, (expected, got)
        assert got["accepted"] == expected["accepted"] and got["rejected"] == expected["rejected"]
        if round_number == 2:
            assert set(got["rejected"]) == {"2", "3"}
        assert wire.checksum(sharded.weights.get(round_number + 1)) == wire.checksum(
            whole.weights.get(round_number + 1)
        ), f"round {round_number}"
        whole_state, sharded_state = (
            whole.strategy.server(round_number + 1),
            sharded.strategy.server(round_number + 1),
        )
        assert whole_state is not None and sharded_state is not None
        assert whole_state.layout() == sharded_state.layout()
        assert wire.checksum(whole_state.flat()) == wire.checksum(sharded_state.flat())
        assert store.db.aggregation_shards.count_documents({"session": sharded.id}) == 0  # joined, dropped


def test_a_shard_activation_that_runs_again_keeps_its_first_result(store: Store) -> None:
    bound, session = _session(store, "again", "fedavg", aggregation_shards=2)
    current = session.weights.get(0)
    session.rounds.open(0, [0, 1], {})
    for client in (0, 1):
        session.updates.put(0, client, [w + client for w in current], 10, 1.0, 0.5)
    session.rounds.close(0, [0, 1])
    for _ in range(2):
        assert _aggregator(bound, session, 0, shard=1) == {"round": 0, "shard": 1}
    assert store.db.aggregation_shards.count_documents({"session": session.id}) == 1
    missing = _aggregator(bound, session, 0)
    assert missing["error"] == f"StoreError: session {session.id}: round 0 has no result of shard 0"
    assert _aggregator(bound, session, 0, shard=2)["error"] == (
        "ConfigError: shard must be an integer in [0, 2) (aggregation_shards), got 2"
    )


def test_array_ranges_cover_every_array_once_in_order() -> None:
    sizes = [512, 8, 80, 10, 3000, 1]
    for shards in range(1, 9):
        ranges = array_ranges(sizes, shards)
        assert len(ranges) == shards
        assert [i for start, stop in ranges for i in range(start, stop)] == list(range(len(sizes)))


@pytest.mark.parametrize(
    ("strategy", "params"),
    [("krum", {}), ("fedmedian", {}), ("dpfedavg_fixed", {"clipping_norm": 1.0, "noise_multiplier": 0.1})],
)
def test_a_strategy_that_is_not_array_by_array_refuses_shards_in_one_line(
    strategy: str, params: dict[str, float]
) -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    server = data["scenarios"]["federated_learning"]["server_config"]
    server["strategy"] = {"name": strategy, **params}
    server["aggregation_shards"] = 2
    with pytest.raises(ConfigError) as info:
        parse_config(data, "c.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("c.yaml: scenarios.federated_learning.server_config: aggregation_shards 2: ")
    assert f"strategy {strategy} does not aggregate array by array" in message
