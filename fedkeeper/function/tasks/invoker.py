"""``fl_invoker_weights_update``: the bridge to clients reachable only by a synchronous call.

The keeper tracks *this* function's activation. It reads what the client needs from the store,
calls the client on its platform, validates the reply and writes the update to the store; with
``"task": "evaluate"``, the same for an evaluation of the round's new weights on the client's
held-out data.
Target platforms and their credentials are bound at deploy time (``params["targets"]``); a
call names its target only by key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkeeper.function.catalog import CLIENT_FUNCTION, EVALUATE_NEEDS
from fedkeeper.function.catalog import platform as catalog_platform
from fedkeeper.function.errors import PayloadTooLarge, ProviderError
from fedkeeper.function.invoke.base import ActivationRecord, unsupported
from fedkeeper.function.invoke.registry import client_from_binding
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.statuses import Task
from fedkeeper.function.tasks.common import (
    SessionSettings,
    correction,
    fitted_model,
    held_out,
    instructions,
    require,
    store_evaluation,
    store_update,
    task_of,
)
from fedkeeper.function.tasks.contract import ClientJob, EvaluateJob
from fedkeeper.function.tasks.entry import BadRequest

KEYS = ("session", "round", "client", "attempt")  # what a client with store access is sent instead


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
    if task_of(params) is Task.EVALUATE:
        return _evaluate(store, round_number, client, attempt, targets[target_key], timeout_s, summary)
    if store.updates.has(round_number, client):
        return {**summary, "stored": False, "reason": "an update for this round is already stored"}

    settings = SessionSettings.load(store)
    weights = store.weights.get(round_number)
    indices = store.partitions.get(client)
    job = client_job(store, settings, round_number, client, attempt, weights, indices)
    record, inline = _send(targets[target_key], dict(job), KEYS, timeout_s)
    summary["target_activation"] = record.activation_id
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


def _send(
    binding: Mapping[str, Any], job: dict[str, Any], keys: tuple[str, ...], timeout_s: float
) -> tuple[ActivationRecord, bool]:
    """Call the client with ``job`` and wait; a failed call is a :class:`ProviderError`.

    Past the target's request limit, a platform with store access gets only ``keys`` (weights by
    reference: the client reads and writes the store). Returns the record and whether it went inline.
    """
    client, target = job["client"], f"{binding.get('platform')}/{binding.get('cluster')}"
    provider = client_from_binding(dict(binding))
    with provider:
        inline = len(json.dumps(job)) <= provider.capabilities.max_request_bytes
        if not inline and not provider.capabilities.store_access:
            raise PayloadTooLarge(
                f"client {client}: the job is past {target}'s {provider.capabilities.max_request_bytes} "
                "byte request limit and that platform cannot reach the store"
            )
        request = job if inline else {k: job[k] for k in keys}
        record = provider.invoke_sync(CLIENT_FUNCTION, request, timeout_s)
    if not record.ok:
        raise ProviderError(
            f"client {client} on {target} ({record.activation_id}): {record.error}",
            details={"target_activation": record.activation_id},
        )
    return record, inline


def _evaluate(
    store: SessionStore,
    round_number: int,
    client: int,
    attempt: int,
    binding: Mapping[str, Any],
    timeout_s: float,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """The client evaluates the round's new weights on its held-out rows; its reply is stored once."""
    summary = {**summary, "task": Task.EVALUATE.value}
    cannot = unsupported(catalog_platform(str(binding.get("platform"))).capabilities, EVALUATE_NEEDS)
    if cannot:  # the keeper leaves such clients out of evaluation; a stray call is refused here too
        raise BadRequest(f"client {client} on {summary['target']} cannot evaluate: {'; '.join(cannot)}")
    if store.evaluations.has(round_number, client):
        return {**summary, "stored": False, "reason": "an evaluation of this round is already stored"}
    settings = SessionSettings.load(store)
    indices = held_out(settings.data, settings.sampling, settings.total_clients)[client]
    job = EvaluateJob(
        session=store.id,
        round=round_number,
        client=client,
        attempt=attempt,
        task=Task.EVALUATE.value,
        weights=wire.to_b64(store.weights.get(round_number + 1)),
        model=settings.model.model_dump(mode="json"),
        data={"dataset": settings.data.model_dump(mode="json"), "indices": indices.tolist()},
    )
    record, inline = _send(binding, dict(job), (*KEYS, "task"), timeout_s)
    summary["target_activation"] = record.activation_id
    if not inline:
        if not store.evaluations.has(round_number, client):
            raise ProviderError(f"client {client} on {summary['target']} succeeded but stored no evaluation")
        return {**summary, "stored": True}
    reply = record.result or {}
    if "weights" in reply:  # a client deployed before evaluation ignores the task and trains
        raise ProviderError(
            f"client {client} on {summary['target']} trained instead of evaluating: its fl_client predates "
            "federated evaluation; redeploy it"
        )
    outcome = store_evaluation(
        store,
        round_number,
        client,
        held_out_size=len(indices),
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
