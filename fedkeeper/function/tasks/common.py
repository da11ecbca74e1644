"""What the four functions share: parsing their parameters, the session's settings, the update gate."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkeeper.function.config import DataSampling, ModelParams, ServerConfig, TrainingTestData
from fedkeeper.function.errors import InvalidUpdate
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore
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
        )
    except InvalidUpdate as exc:  # failed its checks, or does not fit the session's codec
        print(f"rejected update of client {client}: {exc}", file=sys.stderr)
        stored = session.updates.reject(
            round_number, client, str(exc), activation_id=activation_id, attempt=attempt
        )
        return {"stored": stored, "rejected": str(exc)}
    return {"stored": stored, "num_examples": count, "loss": loss_value, "accuracy": accuracy_value}
