"""``fl_client``: one local training run, or one federated evaluation (``"task": "evaluate"``).

Direct mode (``{"session","round","client","attempt"}``, store bound at deploy time): reads the
round's weights, its instructions for this client and the client's partition from the store and
writes the update itself.
Inline mode (a :class:`~fedkeeper.function.tasks.contract.ClientJob`): everything arrives in the call and
the update goes back in the reply; no database credentials needed.
An evaluation evaluates round ``r``'s new global weights (round ``r + 1``'s) on the client's rows
of the test split (:func:`~fedkeeper.function.tasks.common.held_out`), in numpy, and stores (direct)
or returns (inline, an :class:`~fedkeeper.function.tasks.contract.EvaluateReply`) its loss,
accuracy and example count.

A warm worker keeps what it read (:class:`WarmInputs`), besides the compiled model
(``learning.models``) and the loaded data set (``learning.datasets``): a warm activation costs its
training plus three store round trips (is the update there? then storing it: a check and an insert).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkeeper.function.config import ModelParams, TrainingTestData
from fedkeeper.function.errors import InvalidUpdate
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.evaluation import evaluate
from fedkeeper.function.learning.training import LocalResult, train_local
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.statuses import Task
from fedkeeper.function.strategies import FitConfig
from fedkeeper.function.tasks.common import (
    SessionSettings,
    check_indices,
    correction,
    fitted_model,
    held_out,
    instructions,
    require,
    store_evaluation,
    store_update,
    task_of,
)
from fedkeeper.function.tasks.contract import ClientReply, EvaluateReply
from fedkeeper.function.tasks.entry import BadRequest


def train_partition(
    weights: wire.Weights,
    spec: TrainingTestData,
    model: ModelParams,
    indices: np.ndarray,
    client: int,
    round_number: int,
    *,
    fit: FitConfig | None = None,
    gradient_correction: wire.Weights | None = None,
) -> LocalResult:
    """Train ``client``'s rows as the round's instructions ``fit`` say (default: ``model`` alone)."""
    fit = fit or FitConfig.from_model(model)
    dataset = load_dataset(spec)
    rows = check_indices(np.asarray(indices, dtype=np.int64), len(dataset.y_train))
    seed = shuffle_seed(model, round_number, client)
    return train_local(
        weights,
        dataset.x_train[rows],
        dataset.y_train[rows],
        fitted_model(model, fit),
        dataset.num_classes,
        seed=seed,
        proximal_mu=fit.proximal_mu,
        correction=gradient_correction,
    )


def evaluate_held_out(
    weights: wire.Weights, spec: TrainingTestData, model: ModelParams, indices: np.ndarray
) -> tuple[int, float, float]:
    """``(num_examples, loss, accuracy)`` of ``weights`` on the test split's rows ``indices``."""
    dataset = load_dataset(spec)
    rows = check_indices(np.asarray(indices, dtype=np.int64), len(dataset.y_test))
    loss, accuracy = evaluate(weights, dataset.x_test[rows], dataset.y_test[rows], model, dataset.num_classes)
    return len(rows), loss, accuracy


def shuffle_seed(model: ModelParams, round_number: int, client: int) -> int:
    """The seed of a client's shuffling in a round: each (client, round) shuffles differently, yet a
    retried attempt repeats the same run."""
    return model.seed * 1_000_003 + round_number * 10_007 + client


def _inline(params: dict[str, Any]) -> ClientReply:
    client = require(params, "client", int)
    round_number = require(params, "round", int)
    data = require(params, "data", dict)
    try:
        spec = TrainingTestData.model_validate(data.get("dataset"))
        model = ModelParams.model_validate(require(params, "model", dict))
        fit = FitConfig.from_json(params["fit"]) if "fit" in params else FitConfig.from_model(model)
    except ValueError as exc:
        raise BadRequest(f"bad data, model or fit settings: {str(exc).splitlines()[0]}") from None
    indices = require(data, "indices", list)
    weights = wire.from_b64(require(params, "weights", str))
    extra = None
    if "correction" in params:
        try:
            extra = wire.from_b64(require(params, "correction", str))
            wire.validate_like(extra, weights)
        except InvalidUpdate as exc:
            raise BadRequest(f"bad correction: {exc}") from None
    result = train_partition(
        weights, spec, model, np.asarray(indices), client, round_number, fit=fit, gradient_correction=extra
    )
    wire.validate_like(result.weights, weights)
    return ClientReply(
        client=client,
        round=round_number,
        weights=wire.to_b64(result.weights),
        num_examples=result.num_examples,
        loss=result.loss,
        accuracy=result.accuracy,
    )


def _inline_evaluate(params: dict[str, Any]) -> EvaluateReply:
    client = require(params, "client", int)
    round_number = require(params, "round", int)
    data = require(params, "data", dict)
    try:
        spec = TrainingTestData.model_validate(data.get("dataset"))
        model = ModelParams.model_validate(require(params, "model", dict))
    except ValueError as exc:
        raise BadRequest(f"bad data or model settings: {str(exc).splitlines()[0]}") from None
    indices = np.asarray(require(data, "indices", list))
    num_examples, loss, accuracy = evaluate_held_out(
        wire.from_b64(require(params, "weights", str)), spec, model, indices
    )
    return EvaluateReply(
        client=client, round=round_number, num_examples=num_examples, loss=loss, accuracy=accuracy
    )


