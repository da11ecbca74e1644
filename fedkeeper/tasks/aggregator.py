"""``fl_server_aggregator``: aggregate round r's updates into round r+1's global weights.

Updates stream through the strategy one at a time (memory O(model)). An update with wrong
shapes, dtypes or non-finite values is rejected, logged and marked, and counts as that
client's failure; the rest are aggregated. Re-running for a finished round returns its metrics.
"""

from __future__ import annotations

import sys
from typing import Any

from fedkeeper.errors import InvalidUpdate, StoreError
from fedkeeper.learning.datasets import load_dataset
from fedkeeper.learning.training import evaluate
from fedkeeper.store.db import Store
from fedkeeper.strategies import make_strategy
from fedkeeper.tasks.common import SessionSettings, require


def handle(params: dict[str, Any]) -> dict[str, Any]:
    store = Store.from_bound(params)
    session_id = require(params, "session", str)
    round_number = require(params, "round", int)
    clients = [int(c) for c in require(params, "clients", list)]
    done = store.round(session_id, round_number).get("metrics")
    if done is not None:
        return dict(done)

    settings = SessionSettings.load(store, session_id)
    accepted: list[int] = []
    rejected: dict[str, str] = {}
    train_loss = train_accuracy = 0.0
    if not store.has_weights(session_id, round_number + 1):
        strategy = make_strategy(settings.server.strategy)
        strategy.begin(store.get_weights(session_id, round_number))
        for item in store.iter_updates(session_id, round_number, clients):
            if isinstance(item, InvalidUpdate):
                rejected[str(item).split(":")[0]] = str(item)
                continue
            try:
                strategy.accumulate(item.weights, item.num_examples)
            except InvalidUpdate as exc:
                print(f"rejected update of client {item.client}: {exc}", file=sys.stderr)
                store.mark_update(session_id, round_number, item.client, "rejected", str(exc))
                rejected[str(item.client)] = str(exc)
                continue
            store.mark_update(session_id, round_number, item.client, "accepted", "")
            accepted.append(item.client)
            train_loss += item.loss * item.num_examples
            train_accuracy += item.accuracy * item.num_examples
        if not accepted:
            raise StoreError(f"round {round_number}: no valid update among clients {clients}")
        examples = strategy.total_examples
        train_loss, train_accuracy = train_loss / examples, train_accuracy / examples
        store.put_weights(session_id, round_number + 1, strategy.finish())
    else:  # weights were written by an earlier attempt that died before recording metrics
        examples = 0

    dataset = load_dataset(settings.data)
    weights = store.get_weights(session_id, round_number + 1)
    loss, accuracy = evaluate(weights, dataset.x_test, dataset.y_test, settings.model, dataset.num_classes)
    metrics = {
        "round": round_number,
        "accuracy": float(accuracy),
        "loss": float(loss),
        "train_loss": float(train_loss),
        "train_accuracy": float(train_accuracy),
        "accepted": accepted,
        "rejected": rejected,
        "examples": int(examples),
    }
    store.finish_round(session_id, round_number, metrics)
    return metrics
