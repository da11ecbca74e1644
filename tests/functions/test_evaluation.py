"""``fl_client``'s evaluate task: the new global weights on the client's held-out rows of the test split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedkeeper.function.config import DataSampling, FederatedLearning
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.evaluation import evaluate
from fedkeeper.function.learning.partition import partition
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.tasks.common import held_out
from fedkeeper.function.tasks.entry import run

SCENARIO = FederatedLearning.model_validate(
    {
        "server_config": {
            "cluster": "local",
            "num_clients_per_round": 2,
            "strategy": {"name": "fedavg", "fraction_evaluate": 1.0},
        },
        "clients_info": {"total_num_clients": 3, "ow_clients_count": 3},
        "training_test_data": {"dataset": "digits"},
        "model_params": {"model": "mlp", "hidden_size": 16, "local_epochs": 1, "learning_rate": 0.05},
        "data_sampling": {"method": "shards", "shards_per_client": 2, "seed": 1},
    }
)
EVALUATE = {"session": "s1", "round": 0, "client": 2, "attempt": 2, "task": "evaluate"}


@pytest.fixture
def session(mongo_url: str, mongo_db_name: str) -> Any:
    """Session ``s1``, initialised, with round 0 aggregated (round 1's weights: round 0's + 0.01)."""
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    session = store.for_session("s1")
    session.record.create({"scenario": SCENARIO.model_dump(mode="json", exclude={"mongo_config"})})
    bound = {"store": {"url": mongo_url, "database": mongo_db_name}}
    assert "error" not in run("fl_server_init", {"session": "s1"}, bound)
    session.weights.put(1, [w + 0.01 for w in session.weights.get(0)])
    yield session, bound
    store.db.client.drop_database(mongo_db_name)


def _expected(session: SessionStore, client: int) -> tuple[int, float, float]:
    """What evaluating round 1's weights on ``client``'s held-out rows gives, computed here."""
    dataset = load_dataset(SCENARIO.training_test_data)
    rows = partition(dataset.y_test, 3, SCENARIO.data_sampling)[client]
    loss, accuracy = evaluate(
        session.weights.get(1), dataset.x_test[rows], dataset.y_test[rows], SCENARIO.model_params, 10
    )
    return len(rows), loss, accuracy


def test_held_out_data_is_the_test_split_partitioned_as_the_training_set_is() -> None:
    dataset = load_dataset(SCENARIO.training_test_data)
    parts = held_out(SCENARIO.training_test_data, SCENARIO.data_sampling, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(dataset.y_test)))  # disjoint, covering
    expected = partition(dataset.y_test, 3, SCENARIO.data_sampling)  # the training set's method and seed
    assert all(np.array_equal(a, b) for a, b in zip(parts, expected, strict=True))
    assert all(
        len(np.unique(dataset.y_test[p])) < 10 for p in parts
    )  # shards: non-IID, like the training data
    iid = held_out(SCENARIO.training_test_data, DataSampling(method="iid", seed=1), 3)
    assert all(len(np.unique(dataset.y_test[p])) == 10 for p in iid)


def test_a_direct_evaluation_stores_the_new_weights_loss_and_accuracy_on_the_clients_rows_once(
    session: Any,
) -> None:
    store, bound = session
    first = run("fl_client", EVALUATE, bound)
    assert "error" not in first, first
    num_examples, loss, accuracy = _expected(store, 2)
    assert first["stored"] is True and first["num_examples"] == num_examples
    assert first["loss"] == pytest.approx(loss) and first["accuracy"] == pytest.approx(accuracy)
    again = run("fl_client", {**EVALUATE, "attempt": 3}, bound)  # a revived or duplicated activation
    assert again["stored"] is False
    (stored,) = store.evaluations.results(0, [2])
    assert (stored["num_examples"], stored["attempt"]) == (num_examples, 2)
    assert not store.updates.has(0, 2)  # evaluating trains nothing


def test_an_inline_evaluation_needs_no_store_and_answers_what_a_direct_one_stores(session: Any) -> None:
    store, _ = session
    indices = held_out(SCENARIO.training_test_data, SCENARIO.data_sampling, 3)[1]
    job = {
        **EVALUATE,
        "client": 1,
        "weights": wire.to_b64(store.weights.get(1)),
        "model": SCENARIO.model_params.model_dump(mode="json"),
        "data": {"dataset": SCENARIO.training_test_data.model_dump(mode="json"), "indices": indices.tolist()},
    }
    reply = run("fl_client", job)  # no binding at all
    assert "error" not in reply, reply
    assert set(reply) == {"client", "round", "num_examples", "loss", "accuracy"}  # no weights back
    num_examples, loss, accuracy = _expected(store, 1)
    assert (reply["client"], reply["round"], reply["num_examples"]) == (1, 0, num_examples)
    assert reply["loss"] == pytest.approx(loss) and reply["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "predict"}, "parameter 'task' must be one of fit, evaluate, got 'predict'"),
        ({"client": 7}, "client 7 is not one of the session's 3 clients"),
    ],
)
def test_a_bad_evaluate_call_is_one_line(session: Any, change: dict[str, Any], message: str) -> None:
    _, bound = session
    reply = run("fl_client", {**EVALUATE, **change}, bound)
    assert message in reply["error"] and "\n" not in reply["error"]


def test_an_evaluate_call_through_the_invoker_to_a_platform_that_cannot_evaluate_is_refused(
    session: Any,
) -> None:
    _, bound = session
    binding = {"platform": "edge", "cluster": "fleet", "settings": {}}
    call = {**EVALUATE, "target": "edge/fleet"}
    reply = run("fl_invoker_weights_update", call, {**bound, "targets": {"edge/fleet": binding}})
    assert "client 2 on edge/fleet cannot evaluate: fixed trainer: trains only" in reply["error"]


def test_a_test_split_too_small_for_the_partitioning_fails_init_in_one_line(
    mongo_url: str, mongo_db_name: str
) -> None:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    scenario = SCENARIO.model_dump(mode="json", exclude={"mongo_config"})
    # digits: 1437 training examples take 3 x 200 shards, its 360 test examples cannot.
    scenario["data_sampling"] = {"method": "shards", "shards_per_client": 200, "seed": 1}
    store.for_session("s1").record.create({"scenario": scenario})
    try:
        reply = run(
            "fl_server_init", {"session": "s1"}, {"store": {"url": mongo_url, "database": mongo_db_name}}
        )
        assert reply["error"].startswith("ConfigError: federated evaluation: the test split's 360 examples")
        assert "set fraction_evaluate: 0" in reply["error"] and "\n" not in reply["error"]
    finally:
        store.db.client.drop_database(mongo_db_name)
