"""What the four functions share: parsing their parameters, the session's settings, the update and
evaluation gates, the clients' held-out data."""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkeeper.function.config import DataSampling, ModelParams, ServerConfig, TrainingTestData
from fedkeeper.function.errors import ConfigError, InvalidEvaluation, InvalidUpdate
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.partition import partition
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore
from fedkeeper.function.store.statuses import Task
from fedkeeper.function.strategies import FitConfig, StrategyState
from fedkeeper.function.tasks import entry
from fedkeeper.function.tasks.entry import BadRequest


def require(params: dict[str, Any], key: str, kind: type) -> Any:
    """``params[key]``, checked for presence and type; a bad value is a :class:`BadRequest`."""
    if key not in params:
        raise BadRequest(f"missing parameter {key!r}")
    value = params[key]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise BadRequest(f"parameter {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class SessionSettings:
    """The parts of a session's scenario the functions need (no credentials)."""

    model: ModelParams
    data: TrainingTestData
    sampling: DataSampling
    server: ServerConfig
    total_clients: int

    @classmethod
    def load(cls, session: SessionStore) -> SessionSettings:
        scenario = session.record.get()["scenario"]
        return cls(
            model=ModelParams.model_validate(scenario["model_params"]),
            data=TrainingTestData.model_validate(scenario["training_test_data"]),
            sampling=DataSampling.model_validate(scenario["data_sampling"]),
            server=ServerConfig.model_validate(scenario["server_config"]),
            total_clients=int(scenario["clients_info"]["total_num_clients"]),
        )


def task_of(params: dict[str, Any]) -> Task:
    """What a client call asks: ``task`` (fit when absent, as every call before evaluation was)."""
    value = params.get("task", Task.FIT.value)
    if value not in {t.value for t in Task}:
        raise BadRequest(f"parameter 'task' must be one of {', '.join(t.value for t in Task)}, got {value!r}")
    return Task(value)


_held_out: dict[tuple[TrainingTestData, DataSampling, int], list[np.ndarray]] = {}
_held_out_lock = threading.Lock()


def held_out(data: TrainingTestData, sampling: DataSampling, total_clients: int) -> list[np.ndarray]:
    """Each client's rows of the data set's test split: its held-out data for federated evaluation.

    The test split is partitioned as the training set is (same method, same seed), so a client
    evaluates on data distributed like its own, and training is unchanged. Kept per process, as
    the data set is. A test split too small for the partitioning is a :class:`ConfigError`.
    """
    key = (data, sampling, total_clients)
    with _held_out_lock:
        cached = _held_out.get(key)
    if cached is not None:
        return cached
    labels = load_dataset(data).y_test
    try:
        parts = partition(labels, total_clients, sampling)
    except ValueError as exc:
        raise ConfigError(
            f"federated evaluation: the test split's {len(labels)} examples cannot be shared among "
            f"{total_clients} clients as data_sampling says ({exc}); set fraction_evaluate: 0"
        ) from None
    for part in parts:
        part.setflags(write=False)
    with _held_out_lock:
        return _held_out.setdefault(key, parts)


def instructions(
    session: SessionStore, settings: SessionSettings, round_number: int, client: int
) -> FitConfig:
    """What the keeper told ``client`` for the round (``model_params`` alone when it told nothing)."""
    stored = session.rounds.instructions(round_number, client)
    return FitConfig.from_model(settings.model) if stored is None else FitConfig.from_json(stored)


def correction(
    session: SessionStore,
    settings: SessionSettings,
    round_number: int,
    client: int,
    fit: FitConfig,
    like: wire.Weights,
) -> wire.Weights | None:
    """The gradient correction the strategy gives ``client`` (SCAFFOLD's ``c - c_i``), from the store."""
    if not fit.control_variates:
        return None
    server = session.strategy.server(round_number) or StrategyState()
    own = session.strategy.client(client, round_number)
    return settings.server.strategy.build().fit_correction(server, own, like)


def fitted_model(model: ModelParams, fit: FitConfig) -> ModelParams:
    """``model_params`` with the round's instructions for learning rate, epochs and batch size."""
    return model.model_copy(
        update={
            "learning_rate": fit.learning_rate,
            "local_epochs": fit.local_epochs,
            "batch_size": fit.batch_size,
        }
    )


def check_indices(indices: np.ndarray, size: int) -> np.ndarray:
    if indices.ndim != 1 or len(indices) == 0:
        raise BadRequest("data indices must be a non-empty list of integers")
    if indices.min() < 0 or indices.max() >= size:
        raise BadRequest(f"data indices must lie in [0, {size}), got {indices.min()}..{indices.max()}")
    return indices


def _metric(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidUpdate(f"{name} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def store_update(
    session: SessionStore,
    settings: SessionSettings,
    round_number: int,
    client: int,
    *,
    reference: wire.Weights,
    partition_size: int,
    weights: Any,
    num_examples: Any,
    loss: Any,
    accuracy: Any,
    attempt: int,
    activation_id: str | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    """Check a client's update and store it, or store its rejection with the reason.

    The one gate every route passes: a client writing its own update and the invoker writing a
    target's reply (``weights`` as arrays or base64 ``.npz``). An update that fails
    :func:`~fedkeeper.function.store.weights.check_update` is kept as ``rejected``: the client did answer,
    a retry would answer the same, and the round reports it among its rejected updates. An update
    that passes is stored with the session's codec (``server_config.compression``).
    """
    activation_id = activation_id or entry.activation_id.get()
    try:
        if isinstance(weights, str):
            weights = wire.from_b64(weights)
        if not isinstance(weights, list):
            raise InvalidUpdate(f"weights must be a base64 .npz, got {type(weights).__name__}")
        count = wire.check_update(
            weights,
            num_examples,
            reference,
            max_examples=partition_size,
            max_norm=settings.server.max_update_norm,
        )
        loss_value, accuracy_value = _metric(loss, "loss"), _metric(accuracy, "accuracy")
        stored = session.updates.put(
            round_number,
            client,
            weights,
            count,
            loss_value,
            accuracy_value,
            activation_id=activation_id,
            attempt=attempt,
            codec=settings.server.compression.build(),
            reference=reference,
            version=version,
        )
    except InvalidUpdate as exc:  # failed its checks, or does not fit the session's codec
        print(f"rejected update of client {client}: {exc}", file=sys.stderr)
        stored = session.updates.reject(
            round_number, client, str(exc), activation_id=activation_id, attempt=attempt
        )
        return {"stored": stored, "rejected": str(exc)}
    return {"stored": stored, "num_examples": count, "loss": loss_value, "accuracy": accuracy_value}


def store_evaluation(
    session: SessionStore,
    round_number: int,
    client: int,
    *,
    held_out_size: int,
    num_examples: Any,
    loss: Any,
    accuracy: Any,
    attempt: int,
    activation_id: str | None = None,
) -> dict[str, Any]:
    """Check a client's evaluation and store it (once per round and client): the one gate of both
    routes. A bad one raises :class:`InvalidEvaluation`, a failed attempt the keeper retries."""
    activation_id = activation_id or entry.activation_id.get()
    if (
        isinstance(num_examples, bool)
        or not isinstance(num_examples, int)
        or not 0 < num_examples <= held_out_size
    ):
        raise InvalidEvaluation(
            f"client {client}: num_examples must be an integer in 1..{held_out_size}, got {str(num_examples)[:40]!r}"
        )
    try:
        loss_value, accuracy_value = _metric(loss, "loss"), _metric(accuracy, "accuracy")
    except InvalidUpdate as exc:
        raise InvalidEvaluation(f"client {client}: {exc}") from None
    if not 0 <= accuracy_value <= 1:
        raise InvalidEvaluation(f"client {client}: accuracy must be in [0, 1], got {accuracy_value!r}")
    stored = session.evaluations.put(
        round_number,
        client,
        num_examples,
        loss_value,
        accuracy_value,
        activation_id=activation_id,
        attempt=attempt,
    )
    return {"stored": stored, "num_examples": num_examples, "loss": loss_value, "accuracy": accuracy_value}
