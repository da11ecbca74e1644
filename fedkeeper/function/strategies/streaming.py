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
        # One float64 temporary, the largest layer's size, reused for every layer of every update.
        self._scratch = np.empty(max((total.size for total in self.sums), default=0), dtype=np.float64)

    def add(self, arrays: Iterable[np.ndarray], weight: float) -> None:
        for total, array in zip(self.sums, arrays, strict=True):
            scaled = self._scratch[: total.size].reshape(total.shape)
            # The same float64 products as ``array.astype(float64) * weight``, in one pass.
            np.multiply(array, weight, out=scaled, dtype=np.float64)
            total += scaled
        self.total += weight

    def mean(self) -> list[np.ndarray]:
        """The weighted mean, float64, divided in place: the sums become the mean (no second
        model-sized float64 copy), so call it once, at the end."""
        for total in self.sums:
            total /= self.total
        return self.sums


def as_float64(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(array, dtype=np.float64) for array in arrays]
