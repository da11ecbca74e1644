"""The store against a real MongoDB wire-protocol server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fedkeeper.function.errors import InvalidUpdate, StoreError, StoreUnavailable
from fedkeeper.function.invoke.base import ActivationRecord, ActivationStatus
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.statuses import Phase
from fedkeeper.function.store.updates import StoredUpdate
from fedkeeper.host.ledger import SERVER, Ledger, LedgerEntry, LedgerStatus
from fedkeeper.host.store.embedded import EmbeddedMongo


def _weights(rng: np.random.Generator, scale: int = 1) -> list[np.ndarray]:
    return [rng.normal(size=(8 * scale, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]


def test_global_weights_round_trip_with_dtype_shape_and_checksum(store: SessionStore) -> None:
    w = _weights(np.random.default_rng(0))
    assert store.weights.put(0, w) is True
    assert store.weights.put(0, _weights(np.random.default_rng(1))) is False  # first write stands
    got = store.weights.get(0)
    assert [g.dtype for g in got] == [np.float32, np.float32]
    for a, b in zip(got, w, strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_past_15_mb_go_to_gridfs_and_come_back(store: SessionStore) -> None:
    big = [np.arange(5_000_000, dtype=np.float32)]  # 20 MB: a single document could not hold it
    store.weights.put(1, big)
    doc = store.store.db.weights.find_one({"session": "s1", "round": 1})
    assert "gridfs" in doc["blob"] and "inline" not in doc["blob"]
    np.testing.assert_array_equal(store.weights.get(1)[0], big[0])


def test_corrupted_weights_fail_their_checksum(store: SessionStore) -> None:
    store.weights.put(0, _weights(np.random.default_rng(0)))
    other = wire.encode(_weights(np.random.default_rng(5)))
    store.store.db.weights.update_one({"session": "s1", "round": 0}, {"$set": {"blob.inline": other}})
    with pytest.raises(StoreError, match="checksum"):
        store.weights.get(0)


def test_update_is_stored_once_per_session_round_client(store: SessionStore) -> None:
    rng = np.random.default_rng(0)
    assert store.updates.put(0, 3, _weights(rng), 10, 0.5, 0.8) is True
    assert store.updates.put(0, 3, _weights(rng), 99, 0.1, 0.9) is False
    assert store.store.db.updates.count_documents({"session": "s1", "round": 0, "client": 3}) == 1
    (only,) = list(store.updates.stream(0, [3]))
    assert isinstance(only, StoredUpdate) and only.num_examples == 10


def test_update_with_non_positive_examples_is_refused(store: SessionStore) -> None:
    with pytest.raises(InvalidUpdate, match="num_examples"):
        store.updates.put(0, 1, _weights(np.random.default_rng(0)), 0, 0.0, 0.0)
    assert store.updates.clients(0) == set()


def test_round_selection_is_recorded_once_and_close_freezes_included(store: SessionStore) -> None:
    assert store.rounds.open(0, [1, 2, 3]) == [1, 2, 3]
    assert store.rounds.open(0, [7, 8, 9]) == [1, 2, 3]  # a resumed keeper gets the original
    assert store.rounds.close(0, [3, 1]) == [1, 3]
    assert store.rounds.close(0, [1, 2, 3]) == [1, 3]  # first close wins


def test_partitions_are_idempotent(store: SessionStore) -> None:
    parts = [np.array([0, 2, 4]), np.array([1, 3])]
    store.partitions.put(parts)
    store.partitions.put([np.array([9]), np.array([8])])
    np.testing.assert_array_equal(store.partitions.get(0), [0, 2, 4])
    assert store.partitions.sizes() == {0: 3, 1: 2}


def test_session_phase_transitions_are_recorded_as_conditions(store: SessionStore) -> None:
    store.record.set_phase(Phase.RUNNING, "RoundsStarted")
    store.record.set_phase(Phase.SUCCEEDED, "TargetAccuracyReached", "0.95")
    doc = store.record.get()
    assert doc["phase"] == "Succeeded" and doc["completion_time"] is not None
    assert [c["reason"] for c in doc["conditions"]] == ["RoundsStarted", "TargetAccuracyReached"]
    store.record.advance_round(3)
    store.record.advance_round(2)  # never moves backwards
    assert store.record.get()["round"] == 3


def test_ledger_settles_each_attempt_once_and_keeps_counters(store: SessionStore) -> None:
    ledger = Ledger(store)
    entry = LedgerEntry("s1", 0, "fl_client", 4, 1, "openwhisk", "local", activation_id="a" * 32)
    assert ledger.submit(entry) is True
    assert ledger.submit(LedgerEntry("s1", 0, "fl_client", 4, 1, "openwhisk", "local")) is False
    record = ActivationRecord("a" * 32, ActivationStatus.SUCCESS, {}, start_ms=1000, end_ms=1600)
    ledger.settle(entry, LedgerStatus.SUCCESS, record)
    ledger.settle(entry, LedgerStatus.APPLICATION_ERROR, record, "late duplicate")  # ignored: already settled
    (stored,) = list(ledger.entries())
    assert stored.status == "success" and stored.duration_ms == 600
    assert store.record.get()["counters"] == {"active": 0, "succeeded": 1, "failed": 0}
    assert ledger.attempts(0, "fl_client", 4) == 1
    assert ledger.attempts(0, "fl_server_aggregator", SERVER) == 0


def test_a_batch_of_settlements_writes_what_single_ones_would_and_a_withdrawn_attempt_is_gone(
    store: SessionStore,
) -> None:
    ledger = Ledger(store)
    entries = [
        LedgerEntry("s1", 0, "fl_client", c, 1, "openwhisk", "local", activation_id=f"{c:032d}")
        for c in range(4)
    ]
    for entry in entries[:3]:
        ledger.submit(entry)
    record = ActivationRecord("x", ActivationStatus.SUCCESS, {}, start_ms=1000, end_ms=1250)
    with ledger.batched():
        ledger.submit(entries[3])  # the entry is written at once, its counter held back
        ledger.settle(entries[0], LedgerStatus.SUCCESS, record)
        ledger.settle(entries[1], LedgerStatus.SUCCESS, record)
        ledger.settle(entries[2], LedgerStatus.TIMED_OUT, error="no record after 301s")
        assert [e.status for e in ledger.entries()] == ["submitted"] * 4  # held back until the end
        assert store.record.get()["counters"]["active"] == 3
    assert store.record.get()["counters"] == {"active": 1, "succeeded": 2, "failed": 1}
    ledger.withdraw(entries[3])  # refused with 429: never an attempt
    stored = {e.client: e for e in ledger.entries()}
    assert [stored[c].status for c in (0, 1, 2)] == ["success", "success", "timed out"]
    assert stored[0].duration_ms == 250 and stored[2].error == "no record after 301s"
    assert 3 not in stored and ledger.attempts(0, "fl_client", 3) == 0
    assert store.record.get()["counters"] == {"active": 0, "succeeded": 2, "failed": 1}
    assert ledger.budgets(0, ["fl_client"], None) == {("fl_client", c): (1, 1) for c in (0, 1, 2)}


def test_every_keeper_query_is_served_by_an_index(store: SessionStore) -> None:
    """The queries the keeper repeats every poll must not scan a growing collection."""
    queries = {
        "activations": {"session": "s1", "round": 0, "status": "submitted"},
        "updates": {"session": "s1", "round": 0},
        "evaluations": {"session": "s1", "round": 0},
        "rounds": {"session": "s1", "round": 0},
        "weights": {"session": "s1", "round": 0},
        "partitions": {"session": "s1", "client": 0},
    }
    for collection, query in queries.items():
        plan = store.store.db.command(
            "explain", {"find": collection, "filter": query}, verbosity="queryPlanner"
        )
        assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"]), (collection, plan["queryPlanner"])


def test_a_mongodb_that_stopped_is_a_one_line_store_unavailable_without_its_password() -> None:
    with EmbeddedMongo(":memory:") as server:
        url = server.url.replace("mongodb://", "mongodb://fk:hunter2@")
    session = Store(url, "fk_gone").for_session("s1")  # the server is stopped: every query meets an outage
    for query in (session.record.get, lambda: Ledger(session).open_entries(0)):
        with pytest.raises(StoreUnavailable) as caught:
            query()
        message = str(caught.value)
        assert "\n" not in message and "hunter2" not in message and "is unreachable" in message
        assert caught.value.details == {"unavailable": "mongodb", "outage": "StoreUnavailable"}


def test_a_session_handle_sees_only_its_own_session(store: SessionStore) -> None:
    other = store.store.for_session("s2")
    other.record.create({"scenario": {}})
    rng = np.random.default_rng(0)
    other.updates.put(0, 3, _weights(rng), 10, 0.5, 0.8)
    other.rounds.open(0, [3])
    assert store.updates.clients(0) == set() and other.updates.clients(0) == {3}
    assert store.rounds.all() == [] and [r["round"] for r in other.rounds.all()] == [0]
    assert other.record.get()["phase"] == Phase.PENDING and store.record.get()["_id"] == "s1"


def test_concurrent_claims_put_every_async_update_in_exactly_one_buffer(store: SessionStore) -> None:
    for dispatch in range(40):
        assert store.updates.put(
            dispatch, dispatch % 4, [np.ones(3, dtype=np.float32)], 5, 1.0, 0.5, version=0
        )
    store.updates.reject(40, 1, "norm too large")  # a rejected update is never claimed

    def claim(version: int) -> list[int]:
        return [int(m["round"]) for m in store.updates.claim(version, 5)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        buffers = list(pool.map(claim, range(8)))
    assert [len(b) for b in buffers] == [5] * 8
    assert sorted(d for b in buffers for d in b) == list(range(40))
    assert claim(8) == [] and store.updates.unclaimed() == 0
    assert sorted(claim(3)) == sorted(buffers[3])  # a version's buffer, claimed again, is the same
