"""Strategies by the name ``server_config.strategy`` uses."""

from __future__ import annotations

from fedkeeper.function.errors import ConfigError
from fedkeeper.function.strategies.base import Strategy
from fedkeeper.function.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}


def make_strategy(name: str) -> Strategy:
    """A new strategy instance for ``name``; unknown names raise :class:`ConfigError`."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
