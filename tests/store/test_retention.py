"""Retention: old rounds' updates and global weights leave the store, GridFS chunks included."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.retention import Pruned, prune

CLIENTS = 3


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[SessionStore]:
    s = Store(mongo_url, mongo_db_name)
    s.ensure_indexes()
    s.blobs.inline_limit = 0  # every payload in GridFS, as a full-MNIST CNN's are
    session = s.for_session("s1")
    session.record.create({"config_digest": "x", "scenario": {}})
    yield session
    s.db.client.drop_database(mongo_db_name)


def _weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=(8,)).astype(np.float32)]


def _rounds(store: SessionStore, first: int, last: int, keep: int | str) -> list[Pruned]:
    """Rounds ``first..last`` as the functions and the keeper write them, pruning after each."""
    if first == 0:
        store.weights.put(0, _weights(0))
    pruned = []
    for r in range(first, last + 1):
        store.rounds.open(r, list(range(CLIENTS)))
        for client in range(CLIENTS):
            store.updates.put(r, client, _weights(100 * r + client), 10, 0.5, 0.8)
        store.rounds.close(r, list(range(CLIENTS)))
        store.weights.put(r + 1, _weights(r + 1))
        store.rounds.finish(r, {"round": r})
        pruned.append(prune(store, r, keep))  # type: ignore[arg-type]
    return pruned


def _gridfs(store: SessionStore) -> tuple[int, int, int]:
    """Files, their bytes, and chunks that belong to no file."""
    db = store.store.db
    files = list(db["blobs.files"].find({}, {"length": 1}))
    ids = {f["_id"] for f in files}
    orphans = db["blobs.chunks"].count_documents({"files_id": {"$nin": list(ids)}})
    return len(files), sum(int(f["length"]) for f in files), orphans


def _with_payload(store: SessionStore, collection: str) -> list[int]:
    docs = store.store.db[collection].find({"session": "s1", "blob": {"$ne": None}}, {"round": 1})
    return sorted({int(d["round"]) for d in docs})


def test_keeping_two_rounds_leaves_their_updates_and_the_weights_around_them(store: SessionStore) -> None:
    pruned = _rounds(store, 0, 4, keep=2)
    assert pruned == [Pruned(0, 0), Pruned(0, 0), Pruned(CLIENTS, 1), Pruned(CLIENTS, 1), Pruned(CLIENTS, 1)]
    assert _with_payload(store, "updates") == [3, 4]
    assert _with_payload(store, "weights") == [3, 4, 5]  # round 3's start, round 4's, the newest
    assert _gridfs(store)[0] == 2 * CLIENTS + 3 and _gridfs(store)[2] == 0
    np.testing.assert_array_equal(store.weights.get(5)[0], _weights(5)[0])
    # An old update keeps its bookkeeping, without weights.
    old = store.store.db.updates.find_one({"session": "s1", "round": 0, "client": 1})
    assert old["blob"] is None and old["pruned_at"] is not None
    assert (old["num_examples"], old["loss"], old["accuracy"], old["status"]) == (10, 0.5, 0.8, "received")


def test_the_store_stops_growing_once_the_window_is_full(store: SessionStore) -> None:
    _rounds(store, 0, 3, keep=2)
    after_four = _gridfs(store)
    _rounds(store, 4, 9, keep=2)
    assert _gridfs(store) == after_four


def test_keep_all_prunes_nothing(store: SessionStore) -> None:
    assert set(_rounds(store, 0, 3, keep="all")) == {Pruned(0, 0)}
    assert _with_payload(store, "updates") == [0, 1, 2, 3]
    assert _gridfs(store)[0] == 4 * CLIENTS + 5


def test_a_prune_cut_short_after_deleting_a_file_is_finished_by_the_next(store: SessionStore) -> None:
    _rounds(store, 0, 2, keep="all")
    doc = store.store.db.updates.find_one({"session": "s1", "round": 0, "client": 0})
    store.store.blobs.delete(doc["blob"])  # the file went, the crash came before the reference did
    assert prune(store, 2, 2) == Pruned(CLIENTS, 1)
    assert prune(store, 2, 2) == Pruned(0, 0)
    assert _with_payload(store, "updates") == [1, 2]
    files, _, orphans = _gridfs(store)
    assert (files, orphans) == (2 * CLIENTS + 3, 0)


def test_other_sessions_are_untouched(store: SessionStore) -> None:
    other = store.store.for_session("s2")
    other.updates.put(0, 0, _weights(7), 10, 0.5, 0.8)
    other.weights.put(0, _weights(7))
    _rounds(store, 0, 3, keep=1)
    assert store.store.db.updates.find_one({"session": "s2"})["blob"] is not None
    assert other.weights.has(0)
