"""``fl_invoker_weights_update``: the bridge to clients reachable only by a synchronous call.

The keeper tracks *this* function's activation. It reads what the client needs from the store,
calls the client on its platform, validates the reply and writes the update to the store.
Target platforms and their credentials are bound at deploy time (``params["targets"]``); a
call names its target only by key.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from fedkeeper.function.catalog import CLIENT_FUNCTION
from fedkeeper.function.errors import PayloadTooLarge, ProviderError
from fedkeeper.function.invoke.registry import client_from_binding
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.tasks.common import (
    SessionSettings,
    correction,
    fitted_model,
    instructions,
    require,
    store_update,
)
from fedkeeper.function.tasks.contract import ClientJob
from fedkeeper.function.tasks.entry import BadRequest


def handle(params: dict[str, Any]) -> dict[str, Any]:
    db = Store.from_bound(params)
    session_id = require(params, "session", str)
    store = db.for_session(session_id)
    round_number = require(params, "round", int)
    client = require(params, "client", int)
    attempt = require(params, "attempt", int)
    target_key = require(params, "target", str)
    timeout_s = float(params.get("timeout_s", 180))
    targets = params.get("targets") or {}
    if target_key not in targets:
        raise BadRequest(f"target {target_key!r} is not bound to this invoker; redeploy with `main.py -d`")
    summary: dict[str, Any] = {"client": client, "round": round_number, "target": target_key}
    if store.updates.has(round_number, client):
        return {**summary, "stored": False, "reason": "an update for this round is already stored"}

    settings = SessionSettings.load(store)
    weights = store.weights.get(round_number)
    indices = store.partitions.get(client)
    job = client_job(store, settings, round_number, client, attempt, weights, indices)
    provider = client_from_binding(targets[target_key])
    with provider:
        inline = len(json.dumps(job)) <= provider.capabilities.max_request_bytes
        if not inline and not provider.capabilities.store_access:
            raise PayloadTooLarge(
                f"client {client}: the job is past {target_key}'s {provider.capabilities.max_request_bytes} "
                "byte request limit and that platform cannot reach the store"
            )
        # Past the platform's limit, weights go by reference: the client reads and writes the store.
        request: dict[str, Any] = (
            dict(job) if inline else {k: job[k] for k in ("session", "round", "client", "attempt")}
        )
        record = provider.invoke_sync(CLIENT_FUNCTION, request, timeout_s)
    summary["target_activation"] = record.activation_id
    if not record.ok:
        raise ProviderError(
            f"client {client} on {target_key} ({record.activation_id}): {record.error}",
            details={"target_activation": record.activation_id},
        )
    reply = record.result or {}
    if not inline:
        if not store.updates.has(round_number, client):
            raise ProviderError(f"client {client} on {target_key} succeeded but stored no update")
        return {**summary, "stored": True, **{k: reply.get(k) for k in ("num_examples", "loss", "accuracy")}}

    outcome = store_update(
        store,
        settings,
        round_number,
        client,
        reference=weights,
        partition_size=len(indices),
        weights=reply.get("weights"),
        num_examples=reply.get("num_examples"),
        loss=reply.get("loss"),
        accuracy=reply.get("accuracy"),
        attempt=attempt,
        activation_id=record.activation_id,
    )
    return {**summary, **outcome}


def client_job(
    store: SessionStore,
    settings: SessionSettings,
    round_number: int,
    client: int,
    attempt: int,
    weights: wire.Weights,
    indices: np.ndarray,
) -> ClientJob:
    """Everything ``client`` needs for the round in one call: weights, data, the round's instructions
    (in ``model`` for any trainer, in full in ``fit``) and the strategy's gradient correction."""
    fit = instructions(store, settings, round_number, client)
    job = ClientJob(
        session=store.id,
        round=round_number,
        client=client,
        attempt=attempt,
        weights=wire.to_b64(weights),
        model=fitted_model(settings.model, fit).model_dump(mode="json"),
        data={
            "dataset": settings.data.model_dump(mode="json"),
            "indices": indices.tolist(),
        },
        fit=fit.to_json(),
    )
    extra = correction(store, settings, round_number, client, fit, weights)
    if extra is not None:
        job["correction"] = wire.to_b64(extra)
    return job
