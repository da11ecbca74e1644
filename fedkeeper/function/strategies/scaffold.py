"""SCAFFOLD (Karimireddy et al., 2020), option II, with its control variates in the store.

The client corrects every gradient by ``c - c_i`` (server and its own control variate). After
``K`` local SGD steps of size ``eta_l`` from ``x`` to ``y_i``, its new control variate is
``c_i+ = c_i - c + (x - y_i) / (K * eta_l)``. The server computes that itself from the update and
the instructions it gave (``K = local_epochs * ceil(n_i / batch_size)``), so a client sends nothing
but its weights, and stores ``c_i+`` for the client; then
``x = x + server_learning_rate * mean_i(y_i - x)`` and ``c = c + sum_i(c_i+ - c_i) / N`` over the
round's accepted clients, ``N`` the session's clients. ``c`` starts at zero, each ``c_i`` at zero
until the client first contributes. Memory: O(model) (one client's ``c_i`` at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from fedkeeper.function.strategies.base import RoundContext, Strategy, cast_like
from fedkeeper.function.strategies.checks import positive
from fedkeeper.function.strategies.records import Failure, FitConfig, FitRes, Weights
from fedkeeper.function.strategies.state import StrategyState
from fedkeeper.function.strategies.streaming import WeightedSum, as_float64


def _zeros(like: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.zeros(np.shape(a), dtype=np.float64) for a in like]


class Scaffold(Strategy):
    """Stochastic controlled averaging; the control-variate algebra assumes plain SGD clients."""

    name = "scaffold"
    stateful = True
    client_objective = True
    sgd_only = True

    def __init__(self, server_learning_rate: float = 1.0) -> None:
        super().__init__()
        self.server_learning_rate = positive("server_learning_rate", server_learning_rate)

    def fit_config(self, base: FitConfig) -> FitConfig:
        return replace(base, control_variates=True)

    def fit_correction(
        self, state: StrategyState, client_state: Weights | None, like: Weights
    ) -> Weights | None:
        server = state.get("c") or _zeros(like)
        own = client_state or _zeros(like)
        return [(c - ci).astype(w.dtype) for c, ci, w in zip(server, own, like, strict=True)]

    def _begin(self, context: RoundContext) -> None:
        if context.num_clients < 1:
            raise ValueError("scaffold needs the session's number of clients")
        self._x = as_float64(context.current)
        self._c = context.state.get("c") or _zeros(context.current)
        self._delta_y = WeightedSum(context.current)
        self._delta_c = WeightedSum(context.current)

    def _accumulate(self, result: FitRes) -> None:
        scale = 1.0 / (result.config.local_steps(result.num_examples) * result.config.learning_rate)
        own = self.context.clients.get(result.client) or _zeros(self._x)
        y = as_float64(result.weights)
        delta_c = [(x - yi) * scale - c for x, yi, c in zip(self._x, y, self._c, strict=True)]
        self.context.clients.put(result.client, [ci + d for ci, d in zip(own, delta_c, strict=True)])
        self._delta_c.add(delta_c, 1.0)
        self._delta_y.add((yi - x for yi, x in zip(y, self._x, strict=True)), 1.0)

    def _finish(self, failures: Sequence[Failure]) -> tuple[Weights | None, StrategyState]:
        step = self.server_learning_rate
        new_x = [x + step * d for x, d in zip(self._x, self._delta_y.mean(), strict=True)]
        clients = float(self.context.num_clients)
        new_c = [c + d / clients for c, d in zip(self._c, self._delta_c.sums, strict=True)]
        return cast_like(new_x, self.context.current), StrategyState({"c": new_c})
