"""The four functions' core, called through the same entry adapter every platform uses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from fedkeeper.function.config import FederatedLearning, ModelParams, TrainingTestData
from fedkeeper.function.errors import PlatformUnavailable, Unavailable
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.global_weights import GlobalWeights
from fedkeeper.function.store.partitions import Partitions
from fedkeeper.function.store.sessions import SessionRecord
from fedkeeper.function.tasks.entry import run

SCENARIO = FederatedLearning.model_validate(
    {
        "server_config": {"cluster": "local", "num_clients_per_round": 2},
        "clients_info": {"total_num_clients": 3, "ow_clients_count": 3},
        "training_test_data": {"dataset": "digits"},
        "model_params": {"model": "mlp", "hidden_size": 16, "local_epochs": 1, "learning_rate": 0.05},
        "data_sampling": {"method": "iid", "seed": 1},
    }
)


@pytest.fixture
def bound(mongo_url: str, mongo_db_name: str) -> dict[str, Any]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    store.for_session("s1").record.create(
        {
            "config_digest": "d",
            "scenario": SCENARIO.model_dump(mode="json", exclude={"mongo_config"}),
        }
    )
    yield {"store": {"url": mongo_url, "database": mongo_db_name}}
    store.db.client.drop_database(mongo_db_name)


def _store(bound: dict[str, Any]) -> SessionStore:
    """Session ``s1`` in the store the functions are bound to."""
    return Store(bound["store"]["url"], bound["store"]["database"]).for_session("s1")


def test_server_init_creates_round_zero_and_disjoint_partitions_idempotently(bound: dict[str, Any]) -> None:
    first = run("fl_server_init", {"session": "s1"}, bound)
    again = run("fl_server_init", {"session": "s1"}, bound)
    assert "error" not in first, first
    assert first["created"] is True and again["created"] is False
    store = _store(bound)
    parts = [store.partitions.get(c) for c in range(3)]
    assert sum(len(p) for p in parts) == sum(first["partition_sizes"])
    assert len(set(np.concatenate(parts).tolist())) == sum(len(p) for p in parts)
    assert [w.shape for w in store.weights.get(0)] == [(64, 16), (16,), (16, 10), (10,)]


def test_init_that_dies_after_the_weights_is_not_taken_as_initialised(bound: dict[str, Any]) -> None:
    store = _store(bound)
    # 3 clients x 1000 shards each is more shards than digits has examples: partitioning fails
    # after the round-0 weights are written, as a crash between the two writes would.
    broken = SCENARIO.model_dump(mode="json", exclude={"mongo_config"})
    broken["data_sampling"] = {"method": "shards", "shards_per_client": 1000}
    store.store.db.sessions.update_one({"_id": "s1"}, {"$set": {"scenario": broken}})
    reply = run("fl_server_init", {"session": "s1"}, bound)
    assert "error" in reply and store.weights.has(0) and store.partitions.sizes() == {}
    assert store.record.initialised() is False

    store.store.db.sessions.update_one(
        {"_id": "s1"}, {"$set": {"scenario": SCENARIO.model_dump(mode="json", exclude={"mongo_config"})}}
    )
    again = run("fl_server_init", {"session": "s1"}, bound)
    assert again["created"] is False and len(again["partition_sizes"]) == 3
    assert store.record.initialised() is True


def test_client_direct_mode_stores_its_update_exactly_once(bound: dict[str, Any]) -> None:
    run("fl_server_init", {"session": "s1"}, bound)
    call = {"session": "s1", "round": 0, "client": 1, "attempt": 1}
    first = run("fl_client", call, bound)
    second = run("fl_client", {**call, "attempt": 2}, bound)
    assert first["stored"] is True and first["num_examples"] > 0
    assert second["stored"] is False
    assert _store(bound).updates.clients(0) == {1}


def test_client_inline_mode_needs_no_store_and_returns_weights(bound: dict[str, Any]) -> None:
    run("fl_server_init", {"session": "s1"}, bound)
    store = _store(bound)
    weights = store.weights.get(0)
    job = {
        "session": "s1",
        "round": 0,
        "client": 0,
        "attempt": 1,
        "weights": wire.to_b64(weights),
        "model": SCENARIO.model_params.model_dump(mode="json"),
        "data": {
            "dataset": SCENARIO.training_test_data.model_dump(mode="json"),
            "indices": store.partitions.get(0).tolist(),
        },
    }
    reply = run("fl_client", job)  # no binding at all
    assert "error" not in reply, reply
    update = wire.from_b64(reply["weights"])
    wire.validate_like(update, weights)
    assert reply["num_examples"] == len(job["data"]["indices"])
    assert not np.allclose(update[0], weights[0])


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ({"weights": "not base64!"}, "base64"),
        ({"weights": wire.to_b64([np.zeros(3, np.float32)])}, "arrays"),
        ({"client": "one"}, "'client' must be int"),
        ({"data": {"dataset": {"dataset": "digits"}, "indices": [0, 10**9]}}, "indices must lie"),
        ({"data": {"dataset": {"dataset": "cifar"}, "indices": [0]}}, "bad data"),
        ({"fit": {"learning_rate": -1, "local_epochs": 1, "batch_size": 8}}, "learning_rate must be > 0"),
        ({"model": {"model": "transformer"}}, "bad data, model or fit"),
    ],
)
def test_client_rejects_malformed_jobs_with_one_line_errors(
    bound: dict[str, Any], mutation: dict[str, Any], message: str
) -> None:
    run("fl_server_init", {"session": "s1"}, bound)
    store = _store(bound)
    job = {
        "session": "s1",
        "round": 0,
        "client": 0,
        "attempt": 1,
        "weights": wire.to_b64(store.weights.get(0)),
        "model": SCENARIO.model_params.model_dump(mode="json"),
        "data": {"dataset": {"dataset": "digits"}, "indices": [0, 1, 2]},
        **mutation,
    }
    reply = run("fl_client", job)
    assert message in reply["error"]
    assert "\n" not in reply["error"]


def test_aggregator_rejects_malformed_updates_and_averages_the_rest(bound: dict[str, Any]) -> None:
    run("fl_server_init", {"session": "s1"}, bound)
    store = _store(bound)
    for client in (0, 1):
        assert run("fl_client", {"session": "s1", "round": 0, "client": client, "attempt": 1}, bound)[
            "stored"
        ]
    poisoned = [w.copy() for w in store.weights.get(0)]
    poisoned[0][0, 0] = np.nan
    store.updates.put(0, 2, poisoned, 50, 1.0, 0.1)
    store.rounds.open(0, [0, 1, 2])
    store.rounds.close(0, [0, 1, 2])
    metrics = run("fl_server_aggregator", {"session": "s1", "round": 0, "clients": [0, 1, 2]}, bound)
    assert "error" not in metrics, metrics
    assert metrics["accepted"] == [0, 1]
    assert "2" in metrics["rejected"] and "NaN" in metrics["rejected"]["2"]
    assert store.store.db.updates.find_one({"session": "s1", "round": 0, "client": 2})["status"] == "rejected"
    # FedAvg of the two accepted updates, weighted by their example counts
    updates = {u.client: u for u in store.updates.stream(0, [0, 1])}
    n0, n1 = updates[0].num_examples, updates[1].num_examples
    expected = (updates[0].weights[0] * n0 + updates[1].weights[0] * n1) / (n0 + n1)
    np.testing.assert_allclose(store.weights.get(1)[0], expected, atol=1e-6)
    again = run("fl_server_aggregator", {"session": "s1", "round": 0, "clients": [0, 1, 2]}, bound)
    assert again["accuracy"] == metrics["accuracy"]  # a revived aggregator returns the same round


def test_functions_without_store_binding_fail_clearly() -> None:
    reply = run("fl_server_init", {"session": "s1"})
    assert reply["error"].startswith("StoreError: function has no store binding")


def test_invoker_refuses_targets_not_bound_at_deploy(bound: dict[str, Any]) -> None:
    call = {"session": "s1", "round": 0, "client": 0, "attempt": 1, "target": "google/evil"}
    reply = run("fl_invoker_weights_update", call, {**bound, "targets": {}})
    assert "not bound to this invoker" in reply["error"]


@pytest.mark.parametrize(
    ("platform", "settings"),
    [
        ("google", {"project": "p", "allow_unauthenticated": True}),
        ("aws", {"region": "eu-west-1", "access_key_id": "AKIDEXAMPLE", "secret_access_key": "x" * 40}),
    ],
)
def test_invoker_reports_an_unreachable_target_as_an_outage_of_that_platform(
    bound: dict[str, Any], platform: str, settings: dict[str, Any]
) -> None:
    run("fl_server_init", {"session": "s1"}, bound)
    with socket.socket() as probe:  # a port just released: nothing listens there
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    endpoint = {"google": "api_endpoint", "aws": "endpoint_url"}[platform]
    binding = {"platform": platform, "cluster": "down", "settings": {**settings, endpoint: dead}}
    call = {"session": "s1", "round": 0, "client": 0, "attempt": 1, "target": f"{platform}/down"}
    reply = run("fl_invoker_weights_update", call, {**bound, "targets": {f"{platform}/down": binding}})
    assert reply["error"].startswith("PlatformUnavailable: "), reply
    outage = Unavailable.in_result({"error": reply["error"]}, f"{platform}/down")  # all OpenWhisk keeps
    assert isinstance(outage, PlatformUnavailable) and outage.what == f"{platform}/down"
    assert reply["unavailable"] == f"{platform}/down"  # where a platform keeps the whole result


def test_mlp_weights_have_keras_dense_layout() -> None:
    from fedkeeper.function.learning.architecture import initial_weights

    params = ModelParams(hidden_size=5)
    shapes = [w.shape for w in initial_weights(params, 64, 10)]
    assert shapes == [(64, 5), (5,), (5, 10), (10,)]
    assert TrainingTestData().dataset == "digits"


def test_aggregator_revived_after_writing_weights_reports_the_same_round(bound: dict[str, Any]) -> None:
    run("fl_server_init", {"session": "s1"}, bound)
    for client in (0, 1, 2):
        run("fl_client", {"session": "s1", "round": 0, "client": client, "attempt": 1}, bound)
    store = _store(bound)
    store.rounds.open(0, [0, 1, 2])
    store.rounds.close(0, [0, 1, 2])
    first = run("fl_server_aggregator", {"session": "s1", "round": 0, "clients": [0, 1, 2]}, bound)
    # the first attempt died after writing round 1's weights, before recording the metrics
    store.store.db.rounds.update_one(
        {"session": "s1", "round": 0}, {"$unset": {"metrics": ""}, "$set": {"status": "closed"}}
    )
    revived = run("fl_server_aggregator", {"session": "s1", "round": 0, "clients": [0, 1, 2]}, bound)
    assert revived == first


MANAGING_WITHOUT_TENSORFLOW = """
import json, sys
from fedkeeper.function.store.db import Store
from fedkeeper.function.tasks.entry import run

