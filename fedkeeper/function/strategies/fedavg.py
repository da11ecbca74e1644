"""FedAvg (McMahan et al., 2017): the example-weighted mean of the clients' weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedkeeper.function.strategies.base import RoundContext, Strategy, cast_like
from fedkeeper.function.strategies.records import Failure, FitRes, Weights
from fedkeeper.function.strategies.state import StrategyState
from fedkeeper.function.strategies.streaming import WeightedSum


class FedAvg(Strategy):
    """Streaming weighted mean (memory O(model)); the base of the FedAvg family.

    Subclasses that step a server optimizer override :meth:`_server_step`, which gets the mean.
    """

    name = "fedavg"
    shard_exact = True  # per array: a weighted mean, then the subclasses' per-array server step
    hierarchy_exact = True  # the subclasses' server steps read the mean only
    folds_late = True

    def _begin(self, context: RoundContext) -> None:
        self._mean = WeightedSum(context.current)

    def _accumulate(self, result: FitRes) -> None:
        self._mean.add(result.weights, result.num_examples * result.weight)

    def _finish(self, failures: Sequence[Failure]) -> tuple[Weights | None, StrategyState]:
        return self._server_step(self._mean.mean(), failures)

    def step_from_mean(
        self, context: RoundContext, mean: list[np.ndarray], failures: Sequence[Failure]
    ) -> tuple[Weights | None, StrategyState]:
        self._context = context
        return self._server_step(mean, failures)

    def _server_step(
        self, average: list[np.ndarray], failures: Sequence[Failure]
    ) -> tuple[Weights | None, StrategyState]:
        """The next weights from the float64 ``average`` of the round's updates."""
        return cast_like(average, self.context.current), StrategyState()
