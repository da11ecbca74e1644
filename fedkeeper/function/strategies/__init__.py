"""Aggregation strategies behind one streaming interface, and client selection policies."""

from __future__ import annotations

from fedkeeper.function.strategies.base import NothingToAggregate, Strategy
from fedkeeper.function.strategies.fedavg import FedAvg
from fedkeeper.function.strategies.registry import STRATEGIES, make_strategy
from fedkeeper.function.strategies.selection import (
    SELECTION_POLICIES,
    ClientStats,
    SelectionPolicy,
    make_selection,
    select_clients,
)

__all__ = [
    "SELECTION_POLICIES",
    "STRATEGIES",
    "ClientStats",
    "FedAvg",
    "NothingToAggregate",
    "SelectionPolicy",
    "Strategy",
    "make_selection",
    "make_strategy",
    "select_clients",
]
