"""``fl_client``: one local training run.

Direct mode (``{"session","round","client","attempt"}``, store bound at deploy time): reads the
round's weights and the client's partition from the store and writes the update itself.
Inline mode (a :class:`~fedkeeper.function.tasks.contract.ClientJob`): everything arrives in the call and
the update goes back in the reply; no database credentials needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedkeeper.function.config import ModelParams, TrainingTestData
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.training import LocalResult, train_local
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import Store
from fedkeeper.function.tasks.common import SessionSettings, check_indices, require, store_update
from fedkeeper.function.tasks.contract import ClientReply
from fedkeeper.function.tasks.entry import BadRequest


def train_partition(
    weights: wire.Weights,
    spec: TrainingTestData,
    model: ModelParams,
    indices: np.ndarray,
    client: int,
    round_number: int,
) -> LocalResult:
    dataset = load_dataset(spec)
    rows = check_indices(np.asarray(indices, dtype=np.int64), len(dataset.y_train))
    # Each (client, round) shuffles differently, yet a retried attempt repeats the same run.
    seed = model.seed * 1_000_003 + round_number * 10_007 + client
    return train_local(
        weights, dataset.x_train[rows], dataset.y_train[rows], model, dataset.num_classes, seed=seed
    )


def _inline(params: dict[str, Any]) -> ClientReply:
    client = require(params, "client", int)
    round_number = require(params, "round", int)
    data = require(params, "data", dict)
    try:
        spec = TrainingTestData.model_validate(data.get("dataset"))
        model = ModelParams.model_validate(require(params, "model", dict))
    except ValueError as exc:
        raise BadRequest(f"bad data or model settings: {str(exc).splitlines()[0]}") from None
    indices = require(data, "indices", list)
    weights = wire.from_b64(require(params, "weights", str))
    result = train_partition(weights, spec, model, np.asarray(indices), client, round_number)
    wire.validate_like(result.weights, weights)
    return ClientReply(
        client=client,
        round=round_number,
        weights=wire.to_b64(result.weights),
        num_examples=result.num_examples,
        loss=result.loss,
        accuracy=result.accuracy,
    )


def _direct(params: dict[str, Any]) -> dict[str, Any]:
    db = Store.from_bound(params)
    session_id = require(params, "session", str)
    store = db.for_session(session_id)
    round_number = require(params, "round", int)
    client = require(params, "client", int)
    attempt = require(params, "attempt", int)
    summary: dict[str, Any] = {"client": client, "round": round_number}
    if store.updates.has(round_number, client):
        return {**summary, "stored": False, "reason": "an update for this round is already stored"}
    settings = SessionSettings.load(store)
    weights = store.weights.get(round_number)
    partition = store.partitions.get(client)
    result = train_partition(weights, settings.data, settings.model, partition, client, round_number)
    outcome = store_update(
        store,
        settings,
        round_number,
        client,
        reference=weights,
        partition_size=len(partition),
        weights=result.weights,
        num_examples=result.num_examples,
        loss=result.loss,
        accuracy=result.accuracy,
        attempt=attempt,
    )
    return {**summary, **outcome}


def handle(params: dict[str, Any]) -> dict[str, Any]:
    if "weights" in params:
        return dict(_inline(params))
    return _direct(params)
