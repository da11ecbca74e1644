"""Bounded updates: whatever a client replies through the invoker, it cannot take over FedAvg.

The client is a real action on a local fabric that answers with a crafted reply; the invoker
calls it as it calls any target, and the aggregator then runs over the round.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from fedkeeper.function.config import GUEST_AUTH, FederatedLearning, OpenWhiskCluster
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import Store
from fedkeeper.function.store.updates import StoredUpdate
from fedkeeper.function.strategies import FedAvg, FitConfig, FitRes, RoundContext
from fedkeeper.function.tasks.entry import run
from fedkeeper.host.fabric.process import FabricProcess

SCENARIO = FederatedLearning.model_validate(
    {
        "server_config": {"cluster": "local", "num_clients_per_round": 2},
        "clients_info": {"total_num_clients": 3, "ow_clients_count": 3},
        "training_test_data": {"dataset": "digits"},
        "model_params": {"model": "mlp", "hidden_size": 16, "local_epochs": 1, "learning_rate": 0.05},
        "data_sampling": {"method": "iid", "seed": 1},
    }
)
# The "client": whatever the test bound as its reply comes back, the job is ignored.
CRAFTED_CLIENT = """
def main(params):
    return params["reply"]
"""
TARGET = "openwhisk/crafted"


@pytest.fixture(scope="module")
def fabric() -> Iterator[FabricProcess]:
    with FabricProcess() as process:
        yield process


@pytest.fixture
def session(mongo_url: str, mongo_db_name: str, fabric: FabricProcess) -> Iterator[dict[str, Any]]:
    """Two sessions (``s1`` without, ``s-norm`` with ``max_update_norm: 20``), initialised."""
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    normed = SCENARIO.model_copy(
        update={"server_config": SCENARIO.server_config.model_copy(update={"max_update_norm": 20.0})}
    )
    for session_id, scenario in (("s1", SCENARIO), ("s-norm", normed)):
        store.for_session(session_id).record.create(
            {
                "config_digest": "d",
                "scenario": FederatedLearning.model_dump(scenario, mode="json", exclude={"mongo_config"}),
            }
        )
    target = {
        "platform": "openwhisk",
        "cluster": "crafted",
        "settings": OpenWhiskCluster(base_url=fabric.url).model_dump(mode="json"),
    }
    bound = {"store": {"url": mongo_url, "database": mongo_db_name}, "targets": {TARGET: target}}
    for session_id in ("s1", "s-norm"):
        assert "error" not in run("fl_server_init", {"session": session_id}, bound)
    yield {"bound": bound, "store": store, "fabric": fabric}
    store.db.client.drop_database(mongo_db_name)


def _deploy_client_replying(fabric: FabricProcess, reply: dict[str, Any]) -> None:
    user, _, key = GUEST_AUTH.partition(":")
    response = requests.put(
        f"{fabric.url}/api/v1/namespaces/_/actions/fl_client",
        params={"overwrite": "true"},
        json={
            "exec": {"kind": "python:3", "code": CRAFTED_CLIENT},
            "parameters": [{"key": "reply", "value": reply}],
        },
        auth=(user, key),
        timeout=30,
    )
    assert response.status_code == 200, response.text


def _invoke(session: dict[str, Any], session_id: str, reply: dict[str, Any]) -> dict[str, Any]:
    _deploy_client_replying(
        session["fabric"], {"client": 0, "round": 0, "loss": 0.5, "accuracy": 0.5, **reply}
    )
    call = {"session": session_id, "round": 0, "client": 0, "attempt": 1, "target": TARGET}
    return run("fl_invoker_weights_update", call, session["bound"])


def _aggregate(session: dict[str, Any], session_id: str) -> dict[str, Any]:
    store: Store = session["store"]
    assert run("fl_client", {"session": session_id, "round": 0, "client": 1, "attempt": 1}, session["bound"])[
        "stored"
    ]
    store.for_session(session_id).rounds.open(0, [0, 1])
    store.for_session(session_id).rounds.close(0, [0, 1])
    return run(
        "fl_server_aggregator", {"session": session_id, "round": 0, "clients": [0, 1]}, session["bound"]
    )


def test_inflated_num_examples_is_rejected_and_cannot_take_over_fedavg(session: dict[str, Any]) -> None:
    store: Store = session["store"]
    huge = [np.full(w.shape, 1e30, dtype=w.dtype) for w in store.for_session("s1").weights.get(0)]
    result = _invoke(session, "s1", {"weights": wire.to_b64(huge), "num_examples": 10**12})
    assert "error" not in result, result
    partition = len(store.for_session("s1").partitions.get(0))
    assert result["rejected"] == (
        f"num_examples 1000000000000 is more than the {partition} examples of the client's partition"
    )
    metrics = _aggregate(session, "s1")
    assert metrics["accepted"] == [1] and metrics["rejected"] == {"0": result["rejected"]}
    (honest,) = store.for_session("s1").updates.stream(0, [1])
    assert isinstance(honest, StoredUpdate)
    for got, want in zip(store.for_session("s1").weights.get(1), honest.weights, strict=True):
        np.testing.assert_array_equal(got, want)  # only the honest client counts
    assert store.db.updates.find_one({"session": "s1", "round": 0, "client": 0})["status"] == "rejected"


@pytest.mark.parametrize(
    ("num_examples", "reason"),
    [
        (2**63, "num_examples 9223372036854775808 is past the limit of 9007199254740992"),
        (2**200, "num_examples a 201-bit integer is past the limit"),
        (-5, "num_examples must be positive, got -5"),
        (0, "num_examples must be positive, got 0"),
        (12.5, "num_examples must be an integer, got float"),
        ("12", "num_examples must be an integer, got str"),
        (None, "num_examples must be an integer, got NoneType"),
    ],
)
def test_bad_num_examples_from_a_target_is_a_clean_rejection(
    session: dict[str, Any], num_examples: Any, reason: str
) -> None:
    weights = session["store"].for_session("s1").weights.get(0)
    result = _invoke(session, "s1", {"weights": wire.to_b64(weights), "num_examples": num_examples})
    assert "error" not in result, result
    assert result["stored"] is True and result["rejected"].startswith(reason)


def test_non_finite_weights_from_a_target_are_rejected(session: dict[str, Any]) -> None:
    weights = [w.copy() for w in session["store"].for_session("s1").weights.get(0)]
    weights[1][3] = np.inf
    result = _invoke(session, "s1", {"weights": wire.to_b64(weights), "num_examples": 10})
    assert result["rejected"] == "array 1: contains NaN or infinite values"


def test_update_past_max_update_norm_is_rejected_with_its_norm(session: dict[str, Any]) -> None:
    store: Store = session["store"]
    far = [w + np.float32(1.0) for w in store.for_session("s-norm").weights.get(0)]
    result = _invoke(session, "s-norm", {"weights": wire.to_b64(far), "num_examples": 10})
    size = sum(w.size for w in far)
    assert result["rejected"] == f"update norm {size**0.5:.6g} is past max_update_norm 20"
    metrics = _aggregate(session, "s-norm")  # an honest client's update stays well inside
    assert metrics["accepted"] == [1] and list(metrics["rejected"]) == ["0"]


def test_an_update_within_the_bounds_is_stored_as_received(session: dict[str, Any]) -> None:
    near = [w + np.float32(1e-3) for w in session["store"].for_session("s-norm").weights.get(0)]
    result = _invoke(session, "s-norm", {"weights": wire.to_b64(near), "num_examples": 10})
    assert result["stored"] is True and result["num_examples"] == 10 and "rejected" not in result


def test_fedavg_refuses_oversize_counts_without_overflow() -> None:
    fit = FitConfig(learning_rate=0.1, local_epochs=1, batch_size=8)
    honest = FitRes(1, [np.full(3, 2, np.float32)], 5, fit)
    oversize = FitRes(0, [np.ones(3, np.float32)], 2**63, fit)
    outcome = FedAvg().aggregate_fit(RoundContext(0, [np.zeros(3, np.float32)]), [oversize, honest], [])
    assert "past the limit" in outcome.rejected[0] and outcome.accepted == [1]
    assert outcome.weights is not None and np.array_equal(outcome.weights[0], honest.weights[0])
