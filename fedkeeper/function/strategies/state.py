"""What a strategy carries from one round to the next.

A function keeps nothing between activations, so a strategy's memory (server optimizer moments,
SCAFFOLD's control variates) is a value: the aggregator reads it from the store with the round,
hands it to ``aggregate_fit`` and stores what comes back before the next round's weights. A
resumed or revived session therefore continues from exactly the arrays an uninterrupted one
would hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedkeeper.function.strategies.records import Weights


@dataclass(frozen=True, eq=False)
class StrategyState:
    """Named lists of arrays (``{"m": [...], "v": [...]}``) and the round's scalar metrics."""

    arrays: Mapping[str, Weights] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Weights | None:
        return self.arrays.get(name)

    def layout(self) -> list[tuple[str, int]]:
        """``(name, how many arrays)`` in storage order."""
        return [(name, len(arrays)) for name, arrays in self.arrays.items()]

    def flat(self) -> Weights:
        """Every array in :meth:`layout` order (how the store keeps them)."""
        return [array for arrays in self.arrays.values() for array in arrays]

    @classmethod
    def from_flat(
        cls, layout: list[tuple[str, int]], arrays: Weights, metrics: Mapping[str, Any] | None = None
    ) -> StrategyState:
        if sum(count for _, count in layout) != len(arrays):
            raise ValueError(f"state layout {layout} does not match {len(arrays)} stored arrays")
        named: dict[str, Weights] = {}
        start = 0
        for name, count in layout:
            named[name] = list(arrays[start : start + count])
            start += count
        return cls(named, dict(metrics or {}))


class ClientStates(ABC):
    """Per-client state (SCAFFOLD's ``c_i``) as of one round, read and written one client at a time."""

    @abstractmethod
    def get(self, client: int) -> Weights | None:
        """The client's state for this round; None before it first contributed."""

    @abstractmethod
    def put(self, client: int, arrays: Weights) -> None:
        """The client's state for the next round (written before the next round's weights)."""


class InMemoryClientStates(ClientStates):
    """Client states in a dict: what a strategy driven outside fedkeeper (a test, a replay) keeps."""

    def __init__(self) -> None:
        self.current: dict[int, Weights] = {}
        self.written: dict[int, Weights] = {}

    def get(self, client: int) -> Weights | None:
        return self.current.get(client)

    def put(self, client: int, arrays: Weights) -> None:
        self.written[client] = [np.array(a) for a in arrays]

    def advance(self) -> None:
        """Make the states written this round current for the next one."""
        self.current.update(self.written)
        self.written = {}
