"""FedTrimmedAvg (Yin et al., 2018): per coordinate, drop the ``beta`` fraction of highest and
lowest values and average the rest, as Flower's (scipy's ``trim_mean``: ``int(beta * k)`` cut
from each end). Ignores example counts. Memory O(k x model) (see
:mod:`~fedkeeper.function.strategies.buffered`).
"""

from __future__ import annotations

import numpy as np

from fedkeeper.function.strategies.buffered import Buffered, layer_stack
from fedkeeper.function.strategies.records import FitRes, Weights


def trimmed_mean(stack: np.ndarray, beta: float) -> np.ndarray:
    """Mean over axis 0 of ``stack`` without its ``int(beta * k)`` lowest and highest values."""
    k = stack.shape[0]
    low = int(beta * k)
    high = k - low
    ordered = np.partition(stack, (low, high - 1), axis=0)
    result: np.ndarray = np.mean(ordered[low:high], axis=0)
    return result


class FedTrimmedAvg(Buffered):
    """Coordinate-wise trimmed mean; ``beta`` in ``[0, 0.5)``."""

    name = "fedtrimmedavg"

    def __init__(self, beta: float = 0.2) -> None:
        super().__init__()
        if not 0 <= beta < 0.5:
            raise ValueError(f"beta must be in [0, 0.5) (got {beta!r})")
        self.beta = float(beta)

    def _combine(self, updates: list[FitRes]) -> tuple[Weights, dict[str, object]]:
        layers = len(self.context.current)
        return [trimmed_mean(layer_stack(updates, i), self.beta) for i in range(layers)], {}
