"""FedNova (Wang et al., 2020): normalized averaging for clients that take different numbers of steps.

Client ``i`` takes ``tau_i = local_epochs * ceil(n_i / batch_size)`` plain SGD steps; its update is
normalized to ``d_i = (x - y_i) / tau_i`` and the server steps
``x = x - tau_eff * sum_i p_i d_i`` with ``p_i = n_i / sum n`` and ``tau_eff = sum_i p_i tau_i``.
With equal ``tau_i`` it is FedAvg; with unequal ones it removes the objective inconsistency of
weighting longer-trained clients more. Streaming, O(model).
"""

from __future__ import annotations

from collections.abc import Sequence

from fedkeeper.function.strategies.base import RoundContext, Strategy, cast_like
from fedkeeper.function.strategies.records import Failure, FitRes, Weights
from fedkeeper.function.strategies.state import StrategyState
from fedkeeper.function.strategies.streaming import WeightedSum, as_float64


class FedNova(Strategy):
    """Normalized averaging of vanilla-SGD clients (``a_i`` all ones in the paper's notation)."""

    name = "fednova"
    sgd_only = True

    def _begin(self, context: RoundContext) -> None:
        self._x = as_float64(context.current)
        self._directions = WeightedSum(context.current)
        self._weighted_steps = 0.0

    def _accumulate(self, result: FitRes) -> None:
        steps = result.config.local_steps(result.num_examples)
        direction = ((x - y.astype("float64")) / steps for x, y in zip(self._x, result.weights, strict=True))
        self._directions.add(direction, result.num_examples)
        self._weighted_steps += result.num_examples * steps

    def _finish(self, failures: Sequence[Failure]) -> tuple[Weights | None, StrategyState]:
        tau_eff = self._weighted_steps / self._directions.total
        new = [x - tau_eff * d for x, d in zip(self._x, self._directions.mean(), strict=True)]
        return cast_like(new, self.context.current), StrategyState({}, {"tau_eff": tau_eff})
