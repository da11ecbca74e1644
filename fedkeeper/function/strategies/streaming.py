"""A weighted sum folded in one update at a time: the FedAvg family's O(model) accumulator."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class WeightedSum:
    """``sum_i weight_i * arrays_i`` in float64, and ``sum_i weight_i``.

    float64 so that many float32 updates add up without losing precision; each update is read one
    layer at a time and never kept.
    """

    def __init__(self, like: Sequence[np.ndarray]) -> None:
        self.sums = [np.zeros(np.shape(array), dtype=np.float64) for array in like]
        self.total = 0.0

    def add(self, arrays: Iterable[np.ndarray], weight: float) -> None:
        for total, array in zip(self.sums, arrays, strict=True):
            scaled = np.asarray(array).astype(np.float64)  # one layer-sized temporary at a time
            scaled *= weight
            total += scaled
        self.total += weight

    def mean(self) -> list[np.ndarray]:
        """The weighted mean, float64."""
        return [total / self.total for total in self.sums]


def as_float64(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(array, dtype=np.float64) for array in arrays]
