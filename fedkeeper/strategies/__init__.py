"""Aggregation strategies behind one streaming interface, and client selection policies."""

from __future__ import annotations

from fedkeeper.strategies.base import NothingToAggregate, Strategy
from fedkeeper.strategies.fedavg import FedAvg
from fedkeeper.strategies.registry import STRATEGIES, make_strategy
from fedkeeper.strategies.selection import SELECTION_POLICIES, select_clients

__all__ = [
    "SELECTION_POLICIES",
    "STRATEGIES",
    "FedAvg",
    "NothingToAggregate",
    "Strategy",
    "make_strategy",
    "select_clients",
]
