"""``fl_server_aggregator``: aggregate round r's updates into round r+1's global weights.

Updates stream through the strategy one at a time (memory O(model)). An update with wrong
shapes, dtypes or non-finite values is rejected, logged and marked, and counts as that
client's failure; the rest are aggregated. Re-running for a finished round returns its metrics.
"""

from __future__ import annotations

import sys
from typing import Any

from fedkeeper.function.errors import InvalidUpdate, StoreError
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.evaluation import evaluate
from fedkeeper.function.store.db import Store, UnreadableUpdate
from fedkeeper.function.strategies import make_strategy
from fedkeeper.function.tasks.common import SessionSettings, require


def handle(params: dict[str, Any]) -> dict[str, Any]:
    store = Store.from_bound(params)
    session_id = require(params, "session", str)
    round_number = require(params, "round", int)
    clients = [int(c) for c in require(params, "clients", list)]
    done = store.round(session_id, round_number).get("metrics")
    if done is not None:
        return dict(done)

    settings = SessionSettings.load(store, session_id)
    # An earlier attempt may have died after writing the weights: then only the metrics are missing.
    if not store.has_weights(session_id, round_number + 1):
        strategy = make_strategy(settings.server.strategy)
        strategy.begin(store.get_weights(session_id, round_number))
        for item in store.iter_updates(session_id, round_number, clients):
            if isinstance(item, UnreadableUpdate):
                store.mark_update(session_id, round_number, item.client, "rejected", item.reason)
                continue
            try:
                strategy.accumulate(item.weights, item.num_examples)
            except InvalidUpdate as exc:
                print(f"rejected update of client {item.client}: {exc}", file=sys.stderr)
                store.mark_update(session_id, round_number, item.client, "rejected", str(exc))
                continue
            store.mark_update(session_id, round_number, item.client, "accepted", "")
        if strategy.accepted == 0:
            raise StoreError(f"round {round_number}: no valid update among clients {clients}")
        store.put_weights(session_id, round_number + 1, strategy.finish())

    marks = store.update_marks(session_id, round_number, clients)
    accepted = [m for m in marks if m.get("status") == "accepted"]
    rejected = {str(m["client"]): m.get("reason", "") for m in marks if m.get("status") == "rejected"}
    examples = sum(int(m["num_examples"]) for m in accepted)
    train_loss = sum(m["loss"] * m["num_examples"] for m in accepted) / max(examples, 1)
    train_accuracy = sum(m["accuracy"] * m["num_examples"] for m in accepted) / max(examples, 1)

    dataset = load_dataset(settings.data)
    weights = store.get_weights(session_id, round_number + 1)
    loss, accuracy = evaluate(weights, dataset.x_test, dataset.y_test, settings.model, dataset.num_classes)
    metrics = {
        "round": round_number,
        "accuracy": float(accuracy),
        "loss": float(loss),
        "train_loss": float(train_loss),
        "train_accuracy": float(train_accuracy),
        "accepted": [int(m["client"]) for m in accepted],
        "rejected": rejected,
        "examples": int(examples),
    }
    store.finish_round(session_id, round_number, metrics)
    return metrics
