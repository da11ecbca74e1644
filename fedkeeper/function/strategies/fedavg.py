"""FedAvg (McMahan et al., 2017): the example-weighted mean of the clients' weights."""

from __future__ import annotations

import numpy as np

from fedkeeper.function.strategies.base import Strategy


class FedAvg(Strategy):
    """Streaming weighted mean: a float64 running sum of ``weights * num_examples`` and the total count."""

    def __init__(self) -> None:
        super().__init__()
        self._sums: list[np.ndarray] = []

    def _begin(self, reference: list[np.ndarray]) -> None:
        # float64 so that many float32 updates add up without losing precision.
        self._sums = [np.zeros(array.shape, dtype=np.float64) for array in reference]

    def _accumulate(self, update: list[np.ndarray], num_examples: int) -> None:
        for total, array in zip(self._sums, update, strict=True):
            scaled = array.astype(np.float64)  # one layer-sized temporary at a time
            scaled *= num_examples
            total += scaled

    def _finish(self, reference: list[np.ndarray]) -> list[np.ndarray]:
        count = float(self.total_examples)
        return [(total / count).astype(ref.dtype) for total, ref in zip(self._sums, reference, strict=True)]
