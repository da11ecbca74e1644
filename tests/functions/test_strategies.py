"""Every strategy through the real ``fl_server_aggregator`` over a real store, and the client-side
algorithms through the real ``fl_client``.

Aggregation runs three rounds (one with a client that never delivered, one with an update rejected
when it was stored) and must give, bit for bit, what the strategy computes in memory when it keeps
its own state: the state that goes through MongoDB between rounds loses nothing. An aggregator
that dies after writing the state is re-run to the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from fedkeeper.function.config import FederatedLearning
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.training import train_local
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.updates import StoredUpdate
from fedkeeper.function.strategies import (
    STRATEGIES,
    ClientPool,
    Failure,
    FitConfig,
    FitRes,
    InMemoryClientStates,
    RoundContext,
    StrategyState,
)
from fedkeeper.function.tasks.common import SessionSettings
from fedkeeper.function.tasks.entry import run
from fedkeeper.function.tasks.invoker import client_job

CLIENTS = 4
ROUNDS = 3
PARAMS: dict[str, dict[str, Any]] = {
    "fedavgm": {"server_learning_rate": 0.9, "server_momentum": 0.5},
    "fedadam": {"eta": 0.02},
    "fedyogi": {"eta": 0.02},
    "fedadagrad": {"eta": 0.02},
    "fedprox": {"proximal_mu": 0.5},
    "fedtrimmedavg": {"beta": 0.25},
    "krum": {"num_malicious_clients": 1, "num_clients_to_keep": 2},
    "dpfedavg_fixed": {"clipping_norm": 1.0, "noise_multiplier": 0.1},
}


def _scenario(strategy: str) -> dict[str, Any]:
    params = PARAMS.get(strategy, {})
    return FederatedLearning.model_validate(
        {
            "server_config": {
                "cluster": "local",
                "num_clients_per_round": 3,
                "seed": 4,
                "strategy": {"name": strategy, **params} if params else strategy,
            },
            "clients_info": {"total_num_clients": CLIENTS, "ow_clients_count": CLIENTS},
            "training_test_data": {"dataset": "digits"},
            "model_params": {"model": "mlp", "hidden_size": 8, "optimizer": "sgd", "learning_rate": 0.1},
            "data_sampling": {"method": "iid", "seed": 1},
        }
    ).model_dump(mode="json", exclude={"mongo_config"})


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[Store]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _session(store: Store, strategy: str) -> tuple[dict[str, Any], SessionSettings, SessionStore]:
    session = store.for_session(f"s-{strategy}")
    session.record.create({"scenario": _scenario(strategy)})
    bound = {"store": {"url": store.url, "database": store.db.name}}
    assert "error" not in run("fl_server_init", {"session": session.id}, bound)
    return bound, SessionSettings.load(session), session


def _open(session: SessionStore, settings: SessionSettings, round_number: int) -> list[int]:
    """What the keeper does when a round opens: the strategy's configure_fit, written into the round."""
    pool = ClientPool(tuple(range(CLIENTS)), settings.server.num_clients_per_round, seed=settings.server.seed)
    fit = settings.server.strategy.build().configure_fit(
        round_number, pool, FitConfig.from_model(settings.model)
    )
    return session.rounds.open(
        round_number, [i.client for i in fit], {i.client: i.config.to_json() for i in fit}
    )


def _aggregate(
    bound: dict[str, Any], session: SessionStore, round_number: int, clients: list[int]
) -> dict[str, Any]:
    return run(
        "fl_server_aggregator", {"session": session.id, "round": round_number, "clients": clients}, bound
    )


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_the_aggregator_runs_each_strategy_exactly_as_in_memory_with_state_through_the_store(
    store: Store, name: str
) -> None:
    bound, settings, session = _session(store, name)
    rng = np.random.default_rng(7)
    strategy = settings.server.strategy.build()
    state, clients = StrategyState(), InMemoryClientStates()
    for round_number in range(ROUNDS):
        selected = _open(session, settings, round_number)
        current = session.weights.get(round_number)
        fit = FitConfig.from_json(session.rounds.instructions(round_number, selected[0]))
        delivered = selected[1:] if round_number == 1 else selected  # one client never delivers
        results = []
        failures = [Failure(c, "no update before the round closed") for c in selected if c not in delivered]
        for client in delivered:
            update = [w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in current]
            if round_number == 2 and client == delivered[-1]:  # rejected when it was stored
                reason = "update norm 99 is past max_update_norm 20"
                session.updates.reject(round_number, client, reason)
                failures.append(Failure(client, reason, rejected=True))
                continue
            count = int(rng.integers(20, 60))
            session.updates.put(round_number, client, update, count, 1.0, 0.5)
            results.append(FitRes(client, update, count, fit))
        included = session.rounds.close(round_number, delivered)
        metrics = _aggregate(bound, session, round_number, included)
        assert "error" not in metrics, metrics
        assert metrics["strategy"] == name and metrics["accepted"] == [r.client for r in results]

        expected = strategy.aggregate_fit(
            RoundContext(round_number, current, state, clients, len(selected), CLIENTS, settings.server.seed),
            results,
            failures,
        )
        clients.advance()
        stored = session.weights.get(round_number + 1)
        want = expected.weights if expected.weights is not None else current
        assert wire.checksum(stored) == wire.checksum(want), f"round {round_number}"
        # DP keeps the weights of a round with a failure; every other round moves them
        moved = not all(np.array_equal(a, b) for a, b in zip(stored, current, strict=True))
        assert moved or (name == "dpfedavg_fixed" and failures)
        kept = session.strategy.server(round_number + 1)
        assert kept is not None and set(kept.arrays) == set(expected.state.arrays)
        for key, arrays in expected.state.arrays.items():
            assert wire.checksum(kept.arrays[key]) == wire.checksum(arrays)
        for client, arrays in clients.current.items():  # SCAFFOLD's c_i
            assert wire.checksum(session.strategy.client(client, round_number + 1) or []) == wire.checksum(
                arrays
            )
        state = expected.state


