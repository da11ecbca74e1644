"""Adaptive server optimizers (Reddi et al., 2021): FedAdam, FedYogi, FedAdagrad, as Flower's.

Each round's pseudo-gradient is ``delta = avg - w`` (``avg`` the FedAvg of the updates); the
server keeps first and second moments ``m``, ``v`` in the store between rounds and steps
``w = w + eta_t * m / (sqrt(v) + tau)``. ``eta_l`` is the clients' learning rate (sent to them;
default: ``model_params.learning_rate``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from fedkeeper.function.strategies.base import cast_like
from fedkeeper.function.strategies.checks import below_one, positive
from fedkeeper.function.strategies.fedavg import FedAvg
from fedkeeper.function.strategies.records import Failure, FitConfig, Weights
from fedkeeper.function.strategies.state import StrategyState
from fedkeeper.function.strategies.streaming import as_float64


class FedOpt(FedAvg):
    """The shared algebra; subclasses set the second moment and the step size."""

    stateful = True

    def __init__(self, eta: float, eta_l: float | None, beta_1: float, beta_2: float, tau: float) -> None:
        super().__init__()
        self.eta = positive("eta", eta)
        self.eta_l = None if eta_l is None else positive("eta_l", eta_l)
        self.beta_1 = below_one("beta_1", beta_1)
        self.beta_2 = below_one("beta_2", beta_2)
        self.tau = positive("tau", tau)

    def fit_config(self, base: FitConfig) -> FitConfig:
        return base if self.eta_l is None else replace(base, learning_rate=self.eta_l)

    def _server_step(
        self, average: list[np.ndarray], failures: Sequence[Failure]
    ) -> tuple[Weights | None, StrategyState]:
        current = as_float64(self.context.current)
        delta = [a - w for a, w in zip(average, current, strict=True)]
        state = self.context.state
        m_prev = state.get("m") or [np.zeros_like(d) for d in delta]
        v_prev = state.get("v") or [np.zeros_like(d) for d in delta]
        # Flower's operation order, so that the same inputs give the same bits.
        m = [
            np.multiply(self.beta_1, m0) + (1 - self.beta_1) * d for m0, d in zip(m_prev, delta, strict=True)
        ]
        v = [self._second_moment(v0, d) for v0, d in zip(v_prev, delta, strict=True)]
        eta = self._step_size(self.context.round_number + 1)
        new = [w + eta * mt / (np.sqrt(vt) + self.tau) for w, mt, vt in zip(current, m, v, strict=True)]
        return cast_like(new, self.context.current), StrategyState({"m": m, "v": v})

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The next ``v`` from the previous one and this round's pseudo-gradient."""

    def _step_size(self, server_round: int) -> float:
        """``eta`` (Adam overrides it with its bias correction)."""
        return self.eta


class FedAdam(FedOpt):
    """``v = beta_2 * v + (1 - beta_2) * delta^2``, bias-corrected step.

    The bias correction is Flower's: ``eta * sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` with
    ``t`` the 1-based round.
    """

    name = "fedadam"

    def __init__(
        self,
        eta: float = 1e-1,
        eta_l: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-9,
    ) -> None:
        super().__init__(eta, eta_l, beta_1, beta_2, tau)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return self.beta_2 * v + (1 - self.beta_2) * np.multiply(delta, delta)

    def _step_size(self, server_round: int) -> float:
        return float(
            self.eta
            * np.sqrt(1 - np.power(self.beta_2, server_round + 1.0))
            / (1 - np.power(self.beta_1, server_round + 1.0))
        )


class FedYogi(FedOpt):
    """``v = v - (1 - beta_2) * delta^2 * sign(v - delta^2)``: ``v`` grows additively, not by decay."""

    name = "fedyogi"

    def __init__(
        self,
        eta: float = 1e-2,
        eta_l: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(eta, eta_l, beta_1, beta_2, tau)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        square = np.multiply(delta, delta)
        return v - (1.0 - self.beta_2) * square * np.sign(v - square)


class FedAdagrad(FedOpt):
    """``m = delta``, ``v = v + delta^2`` (Flower's FedAdagrad has no ``beta_1``/``beta_2``)."""

    name = "fedadagrad"

    def __init__(self, eta: float = 1e-1, eta_l: float | None = None, tau: float = 1e-9) -> None:
        super().__init__(eta, eta_l, 0.0, 0.0, tau)

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v + np.multiply(delta, delta)
