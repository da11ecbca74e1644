"""Aggregation strategies behind one streaming interface, and client selection policies."""

from __future__ import annotations

from fedkeeper.function.strategies.base import NothingToAggregate, Strategy
from fedkeeper.function.strategies.fedavg import FedAvg
from fedkeeper.function.strategies.registry import STRATEGIES, make_strategy
from fedkeeper.function.strategies.selection import SELECTION_POLICIES, select_clients

__all__ = [
    "SELECTION_POLICIES",
    "STRATEGIES",
    "FedAvg",
    "NothingToAggregate",
    "Strategy",
    "make_strategy",
    "select_clients",
]