@dataclass
class _SessionInputs:
    settings: SessionSettings
    weights: dict[int, wire.Weights] = field(default_factory=dict)  # the newest round read only
    partitions: dict[int, np.ndarray] = field(default_factory=dict)


class WarmInputs:
    """A session's settings, a round's global weights and the clients' partitions, kept per process.

    Each is written once under a unique key and never changed, so a kept copy is exactly what the
    store would return. Kept for the :data:`SESSIONS` most recently served sessions; the arrays are
    read-only, so no activation can alter what the next one sees.
    """

    SESSIONS = 4

    def __init__(self) -> None:
        self._sessions: OrderedDict[tuple[str, str, str], _SessionInputs] = OrderedDict()
        self._lock = threading.Lock()

    def _session(self, session: SessionStore) -> _SessionInputs:
        key = (session.store.url, session.store.db.name, session.id)
        with self._lock:
            kept = self._sessions.get(key)
            if kept is not None:
                self._sessions.move_to_end(key)
                return kept
        loaded = _SessionInputs(SessionSettings.load(session))
        with self._lock:
            kept = self._sessions.setdefault(key, loaded)
            while len(self._sessions) > self.SESSIONS:
                self._sessions.popitem(last=False)
        return kept

    def settings(self, session: SessionStore) -> SessionSettings:
        return self._session(session).settings

    def weights(self, session: SessionStore, round_number: int) -> wire.Weights:
        kept = self._session(session)
        weights = kept.weights.get(round_number)
        if weights is None:
            weights = _read_only(session.weights.get(round_number))
            with self._lock:
                kept.weights = {round_number: weights}
        return weights

    def partition(self, session: SessionStore, client: int) -> np.ndarray:
        kept = self._session(session)
        indices = kept.partitions.get(client)
        if indices is None:
            indices = _read_only([session.partitions.get(client)])[0]
            with self._lock:
                kept.partitions[client] = indices
        return indices

    def clear(self) -> None:
        """Forget everything (tests; a cold worker)."""
        with self._lock:
            self._sessions.clear()


def _read_only(arrays: list[np.ndarray]) -> list[np.ndarray]:
    for array in arrays:
        array.setflags(write=False)
    return arrays


warm_inputs = WarmInputs()


def _direct(params: dict[str, Any], task: Task) -> dict[str, Any]:
    db = Store.from_bound(params)
    session_id = require(params, "session", str)
    store = db.for_session(session_id)
    round_number = require(params, "round", int)
    client = require(params, "client", int)
    attempt = require(params, "attempt", int)
    if task is Task.EVALUATE:
        return _direct_evaluate(store, round_number, client, attempt)
    # Async mode: ``round`` is the dispatch (the update's key), ``version`` the model it trains on.
    version = params.get("version")
    version = None if version is None else require(params, "version", int)
    summary: dict[str, Any] = {"client": client, "round": round_number}
    if store.updates.has(round_number, client):
        return {**summary, "stored": False, "reason": "an update for this round is already stored"}
    settings = warm_inputs.settings(store)
    weights = warm_inputs.weights(store, round_number if version is None else version)
    partition = warm_inputs.partition(store, client)
    fit = instructions(store, settings, round_number, client)
    result = train_partition(
        weights,
        settings.data,
        settings.model,
        partition,
        client,
        round_number,
        fit=fit,
        gradient_correction=correction(store, settings, round_number, client, fit, weights),
    )
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
        version=version,
    )
    return {**summary, **outcome}


def _direct_evaluate(store: SessionStore, round_number: int, client: int, attempt: int) -> dict[str, Any]:
    summary: dict[str, Any] = {"client": client, "round": round_number, "task": Task.EVALUATE.value}
    if store.evaluations.has(round_number, client):
        return {**summary, "stored": False, "reason": "an evaluation of this round is already stored"}
    settings = warm_inputs.settings(store)
    if not 0 <= client < settings.total_clients:
        raise BadRequest(f"client {client} is not one of the session's {settings.total_clients} clients")
    weights = warm_inputs.weights(store, round_number + 1)  # what the round aggregated
    indices = held_out(settings.data, settings.sampling, settings.total_clients)[client]
    num_examples, loss, accuracy = evaluate_held_out(weights, settings.data, settings.model, indices)
    outcome = store_evaluation(
        store,
        round_number,
        client,
        held_out_size=len(indices),
        num_examples=num_examples,
        loss=loss,
        accuracy=accuracy,
        attempt=attempt,
    )
    return {**summary, **outcome}


def handle(params: dict[str, Any]) -> dict[str, Any]:
    task = task_of(params)
    if "weights" in params:
        return dict(_inline_evaluate(params) if task is Task.EVALUATE else _inline(params))
    return _direct(params, task)