bound = json.loads(sys.argv[1])
init = run("fl_server_init", {"session": "s1"}, bound)
store = Store(bound["store"]["url"], bound["store"]["database"]).for_session("s1")
start = store.weights.get(0)
for client in (0, 1):
    store.updates.put(0, client, [w + 0.01 * (client + 1) for w in start], 10, 1.0, 0.5)
store.rounds.open(0, [0, 1])
store.rounds.close(0, [0, 1])
metrics = run("fl_server_aggregator", {"session": "s1", "round": 0, "clients": [0, 1]}, bound)
heavy = sorted(m for m in ("tensorflow", "keras", "sklearn") if m in sys.modules)
print(json.dumps({"init": init, "metrics": metrics, "imported": heavy}))
"""


def test_server_init_and_aggregator_run_without_importing_tensorflow(bound: dict[str, Any]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", MANAGING_WITHOUT_TENSORFLOW, json.dumps(bound)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    assert "error" not in result["init"] and "error" not in result["metrics"], result
    assert result["metrics"]["accepted"] == [0, 1] and 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert result["imported"] == []


def test_a_warm_client_stores_exactly_the_update_a_cold_worker_would(bound: dict[str, Any]) -> None:
    from fedkeeper.function.learning.datasets import clear_cache
    from fedkeeper.function.learning.models import clear_model_cache
    from fedkeeper.function.tasks.client import warm_inputs

    run("fl_server_init", {"session": "s1"}, bound)
    for client in (0, 2, 1):  # client 1 on a worker that served the others first
        run("fl_client", {"session": "s1", "round": 0, "client": client, "attempt": 1}, bound)
    updates = _store(bound).store.db.updates
    warm = updates.find_one({"session": "s1", "round": 0, "client": 1})
    updates.delete_one({"_id": warm["_id"]})
    warm_inputs.clear(), clear_model_cache(), clear_cache()  # a new worker
    run("fl_client", {"session": "s1", "round": 0, "client": 1, "attempt": 2}, bound)
    cold = updates.find_one({"session": "s1", "round": 0, "client": 1})
    assert cold["checksum"] == warm["checksum"] and cold["loss"] == warm["loss"]


def test_a_warm_client_reads_settings_weights_and_partition_once(
    bound: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedkeeper.function.tasks.client import warm_inputs

    run("fl_server_init", {"session": "s1"}, bound)
    warm_inputs.clear()
    reads: list[str] = []
    for part in (SessionRecord, GlobalWeights, Partitions):
        method = part.get
        monkeypatch.setattr(
            part, "get", lambda self, *a, _m=method, _n=part.__name__: reads.append(_n) or _m(self, *a)
        )
    for attempt in (1, 2):  # the second attempt finds the update stored and trains nothing
        for client in (0, 1, 2):
            run("fl_client", {"session": "s1", "round": 0, "client": client, "attempt": attempt}, bound)
    run("fl_client", {"session": "s1", "round": 0, "client": 0, "attempt": 3}, bound)
    assert sorted(reads) == ["GlobalWeights"] + ["Partitions"] * 3 + ["SessionRecord"]


def test_warm_inputs_are_kept_per_database(bound: dict[str, Any], mongo_url: str) -> None:
    """The same session id in another database is another session: its own model, weights, data."""
    other = {"store": {"url": mongo_url, "database": f"{bound['store']['database']}_b"}}
    wider = SCENARIO.model_dump(mode="json", exclude={"mongo_config"})
    wider["model_params"]["hidden_size"] = 24
    _store(other).record.create({"config_digest": "d", "scenario": wider})
    try:
        for where in (bound, other):
            run("fl_server_init", {"session": "s1"}, where)
            run("fl_client", {"session": "s1", "round": 0, "client": 0, "attempt": 1}, where)
        updates = [next(_store(where).updates.stream(0, [0])) for where in (bound, other)]
        assert [u.weights[0].shape for u in updates] == [(64, 16), (64, 24)]  # type: ignore[union-attr]
    finally:
        _store(other).store.db.client.drop_database(other["store"]["database"])
