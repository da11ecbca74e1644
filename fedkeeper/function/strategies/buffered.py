"""Strategies that need every update of a round at once (median, trimmed mean, Krum).

A coordinate-wise median or a pairwise distance cannot be folded in one update at a time, so
these strategies hold the round's ``k`` accepted updates: memory O(k x model), not O(model).
They keep each update in its own dtype (no float64 copies) and refuse to hold more than
:data:`MAX_BUFFER_BYTES`, with a line that says how to stay under it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from fedkeeper.function.errors import FedkeeperError
from fedkeeper.function.store.weights import nbytes
from fedkeeper.function.strategies.base import RoundContext, Strategy, cast_like
from fedkeeper.function.strategies.records import Failure, FitRes, Weights
from fedkeeper.function.strategies.state import StrategyState

MAX_BUFFER_BYTES = 512 * 1024 * 1024


class BufferFull(FedkeeperError):
    """A round's updates do not fit the strategy's memory bound."""


class Buffered(Strategy):
    """Holds the round's accepted updates until ``_finish`` and combines them there."""

    max_buffer_bytes: ClassVar[int] = MAX_BUFFER_BYTES

    def _begin(self, context: RoundContext) -> None:
        self._updates: list[FitRes] = []
        self._bytes = 0

    def _accumulate(self, result: FitRes) -> None:
        size = nbytes(result.weights)
        if self._bytes + size > self.max_buffer_bytes:
            raise BufferFull(
                f"{self.name} holds every update of a round: {len(self._updates) + 1} updates of "
                f"{size / 2**20:.1f} MiB pass its {self.max_buffer_bytes / 2**20:.0f} MiB bound; "
                "select fewer clients per round or use a streaming strategy (fedavg family)"
            )
        self._updates.append(result)
        self._bytes += size

    def _finish(self, failures: Sequence[Failure]) -> tuple[Weights | None, StrategyState]:
        updates, self._updates = self._updates, []  # drop the buffer with the round
        combined, metrics = self._combine(updates)
        return cast_like(combined, self.context.current), StrategyState({}, metrics)

    @abstractmethod
    def _combine(self, updates: list[FitRes]) -> tuple[Weights, dict[str, object]]:
        """The next weights from every accepted update (in client order), and metrics to report."""


def layer_stack(updates: Sequence[FitRes], layer: int) -> np.ndarray:
    """One layer of every update, stacked ``(k, *shape)`` (a transient k x layer copy)."""
    return np.stack([u.weights[layer] for u in updates])
