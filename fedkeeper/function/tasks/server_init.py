"""``fl_server_init``: a session's round-0 global weights and the clients' data partitions.

With federated evaluation on, it also partitions the test split once (the clients' held-out
data, :func:`~fedkeeper.function.tasks.common.held_out`), so a test split too small for it fails
the session here, in one line, rather than every evaluation.

The session is marked initialised only after both are written, so an init that dies half-way is
run again (each write is idempotent) rather than taken as done.
"""

from __future__ import annotations

from typing import Any

from fedkeeper.function.learning.architecture import initial_weights
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.partition import partition
from fedkeeper.function.store.db import Store
from fedkeeper.function.tasks.common import SessionSettings, held_out, require


def handle(params: dict[str, Any]) -> dict[str, Any]:
    db = Store.from_bound(params)
    session_id = require(params, "session", str)
    store = db.for_session(session_id)
    settings = SessionSettings.load(store)
    dataset = load_dataset(settings.data)
    weights = initial_weights(settings.model, dataset.num_features, dataset.num_classes)
    created = store.weights.put(0, weights)
    parts = partition(dataset.y_train, settings.total_clients, settings.sampling)
    if settings.server.strategy.build().fraction_evaluate > 0:
        held_out(settings.data, settings.sampling, settings.total_clients)
    store.partitions.put(parts)
    store.record.mark_initialised()
    sizes = store.partitions.sizes()
    return {
        "session": session_id,
        "created": created,
        "num_params": int(sum(w.size for w in weights)),
        "partition_sizes": [sizes[c] for c in sorted(sizes)],
        "test_examples": len(dataset.y_test),
    }
