"""What the four functions share: parsing their parameters and the session's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkeeper.config import DataSampling, ModelParams, ServerConfig, TrainingTestData
from fedkeeper.store.db import Store
from fedkeeper.tasks.entry import BadRequest


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
    def load(cls, store: Store, session_id: str) -> SessionSettings:
        scenario = store.session(session_id)["scenario"]
        return cls(
            model=ModelParams.model_validate(scenario["model_params"]),
            data=TrainingTestData.model_validate(scenario["training_test_data"]),
            sampling=DataSampling.model_validate(scenario["data_sampling"]),
            server=ServerConfig.model_validate(scenario["server_config"]),
            total_clients=int(scenario["clients_info"]["total_num_clients"]),
        )


def check_indices(indices: np.ndarray, size: int) -> np.ndarray:
    if indices.ndim != 1 or len(indices) == 0:
        raise BadRequest("data indices must be a non-empty list of integers")
    if indices.min() < 0 or indices.max() >= size:
        raise BadRequest(f"data indices must lie in [0, {size}), got {indices.min()}..{indices.max()}")
    return indices
