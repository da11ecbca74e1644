"""Federated strategies in Flower's shape (configure, aggregate, evaluate), and client selection."""

from __future__ import annotations

from fedkeeper.function.strategies.base import (
    EvaluateFn,
    FitOutcome,
    NothingToAggregate,
    RoundContext,
    Strategy,
)
from fedkeeper.function.strategies.buffered import MAX_BUFFER_BYTES, BufferFull
from fedkeeper.function.strategies.dpfedavg import DPFedAvgFixed
from fedkeeper.function.strategies.fedavg import FedAvg
from fedkeeper.function.strategies.fedavgm import FedAvgM
from fedkeeper.function.strategies.fedmedian import FedMedian
from fedkeeper.function.strategies.fednova import FedNova
from fedkeeper.function.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedkeeper.function.strategies.fedprox import FedProx
from fedkeeper.function.strategies.fedtrimmedavg import FedTrimmedAvg
from fedkeeper.function.strategies.krum import Krum
from fedkeeper.function.strategies.records import (
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitConfig,
    FitIns,
    FitRes,
    Weights,
)
from fedkeeper.function.strategies.registry import STRATEGIES, make_strategy, parameters, strategy_class
from fedkeeper.function.strategies.scaffold import Scaffold
from fedkeeper.function.strategies.selection import (
    SELECTION_POLICIES,
    ClientPool,
    ClientRate,
    ClientStats,
    MinCost,
    SelectionPolicy,
    make_selection,
    select_clients,
)
from fedkeeper.function.strategies.state import ClientStates, InMemoryClientStates, StrategyState

__all__ = [
    "MAX_BUFFER_BYTES",
    "SELECTION_POLICIES",
    "STRATEGIES",
    "BufferFull",
    "ClientPool",
    "ClientRate",
    "ClientStates",
    "ClientStats",
    "DPFedAvgFixed",
    "EvaluateFn",
    "EvaluateIns",
    "EvaluateRes",
    "Failure",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedNova",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "FitConfig",
    "FitIns",
    "FitOutcome",
    "FitRes",
    "InMemoryClientStates",
    "Krum",
    "MinCost",
    "NothingToAggregate",
    "RoundContext",
    "Scaffold",
    "SelectionPolicy",
    "Strategy",
    "StrategyState",
    "Weights",
    "make_selection",
    "make_strategy",
    "parameters",
    "select_clients",
    "strategy_class",
]
