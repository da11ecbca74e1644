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
from fedkeeper.function.store.db import Store
from fedkeeper.function.store.statuses import UpdateStatus
from fedkeeper.function.store.updates import UnreadableUpdate
from fedkeeper.function.strategies import make_strategy
from fedkeeper.function.tasks.common import SessionSettings, require


def handle(params: dict[str, Any]) -> dict[str, Any]:
    db = Store.from_bound(params)
    session_id = require(params, "session", str)
    store = db.for_session(session_id)
    round_number = require(params, "round", int)
    clients = [int(c) for c in require(params, "clients", list)]
    done = store.rounds.get(round_number).get("metrics")
    if done is not None:
        return dict(done)

    settings = SessionSettings.load(store)
    # An earlier attempt may have died after writing the weights: then only the metrics are missing.
    if not store.weights.has(round_number + 1):
        strategy = make_strategy(settings.server.strategy)
        strategy.begin(store.weights.get(round_number))
        for item in store.updates.stream(round_number, clients):
            if isinstance(item, UnreadableUpdate):
                store.updates.mark(round_number, item.client, UpdateStatus.REJECTED, item.reason)
                continue
            try:
                strategy.accumulate(item.weights, item.num_examples)
            except InvalidUpdate as exc:
                print(f"rejected update of client {item.client}: {exc}", file=sys.stderr)
                store.updates.mark(round_number, item.client, UpdateStatus.REJECTED, str(exc))
                continue
            store.updates.mark(round_number, item.client, UpdateStatus.ACCEPTED, "")
        if strategy.accepted == 0:
            raise StoreError(f"round {round_number}: no valid update among clients {clients}")
        store.weights.put(round_number + 1, strategy.finish())

    marks = store.updates.marks(round_number, clients)
    accepted = [m for m in marks if m.get("status") == UpdateStatus.ACCEPTED]
    rejected = {
        str(m["client"]): m.get("reason", "") for m in marks if m.get("status") == UpdateStatus.REJECTED
    }
    examples = sum(int(m["num_examples"]) for m in accepted)
    train_loss = sum(m["loss"] * m["num_examples"] for m in accepted) / max(examples, 1)
    train_accuracy = sum(m["accuracy"] * m["num_examples"] for m in accepted) / max(examples, 1)

    dataset = load_dataset(settings.data)
    weights = store.weights.get(round_number + 1)
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
    store.rounds.finish(round_number, metrics)
    return metrics
