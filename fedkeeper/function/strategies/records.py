"""What crosses between a strategy and the rest of fedkeeper, in Flower's vocabulary.

``FitIns`` is what the keeper writes into a round for one client (``configure_fit``), ``FitRes``
is one stored update as the aggregator streams it to ``aggregate_fit``, ``Failure`` a selected
client whose update is missing or was rejected. All JSON-able or numpy only: a strategy never sees
TensorFlow or MongoDB.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedkeeper.function.config import ModelParams

Weights = list[np.ndarray]


@dataclass(frozen=True)
class FitConfig:
    """One client's instructions for one round (Flower's ``FitIns.config``).

    Attributes
    ----------
    learning_rate, local_epochs, batch_size
        The client's local training; ``model_params`` gives the defaults, a strategy may change
        them per client (FedOpt's ``eta_l``).
    proximal_mu
        FedProx's proximal term ``mu / 2 * ||w - w_global||^2`` added to the client's loss.
    control_variates
        SCAFFOLD: the client's gradients are corrected by ``c - c_i`` (server and client control
        variates, read from the store).
    """

    learning_rate: float
    local_epochs: int
    batch_size: int
    proximal_mu: float = 0.0
    control_variates: bool = False

    @classmethod
    def from_model(cls, model: ModelParams) -> FitConfig:
        """The instructions ``model_params`` alone gives (what FedAvg sends)."""
        return cls(model.learning_rate, model.local_epochs, model.batch_size)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> FitConfig:
        """Parse stored or received instructions; ``ValueError`` names the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"fit instructions must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"fit instructions: unknown field(s) {', '.join(unknown)}")
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.default is MISSING)
        if missing:
            raise ValueError(f"fit instructions: missing field(s) {', '.join(missing)}")
        config = cls(**data)
        config.check()
        return config

    def check(self) -> None:
        def number(name: str, value: Any, low: float, strict: bool) -> None:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"fit instructions: {name} must be a finite number (got {value!r})")
            if value < low or (strict and value == low):
                raise ValueError(
                    f"fit instructions: {name} must be {'>' if strict else '>='} {low} (got {value!r})"
                )

        number("learning_rate", self.learning_rate, 0, strict=True)
        number("proximal_mu", self.proximal_mu, 0, strict=False)
        for name in ("local_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"fit instructions: {name} must be a positive integer (got {value!r})")
        if not isinstance(self.control_variates, bool):
            raise ValueError(
                f"fit instructions: control_variates must be true or false (got {self.control_variates!r})"
            )

    def local_steps(self, num_examples: int) -> int:
        """Optimizer steps a client with ``num_examples`` takes: ``local_epochs * ceil(n / batch_size)``."""
        return self.local_epochs * math.ceil(num_examples / self.batch_size)


@dataclass(frozen=True)
class FitIns:
    """``client`` trains this round with ``config``."""

    client: int
    config: FitConfig


@dataclass(frozen=True, eq=False)
class FitRes:
    """One client's stored update: its weights, how many examples trained them, and what it was told.

    ``weight`` scales what its examples count: 1, or a late update's staleness discount ``s(t)``
    in ``mode: semi_async`` (the strategies with ``folds_late``).
    """

    client: int
    weights: Weights
    num_examples: int
    config: FitConfig
    loss: float = math.nan
    accuracy: float = math.nan
    weight: float = 1.0


@dataclass(frozen=True)
class Failure:
    """A selected client that contributes nothing to the round.

    ``rejected`` is true when it answered with an update that failed its checks; false when no
    update arrived before the round closed.
    """

    client: int
    reason: str
    rejected: bool = False


@dataclass(frozen=True)
class EvaluateIns:
    """``client`` evaluates the round's global weights on its held-out data."""

    client: int


@dataclass(frozen=True)
class EvaluateRes:
    """One client's evaluation of the global weights."""

    client: int
    num_examples: int
    loss: float
    accuracy: float
