"""Krum and Multi-Krum (Blanchard et al., 2017), as Flower's.

Each update is scored by the sum of squared distances to its ``k - f - 2`` nearest others
(``f = num_malicious_clients``, at least 1 neighbour). Krum returns the best-scored update;
with ``num_clients_to_keep = m > 0`` (Multi-Krum) the example-weighted mean of the ``m`` best.
Needs every update at once: memory O(k x model) plus the k x k distances (see
:mod:`~fedkeeper.function.strategies.buffered`).
"""

from __future__ import annotations

import numpy as np

from fedkeeper.function.strategies.buffered import Buffered
from fedkeeper.function.strategies.checks import count
from fedkeeper.function.strategies.records import FitRes, Weights
from fedkeeper.function.strategies.streaming import WeightedSum


def squared_distances(updates: list[FitRes]) -> np.ndarray:
    """``k x k`` squared L2 distances over all layers, one layer-sized temporary at a time."""
    k = len(updates)
    distances = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            total = 0.0
            for a, b in zip(updates[i].weights, updates[j].weights, strict=True):
                delta = (a - b).ravel()
                total += float(np.dot(delta, delta))
            distances[i, j] = distances[j, i] = total
    return distances


class Krum(Buffered):
    """Krum (``num_clients_to_keep = 0``) or Multi-Krum (``> 0``)."""

    name = "krum"

    def __init__(self, num_malicious_clients: int = 0, num_clients_to_keep: int = 0) -> None:
        super().__init__()
        self.num_malicious_clients = count("num_malicious_clients", num_malicious_clients)
        self.num_clients_to_keep = count("num_clients_to_keep", num_clients_to_keep)

    def _combine(self, updates: list[FitRes]) -> tuple[Weights, dict[str, object]]:
        distances = squared_distances(updates)
        neighbours = max(1, len(updates) - self.num_malicious_clients - 2)
        scores = [
            float(np.sum(row[np.argsort(row)[1 : neighbours + 1]])) for row in distances
        ]  # argsort puts the update itself (distance 0) first, as Flower's
        if self.num_clients_to_keep > 0:
            keep = min(self.num_clients_to_keep, len(updates))
            best = [int(i) for i in np.argsort(scores)[::-1][len(scores) - keep :]]
            mean = WeightedSum(self.context.current)
            for i in best:
                mean.add(updates[i].weights, updates[i].num_examples)
            return mean.mean(), {"krum_selected": sorted(updates[i].client for i in best)}
        chosen = int(np.argmin(scores))
        return list(updates[chosen].weights), {"krum_selected": [updates[chosen].client]}
