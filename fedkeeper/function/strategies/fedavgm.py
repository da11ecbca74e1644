"""FedAvgM (Hsu et al., 2019): FedAvg with server-side learning rate and momentum, as Flower's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedkeeper.function.strategies.base import cast_like
from fedkeeper.function.strategies.checks import non_negative, positive
from fedkeeper.function.strategies.fedavg import FedAvg
from fedkeeper.function.strategies.records import Failure, Weights
from fedkeeper.function.strategies.state import StrategyState
from fedkeeper.function.strategies.streaming import as_float64


class FedAvgM(FedAvg):
    """``v = server_momentum * v + (w - avg)``; ``w = w - server_learning_rate * v``.

    The first round's ``v`` is the pseudo-gradient itself; ``v`` is kept in the store between
    rounds. With ``server_learning_rate=1`` and ``server_momentum=0`` it is FedAvg.
    """

    name = "fedavgm"
    stateful = True

    def __init__(self, server_learning_rate: float = 1.0, server_momentum: float = 0.0) -> None:
        super().__init__()
        self.server_learning_rate = positive("server_learning_rate", server_learning_rate)
        self.server_momentum = non_negative("server_momentum", server_momentum)

    def _server_step(
        self, average: list[np.ndarray], failures: Sequence[Failure]
    ) -> tuple[Weights | None, StrategyState]:
        current = as_float64(self.context.current)
        if self.server_learning_rate == 1.0 and self.server_momentum == 0.0:
            return cast_like(average, current), StrategyState()
        gradient = [w - a for w, a in zip(current, average, strict=True)]
        state = StrategyState()
        if self.server_momentum > 0.0:
            previous = self.context.state.get("momentum")
            if previous is not None:
                gradient = [self.server_momentum * v + g for v, g in zip(previous, gradient, strict=True)]
            state = StrategyState({"momentum": gradient})
        new = [w - self.server_learning_rate * g for w, g in zip(current, gradient, strict=True)]
        return cast_like(new, self.context.current), state
