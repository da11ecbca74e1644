"""FedMedian (Yin et al., 2018): the coordinate-wise median of the clients' weights, as Flower's.

Robust to a minority of arbitrary updates; ignores example counts. Needs every update at once:
memory O(k x model) (see :mod:`~fedkeeper.function.strategies.buffered`).
"""

from __future__ import annotations

import numpy as np

from fedkeeper.function.strategies.buffered import Buffered, layer_stack
from fedkeeper.function.strategies.records import FitRes, Weights


class FedMedian(Buffered):
    """Coordinate-wise median over the round's accepted updates."""

    name = "fedmedian"

    def _combine(self, updates: list[FitRes]) -> tuple[Weights, dict[str, object]]:
        layers = len(self.context.current)
        return [np.median(layer_stack(updates, i), axis=0) for i in range(layers)], {}
