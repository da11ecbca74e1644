"""Compressed updates through the functions: the client stores with the session's codec, the
aggregator decodes while streaming, and a malformed compressed update is rejected with its reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from fedkeeper.function.config import Compression, FederatedLearning
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.updates import StoredUpdate
from fedkeeper.function.tasks.entry import run

Corrupt = Callable[[list[np.ndarray]], list[np.ndarray]]


def _scenario(compression: Any) -> dict[str, Any]:
    return FederatedLearning.model_validate(
        {
            "server_config": {"cluster": "local", "num_clients_per_round": 2, "compression": compression},
            "clients_info": {"total_num_clients": 2, "ow_clients_count": 2},
            "training_test_data": {"dataset": "digits"},
            "model_params": {"model": "mlp", "hidden_size": 16, "local_epochs": 1, "learning_rate": 0.05},
            "data_sampling": {"method": "iid", "seed": 1},
        }
    ).model_dump(mode="json", exclude={"mongo_config"})


@pytest.fixture
def db(mongo_url: str, mongo_db_name: str) -> Iterator[Store]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _tampered(session: SessionStore, client: int, corrupt: Corrupt) -> None:
    """Replace ``client``'s stored payload by a corrupted one with a valid checksum (a bad encoder)."""
    doc = session.store.db.updates.find_one({"session": session.id, "round": 0, "client": client})
    arrays = corrupt(wire.decode(session.store.blobs.get(doc["blob"])))
    session.store.db.updates.update_one(
        {"_id": doc["_id"]},
        {"$set": {"blob": session.store.blobs.put(wire.encode(arrays)), "checksum": wire.checksum(arrays)}},
    )


@pytest.mark.parametrize(
    ("compression", "corrupt", "reason"),
    [
        ("float16", lambda a: [a[0][:-1]], "float16 payload a0: 1209 values, expected 1210"),
        (
            "int8",
            lambda a: [a[0], np.array([1, np.inf, 1, 1], np.float32)],
            "int8 payload a1 (scales): contains",
        ),
        (
            {"codec": "topk", "fraction": 0.1},
            lambda a: [a[0], a[1], np.zeros_like(a[2]), a[3]],
            "topk payload a2 (indices) of array 0: not strictly increasing",
        ),
    ],
    ids=["float16", "int8", "topk"],
)
def test_aggregator_decodes_compressed_updates_and_rejects_a_malformed_one_with_its_reason(
    db: Store, compression: Any, corrupt: Corrupt, reason: str
) -> None:
    bound = {"store": {"url": db.url, "database": db.db.name}}
    session = db.for_session("s1")
    session.record.create({"config_digest": "d", "scenario": _scenario(compression)})
    assert "error" not in run("fl_server_init", {"session": "s1"}, bound)
    for client in (0, 1):
        reply = run("fl_client", {"session": "s1", "round": 0, "client": client, "attempt": 1}, bound)
        assert reply.get("stored") is True, reply
    _tampered(session, 1, corrupt)
    session.rounds.open(0, [0, 1])
    session.rounds.close(0, [0, 1])
    metrics = run("fl_server_aggregator", {"session": "s1", "round": 0, "clients": [0, 1]}, bound)
    assert "error" not in metrics, metrics
    assert metrics["accepted"] == [0]
    assert metrics["rejected"]["1"].startswith(reason), metrics["rejected"]
    docs = {d["client"]: d for d in db.db.updates.find({"session": "s1", "round": 0})}
    assert docs[1]["status"] == "rejected" and docs[1]["reason"].startswith(reason)
    assert metrics["update_bytes"] == docs[0]["payload_bytes"] + docs[1]["payload_bytes"]
    # per client, and the weights every client read (what the keeper prices: host/costs.py)
    assert metrics["update_bytes_by_client"] == {str(c): docs[c]["payload_bytes"] for c in (0, 1)}
    weights_doc = db.db.weights.find_one({"session": "s1", "round": 0})
    assert weights_doc is not None and metrics["weights_bytes"] == weights_doc["blob"]["size"] > 0
    # FedAvg of the one accepted update is that update, decoded against round 0's weights.
    codec = Compression.model_validate(compression).build()
    (decoded,) = session.updates.stream(0, [0], codec=codec, reference=session.weights.get(0))
    assert isinstance(decoded, StoredUpdate)
    for got, want in zip(session.weights.get(1), decoded.weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(session.weights.get(1)[0], session.weights.get(0)[0])  # it did train
