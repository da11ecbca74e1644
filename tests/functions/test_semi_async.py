"""semi_async's folding rule through the real ``fl_server_aggregator`` over a real store, against
flwr's weighted average; and the strategies semi_async takes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flwr.server.strategy.aggregate import aggregate

from fedkeeper.function.config import FederatedLearning
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.statuses import UpdateStatus
from fedkeeper.function.tasks.entry import run


def _scenario(**server: Any) -> dict[str, Any]:
    return {
        "server_config": {"cluster": "local", "mode": "semi_async", "num_clients_per_round": 3, **server},
        "clients_info": {"total_num_clients": 3, "ow_clients_count": 3},
        "training_test_data": {"dataset": "digits"},
        "model_params": {"model": "mlp", "hidden_size": 8, "optimizer": "sgd", "learning_rate": 0.1},
        "data_sampling": {"method": "iid", "seed": 1},
    }


@pytest.mark.parametrize(
    "strategy",
    [
        "fedmedian",
        "krum",
        "scaffold",
        "fednova",
        {"name": "dpfedavg_fixed", "clipping_norm": 1.0, "noise_multiplier": 0.1},
    ],
)
def test_semi_async_takes_only_the_fedavg_family_and_names_the_field(strategy: str | dict[str, Any]) -> None:
    name = strategy if isinstance(strategy, str) else strategy["name"]
    with pytest.raises(
        ValueError, match=f"server_config.strategy: '{name}' with mode semi_async; .* use one of fedavg"
    ):
        FederatedLearning.model_validate(_scenario(strategy=strategy))


@pytest.mark.parametrize(
    "strategy",
    ["fedavg", {"name": "fedprox", "proximal_mu": 0.1}, "fedavgm", "fedadam", "fedyogi", "fedadagrad"],
)
def test_semi_async_takes_the_fedavg_family(strategy: str | dict[str, Any]) -> None:
    fl = FederatedLearning.model_validate(_scenario(strategy=strategy))
    assert fl.server_config.mode == "semi_async"


def test_semi_async_refuses_aggregation_shards_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"server_config\.aggregation_shards: 2 with mode semi_async"):
        FederatedLearning.model_validate(_scenario(aggregation_shards=2))


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[Store]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _session(store: Store, **server: Any) -> tuple[dict[str, Any], SessionStore]:
    session = store.for_session("s-semi-async")
    scenario = FederatedLearning.model_validate(_scenario(**server)).model_dump(
        mode="json", exclude={"mongo_config"}
    )
    session.record.create({"scenario": scenario})
    bound = {"store": {"url": store.url, "database": store.db.name}}
    assert "error" not in run("fl_server_init", {"session": session.id}, bound)
    return bound, session


def _aggregate(
    bound: dict[str, Any], session: SessionStore, number: int, included: list[int]
) -> dict[str, Any]:
    params = {"session": session.id, "round": number, "clients": included}
    return run("fl_server_aggregator", params, bound)


def _near(weights: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    return [w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in weights]


def test_a_late_update_joins_the_next_rounds_mean_rebased_and_discounted_by_staleness(store: Store) -> None:
    bound, session = _session(store, staleness={"kind": "polynomial", "a": 1.0})
    rng = np.random.default_rng(7)
    w0 = session.weights.get(0)
    # round 0 closes with clients 0 and 1; client 2 is late
    session.rounds.open(0, [0, 1, 2])
    first = [(_near(w0, rng), 30), (_near(w0, rng), 50)]
    for client, (update, count) in enumerate(first):
        session.updates.put(0, client, update, count, 1.0, 0.5)
    session.rounds.close(0, [0, 1], late=[2])
    assert "error" not in _aggregate(bound, session, 0, [0, 1])
    late = _near(w0, rng)
    session.updates.put(0, 2, late, 40, 1.0, 0.5)  # client 2 delivers after round 0 closed
    w1 = session.weights.get(1)
    # round 1: clients 0 and 1 again; round 1 takes round 0's late update
    session.rounds.open(1, [0, 1])
    fresh = [(_near(w1, rng), 20), (_near(w1, rng), 60)]
    for client, (update, count) in enumerate(fresh):
        session.updates.put(1, client, update, count, 1.0, 0.5)
    session.rounds.close(1, [0, 1])
    claimed = session.updates.claim_late(1, session.rounds.late_clients(1))
    assert session.rounds.fold(1, [(int(m["round"]), int(m["client"])) for m in claimed]) == [(0, 2)]
    metrics = _aggregate(bound, session, 1, [0, 1])
    assert "error" not in metrics, metrics
    # the late update's own step, from round 1's weights; its 40 examples count s(1) = 1/2
    rebased = [
        b1.astype(np.float64) + (u.astype(np.float64) - b0) for b1, u, b0 in zip(w1, late, w0, strict=True)
    ]
    expected = aggregate([*fresh, (rebased, 20)])
    for got, want in zip(session.weights.get(2), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert metrics["late_folded"] == 1 and metrics["staleness_mean"] == 1 and metrics["staleness_max"] == 1
    assert metrics["accepted"] == [0, 1]  # the round's own clients
    mark = session.updates.marks(0, [2])[0]
    assert mark["status"] == UpdateStatus.ACCEPTED and mark["consumed_by"] == 1
    assert _aggregate(bound, session, 1, [0, 1]) == metrics  # re-run: nothing folded twice


def test_a_late_update_whose_rounds_weights_are_pruned_is_rejected_saying_why(store: Store) -> None:
    bound, session = _session(store)
    rng = np.random.default_rng(2)
    w0 = session.weights.get(0)
    session.rounds.open(0, [0, 1])
    session.updates.put(0, 0, _near(w0, rng), 30, 1.0, 0.5)
    session.rounds.close(0, [0], late=[1])
    assert "error" not in _aggregate(bound, session, 0, [0])
    session.updates.put(0, 1, _near(w0, rng), 30, 1.0, 0.5)
    store.db.weights.delete_many({"session": session.id, "round": 0})  # as retention does
    session.rounds.open(1, [0])
    session.updates.put(1, 0, _near(session.weights.get(1), rng), 30, 1.0, 0.5)
    session.rounds.close(1, [0])
    session.updates.claim_late(1, session.rounds.late_clients(1))
    session.rounds.fold(1, [(0, 1)])
    metrics = _aggregate(bound, session, 1, [0])
    assert "error" not in metrics, metrics
    assert metrics["late_folded"] == 0
    mark = session.updates.marks(0, [1])[0]
    assert mark["status"] == UpdateStatus.REJECTED and "pruned" in mark["reason"]
