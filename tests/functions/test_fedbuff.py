"""FedBuff's server step: the staleness functions, and async buffers through the real
``fl_server_aggregator`` over a real store, against flwr's weighted average and FedBuff's formula."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flwr.server.strategy.aggregate import aggregate

from fedkeeper.function.config import FederatedLearning, Staleness
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.strategies.fedbuff import staleness_weight
from fedkeeper.function.tasks.entry import run


def test_staleness_constant_polynomial_and_hinge_follow_fedbuff() -> None:
    assert [staleness_weight(Staleness(kind="constant"), t) for t in (0, 5)] == [1.0, 1.0]
    polynomial = Staleness(kind="polynomial", a=0.5)
    assert [staleness_weight(polynomial, t) for t in (0, 3, 8)] == [1.0, 0.5, pytest.approx(1 / 3)]
    hinge = Staleness(kind="hinge", a=10, b=4)
    assert [staleness_weight(hinge, t) for t in (0, 4, 5, 6)] == [1.0, 1.0, 1 / 11, 1 / 21]
    assert Staleness.model_validate("polynomial") == Staleness(kind="polynomial")
    with pytest.raises(ValueError, match="staleness must be >= 0"):
        staleness_weight(polynomial, -1)


def test_async_mode_takes_only_fedavg_and_says_why() -> None:
    with pytest.raises(ValueError, match="'fedmedian' with mode async"):
        FederatedLearning.model_validate(_scenario(strategy="fedmedian"))


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"max_cost": 0.5}, "max_cost"),
        ({"objective": "min_cost_to_target"}, "objective"),
        ({"aggregation_shards": 2}, "aggregation_shards"),
        ({"strategy": {"name": "fedavg", "fraction_evaluate": 0.5}}, "strategy.fraction_evaluate"),
    ],
)
def test_async_mode_refuses_what_only_sync_rounds_do_naming_it(setting: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=f"mode async does not support {named}: remove it or use mode sync"):
        FederatedLearning.model_validate(_scenario(**setting))
    FederatedLearning.model_validate(_scenario(**setting, mode="sync"))


def _scenario(**server: Any) -> dict[str, Any]:
    return {
        "server_config": {"cluster": "local", "mode": "async", "buffer_size": 2, "seed": 4, **server},
        "clients_info": {"total_num_clients": 3, "ow_clients_count": 3},
        "training_test_data": {"dataset": "digits"},
        "model_params": {"model": "mlp", "hidden_size": 8, "optimizer": "sgd", "learning_rate": 0.1},
        "data_sampling": {"method": "iid", "seed": 1},
    }


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[Store]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _session(store: Store, **server: Any) -> tuple[dict[str, Any], SessionStore]:
    session = store.for_session("s-fedbuff")
    scenario = FederatedLearning.model_validate(_scenario(**server)).model_dump(
        mode="json", exclude={"mongo_config"}
    )
    session.record.create({"scenario": scenario})
    bound = {"store": {"url": store.url, "database": store.db.name}}
    assert "error" not in run("fl_server_init", {"session": session.id}, bound)
    return bound, session


def _aggregate(bound: dict[str, Any], session: SessionStore, version: int) -> dict[str, Any]:
    clients = sorted({int(m["client"]) for m in session.updates.claimed(version)})
    session.rounds.open(version, clients)
    params = {"session": session.id, "round": version, "clients": clients, "mode": "async"}
    return run("fl_server_aggregator", params, bound)


def _near(weights: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    return [w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in weights]


def test_a_fresh_buffer_with_constant_staleness_is_flowers_weighted_average(store: Store) -> None:
    bound, session = _session(store)
    rng = np.random.default_rng(3)
    w0 = session.weights.get(0)
    updates = [(_near(w0, rng), 30), (_near(w0, rng), 50)]
    for dispatch, (update, count) in enumerate(updates):
        assert session.updates.put(dispatch, dispatch, update, count, 1.0, 0.5, version=0)
    assert len(session.updates.claim(0, 2)) == 2
    metrics = _aggregate(bound, session, 0)
    assert "error" not in metrics, metrics
    expected = aggregate(updates)
    for got, want in zip(session.weights.get(1), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert metrics["staleness_max"] == 0 and metrics["accepted"] == [0, 1]


def test_a_stale_update_counts_by_its_staleness_and_the_step_by_the_server_learning_rate(
    store: Store,
) -> None:
    eta_g = 0.7
    bound, session = _session(store, staleness={"kind": "polynomial", "a": 1.0}, server_learning_rate=eta_g)
    rng = np.random.default_rng(5)
    w0 = session.weights.get(0)
    for dispatch, client in ((1, 0), (2, 1)):
        session.updates.put(dispatch, client, _near(w0, rng), 20, 1.0, 0.5, version=0)
    assert [int(m["round"]) for m in session.updates.claim(0, 2)] == [1, 2]
    assert "error" not in _aggregate(bound, session, 0)
    # dispatched first on version 0, finished after version 1 was made: one version stale
    stale = _near(w0, rng)
    session.updates.put(0, 2, stale, 40, 1.0, 0.5, version=0)
    w1 = session.weights.get(1)
    fresh = _near(w1, rng)
    session.updates.put(3, 1, fresh, 60, 1.0, 0.5, version=1)
    assert {int(m["round"]) for m in session.updates.claim(1, 2)} == {0, 3}
    metrics = _aggregate(bound, session, 1)
    assert "error" not in metrics, metrics
    s = 1 / (1 + 1)  # polynomial, a = 1, one version stale
    for got, old, new, base0, base1 in zip(session.weights.get(2), stale, fresh, w0, w1, strict=True):
        step = (s * 40 * (old.astype(np.float64) - base0) + 60 * (new.astype(np.float64) - base1)) / 100
        np.testing.assert_allclose(got, base1 + eta_g * step, rtol=1e-5, atol=1e-6)
    assert metrics["staleness_mean"] == 0.5 and metrics["staleness_max"] == 1
    assert _aggregate(bound, session, 1) == metrics  # re-run: the same version, nothing refolded
