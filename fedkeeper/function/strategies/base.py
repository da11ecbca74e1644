"""The aggregation interface: one round's updates stream in, the next global weights come out.

A strategy sees each update once (``accumulate``) and must not keep it, so the aggregator's memory
is O(model), not O(clients x model). Validation happens here, before any state changes, so a
rejected update leaves the aggregate exactly as it was.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from fedkeeper.function.errors import FedkeeperError, InvalidUpdate
from fedkeeper.function.store.weights import check_update


class NothingToAggregate(FedkeeperError):
    """``finish`` was called on a round with no accepted update."""


class Strategy(ABC):
    """Streaming aggregation of one round: ``begin`` → ``accumulate``* → ``finish``."""

    def __init__(self) -> None:
        self._reference: list[np.ndarray] | None = None
        self._accepted = 0
        self._rejected = 0
        self._total_examples = 0

    # ----------------------------------------------------------------------- the round
    def begin(self, reference: Sequence[np.ndarray]) -> None:
        """Start a round whose global weights are ``reference`` (updates must match its shapes and dtypes)."""
        self._reference = [np.asarray(array) for array in reference]
        self._accepted = self._rejected = self._total_examples = 0
        self._begin(self._reference)

    def accumulate(self, update: Sequence[np.ndarray], num_examples: int) -> None:
        """Fold in one client's update; raises :class:`InvalidUpdate` (and counts it) if it is malformed."""
        reference = self._require_round()
        try:
            arrays = list(update) if isinstance(update, list | tuple) else None
            if arrays is None or not all(isinstance(array, np.ndarray) for array in arrays):
                raise InvalidUpdate(f"update must be a list of numpy arrays, got {type(update).__name__}")
            count = check_update(arrays, num_examples, reference)
        except InvalidUpdate:
            self._rejected += 1
            raise
        self._accumulate(arrays, count)
        self._accepted += 1
        self._total_examples += count

    def finish(self) -> list[np.ndarray]:
        """The next global weights, with the reference's dtypes."""
        reference = self._require_round()
        if self._accepted == 0:
            raise NothingToAggregate(f"no accepted update to aggregate ({self._rejected} rejected)")
        return self._finish(reference)

    # ----------------------------------------------------------------------- counters
    @property
    def accepted(self) -> int:
        return self._accepted

    @property
    def rejected(self) -> int:
        return self._rejected

    @property
    def total_examples(self) -> int:
        return self._total_examples

    # ----------------------------------------------------------------------- for subclasses
    @abstractmethod
    def _begin(self, reference: list[np.ndarray]) -> None:
        """Reset the running state for a round."""

    @abstractmethod
    def _accumulate(self, update: list[np.ndarray], num_examples: int) -> None:
        """Fold in an update that has already passed validation; must not keep a reference to it."""

    @abstractmethod
    def _finish(self, reference: list[np.ndarray]) -> list[np.ndarray]:
        """The aggregate, cast to the reference's dtypes."""

    def _require_round(self) -> list[np.ndarray]:
        if self._reference is None:
            raise RuntimeError(f"{type(self).__name__}: call begin() before accumulate() or finish()")
        return self._reference