def test_an_aggregator_that_died_after_writing_the_state_is_rerun_to_the_same_weights(store: Store) -> None:
    bound, settings, session = _session(store, "fedadam")
    for round_number in range(2):
        selected = _open(session, settings, round_number)
        current = session.weights.get(round_number)
        for client in selected:
            session.updates.put(
                round_number, client, [w * (1.1 + client / 10) for w in current], 30, 1.0, 0.5
            )
        session.rounds.close(round_number, selected)
        first = _aggregate(bound, session, round_number, selected)
        weights = session.weights.get(round_number + 1)
        # the first attempt died after the state and the marks, before the weights
        store.db.weights.delete_one({"session": session.id, "round": round_number + 1})
        store.db.rounds.update_one(
            {"session": session.id, "round": round_number},
            {"$unset": {"metrics": ""}, "$set": {"status": "closed"}},
        )
        again = _aggregate(bound, session, round_number, selected)
        assert again == first
        assert wire.checksum(session.weights.get(round_number + 1)) == wire.checksum(weights)
        assert (
            store.db.strategy_state.count_documents({"session": session.id, "round": round_number + 1}) == 1
        )


def test_a_stateful_strategy_refuses_a_round_whose_state_is_missing(store: Store) -> None:
    bound, settings, session = _session(store, "fedyogi")
    for round_number in range(2):
        selected = _open(session, settings, round_number)
        current = session.weights.get(0)
        for client in selected:
            session.updates.put(round_number, client, [w + 0.01 for w in current], 30, 1.0, 0.5)
        session.rounds.close(round_number, selected)
        if round_number == 0:
            assert "error" not in _aggregate(bound, session, 0, selected)
            store.db.strategy_state.delete_many({"session": session.id})
    reply = _aggregate(bound, session, 1, selected)
    assert reply["error"] == f"StoreError: session {session.id}: no fedyogi state stored for round 1"


def _train_direct(
    bound: dict[str, Any], session: SessionStore, round_number: int, client: int
) -> list[np.ndarray]:
    call = {"session": session.id, "round": round_number, "client": client, "attempt": 1}
    reply = run("fl_client", call, bound)
    assert reply.get("stored") is True, reply
    (update,) = list(session.updates.stream(round_number, [client]))
    assert isinstance(update, StoredUpdate)
    return update.weights


def test_fedprox_clients_train_with_the_proximal_term_in_both_modes(store: Store) -> None:
    bound, settings, session = _session(store, "fedprox")
    (client, *_) = _open(session, settings, 0)
    weights = session.weights.get(0)
    indices = session.partitions.get(client)
    direct = _train_direct(bound, session, 0, client)

    job = client_job(session, settings, 0, client, 2, weights, indices)
    assert job["fit"]["proximal_mu"] == 0.5 and "correction" not in job
    inline = wire.from_b64(run("fl_client", dict(job))["weights"])
    assert wire.checksum(inline) == wire.checksum(direct)

    data = load_dataset(settings.data)
    seed = settings.model.seed * 1_000_003 + client
    x, y = data.x_train[indices], data.y_train[indices]
    plain = train_local(weights, x, y, settings.model, 10, seed=seed).weights
    prox = train_local(weights, x, y, settings.model, 10, seed=seed, proximal_mu=0.5).weights
    assert wire.checksum(prox) == wire.checksum(direct)
    # the proximal term pulls the update towards the round's weights
    assert wire.update_norm(prox, weights) < wire.update_norm(plain, weights)


def test_scaffold_clients_read_their_correction_from_the_store_in_both_modes(store: Store) -> None:
    bound, settings, session = _session(store, "scaffold")
    selected = _open(session, settings, 0)
    for client in selected:
        _train_direct(bound, session, 0, client)
    session.rounds.close(0, selected)
    assert "error" not in _aggregate(bound, session, 0, selected)

    c = (session.strategy.server(1) or StrategyState()).arrays["c"]
    client = next(c for c in _open(session, settings, 1) if c in selected)
    own = session.strategy.client(client, 1)
    assert own is not None and np.any(own[0])  # written by round 0's aggregation
    weights = session.weights.get(1)
    job = client_job(session, settings, 1, client, 1, weights, session.partitions.get(client))
    correction = wire.from_b64(job["correction"])
    np.testing.assert_allclose(correction[0], (c[0] - own[0]).astype(np.float32))
    assert job["fit"]["control_variates"] is True

    inline = wire.from_b64(run("fl_client", dict(job))["weights"])
    direct = _train_direct(bound, session, 1, client)
    assert wire.checksum(inline) == wire.checksum(direct)
    job.pop("correction")
    uncorrected = wire.from_b64(run("fl_client", dict(job))["weights"])
    assert wire.checksum(uncorrected) != wire.checksum(direct)
