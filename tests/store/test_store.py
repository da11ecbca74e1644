"""The store against a real MongoDB wire-protocol server."""

from __future__ import annotations

import numpy as np
import pytest

from fedkeeper.function.errors import InvalidUpdate, StoreError, StoreUnavailable
from fedkeeper.function.invoke.base import ActivationRecord, ActivationStatus
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import Store, StoredUpdate
from fedkeeper.host.ledger import SERVER, Ledger, LedgerEntry
from fedkeeper.host.store.embedded import EmbeddedMongo


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Store:
    s = Store(mongo_url, mongo_db_name)
    s.ensure_indexes()
    s.create_session({"_id": "s1", "config_digest": "x", "scenario": {}})
    yield s
    s.db.client.drop_database(mongo_db_name)


def _weights(rng: np.random.Generator, scale: int = 1) -> list[np.ndarray]:
    return [rng.normal(size=(8 * scale, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]


def test_global_weights_round_trip_with_dtype_shape_and_checksum(store: Store) -> None:
    w = _weights(np.random.default_rng(0))
    assert store.put_weights("s1", 0, w) is True
    assert store.put_weights("s1", 0, _weights(np.random.default_rng(1))) is False  # first write stands
    got = store.get_weights("s1", 0)
    assert [g.dtype for g in got] == [np.float32, np.float32]
    for a, b in zip(got, w, strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_past_15_mb_go_to_gridfs_and_come_back(store: Store) -> None:
    big = [np.arange(5_000_000, dtype=np.float32)]  # 20 MB: a single document could not hold it
    store.put_weights("s1", 1, big)
    doc = store.db.weights.find_one({"session": "s1", "round": 1})
    assert "gridfs" in doc["blob"] and "inline" not in doc["blob"]
    np.testing.assert_array_equal(store.get_weights("s1", 1)[0], big[0])


def test_corrupted_weights_fail_their_checksum(store: Store) -> None:
    store.put_weights("s1", 0, _weights(np.random.default_rng(0)))
    other = wire.encode(_weights(np.random.default_rng(5)))
    store.db.weights.update_one({"session": "s1", "round": 0}, {"$set": {"blob.inline": other}})
    with pytest.raises(StoreError, match="checksum"):
        store.get_weights("s1", 0)


def test_update_is_stored_once_per_session_round_client(store: Store) -> None:
    rng = np.random.default_rng(0)
    assert store.put_update("s1", 0, 3, _weights(rng), 10, 0.5, 0.8) is True
    assert store.put_update("s1", 0, 3, _weights(rng), 99, 0.1, 0.9) is False
    assert store.db.updates.count_documents({"session": "s1", "round": 0, "client": 3}) == 1
    (only,) = list(store.iter_updates("s1", 0, [3]))
    assert isinstance(only, StoredUpdate) and only.num_examples == 10


def test_update_with_non_positive_examples_is_refused(store: Store) -> None:
    with pytest.raises(InvalidUpdate, match="num_examples"):
        store.put_update("s1", 0, 1, _weights(np.random.default_rng(0)), 0, 0.0, 0.0)
    assert store.update_clients("s1", 0) == set()


def test_round_selection_is_recorded_once_and_close_freezes_included(store: Store) -> None:
    assert store.open_round("s1", 0, [1, 2, 3]) == [1, 2, 3]
    assert store.open_round("s1", 0, [7, 8, 9]) == [1, 2, 3]  # a resumed keeper gets the original
    assert store.close_round("s1", 0, [3, 1]) == [1, 3]
    assert store.close_round("s1", 0, [1, 2, 3]) == [1, 3]  # first close wins


def test_partitions_are_idempotent(store: Store) -> None:
    parts = [np.array([0, 2, 4]), np.array([1, 3])]
    store.put_partitions("s1", parts)
    store.put_partitions("s1", [np.array([9]), np.array([8])])
    np.testing.assert_array_equal(store.get_partition("s1", 0), [0, 2, 4])
    assert store.partition_sizes("s1") == {0: 3, 1: 2}


def test_session_phase_transitions_are_recorded_as_conditions(store: Store) -> None:
    store.set_phase("s1", "Running", "RoundsStarted")
    store.set_phase("s1", "Succeeded", "TargetAccuracyReached", "0.95")
    doc = store.session("s1")
    assert doc["phase"] == "Succeeded" and doc["completion_time"] is not None
    assert [c["reason"] for c in doc["conditions"]] == ["RoundsStarted", "TargetAccuracyReached"]
    store.advance_round("s1", 3)
    store.advance_round("s1", 2)  # never moves backwards
    assert store.session("s1")["round"] == 3


def test_ledger_settles_each_attempt_once_and_keeps_counters(store: Store) -> None:
    ledger = Ledger(store)
    entry = LedgerEntry("s1", 0, "fl_client", 4, 1, "openwhisk", "local", activation_id="a" * 32)
    assert ledger.submit(entry) is True
    assert ledger.submit(LedgerEntry("s1", 0, "fl_client", 4, 1, "openwhisk", "local")) is False
    record = ActivationRecord("a" * 32, ActivationStatus.SUCCESS, {}, start_ms=1000, end_ms=1600)
    ledger.settle(entry, "success", record)
    ledger.settle(entry, "application error", record, "late duplicate")  # ignored: already settled
    (stored,) = list(ledger.entries("s1"))
    assert stored.status == "success" and stored.duration_ms == 600
    assert store.session("s1")["counters"] == {"active": 0, "succeeded": 1, "failed": 0}
    assert ledger.attempts("s1", 0, "fl_client", 4) == 1
    assert ledger.attempts("s1", 0, "fl_server_aggregator", SERVER) == 0


def test_every_keeper_query_is_served_by_an_index(store: Store) -> None:
    """The queries the keeper repeats every poll must not scan a growing collection."""
    queries = {
        "activations": {"session": "s1", "round": 0, "status": "submitted"},
        "updates": {"session": "s1", "round": 0},
        "rounds": {"session": "s1", "round": 0},
        "weights": {"session": "s1", "round": 0},
        "partitions": {"session": "s1", "client": 0},
    }
    for collection, query in queries.items():
        plan = store.db.command("explain", {"find": collection, "filter": query}, verbosity="queryPlanner")
        assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"]), (collection, plan["queryPlanner"])


def test_a_mongodb_that_stopped_is_a_one_line_store_unavailable_without_its_password() -> None:
    with EmbeddedMongo(":memory:") as server:
        url = server.url.replace("mongodb://", "mongodb://fk:hunter2@")
    store = Store(url, "fk_gone")  # the server is stopped: every query meets an outage
    for query in (lambda: store.session("s1"), lambda: Ledger(store).open_entries("s1", 0)):
        with pytest.raises(StoreUnavailable) as caught:
            query()
        message = str(caught.value)
        assert "\n" not in message and "hunter2" not in message and "is unreachable" in message
        assert caught.value.details == {"unavailable": "mongodb", "outage": "StoreUnavailable"}
