"""Strategies by the name ``server_config.strategy`` uses: the only list of names.

A strategy's parameters are its constructor's keyword arguments, with Flower's names, and
federated evaluation's (:meth:`Strategy.evaluating`: ``fraction_evaluate``,
``min_evaluate_clients``), which every strategy takes; they are read from the signatures, so
adding a strategy is its class and one entry here.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Mapping
from typing import Any

from fedkeeper.function.errors import ConfigError
from fedkeeper.function.strategies.base import Strategy
from fedkeeper.function.strategies.dpfedavg import DPFedAvgFixed
from fedkeeper.function.strategies.fedavg import FedAvg
from fedkeeper.function.strategies.fedavgm import FedAvgM
from fedkeeper.function.strategies.fedmedian import FedMedian
from fedkeeper.function.strategies.fednova import FedNova
from fedkeeper.function.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fedkeeper.function.strategies.fedprox import FedProx
from fedkeeper.function.strategies.fedtrimmedavg import FedTrimmedAvg
from fedkeeper.function.strategies.krum import Krum
from fedkeeper.function.strategies.scaffold import Scaffold

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedAvgM,
        FedAdam,
        FedYogi,
        FedAdagrad,
        FedProx,
        Scaffold,
        FedNova,
        FedMedian,
        FedTrimmedAvg,
        Krum,
        DPFedAvgFixed,
    )
}


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as ``name``; unknown names raise :class:`ConfigError` listing the known."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None


def _keywords(function: Any) -> dict[str, inspect.Parameter]:
    return {key: p for key, p in inspect.signature(function).parameters.items() if key != "self"}


EVALUATE_PARAMETERS = _keywords(Strategy.evaluating)


def parameters(name: str) -> dict[str, inspect.Parameter]:
    """``name``'s parameters in declaration order, with their defaults: its constructor's keywords,
    then federated evaluation's."""
    return {**_keywords(strategy_class(name).__init__), **EVALUATE_PARAMETERS}


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """A new ``name`` strategy with ``params``; any bad name, key, type or range is one-line :class:`ConfigError`."""
    cls = strategy_class(name)
    params = dict(params or {})
    valid = parameters(name)
    listed = ", ".join(valid)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"{name}: unknown parameter(s) {', '.join(map(repr, unknown))}; valid: {listed}")
    missing = [key for key, p in valid.items() if p.default is inspect.Parameter.empty and key not in params]
    if missing:
        raise ConfigError(f"{name}: missing parameter(s) {', '.join(missing)}; valid: {listed}")
    hints = {**typing.get_type_hints(cls.__init__), **typing.get_type_hints(Strategy.evaluating)}
    for key, value in params.items():
        _check_type(name, key, value, hints[key])
    own = {k: v for k, v in params.items() if k not in EVALUATE_PARAMETERS}
    evaluation = {k: v for k, v in params.items() if k in EVALUATE_PARAMETERS}
    try:
        return cls(**own).evaluating(**evaluation)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _check_type(strategy: str, key: str, value: Any, hint: Any) -> None:
    kinds = set(typing.get_args(hint)) or {hint}
    if value is None and type(None) in kinds:
        return
    if isinstance(value, bool):
        ok = bool in kinds
    elif isinstance(value, int):
        ok = bool(kinds & {int, float})
    elif isinstance(value, float):
        ok = float in kinds and math.isfinite(value)
    else:
        ok = False
    if not ok:
        wanted = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ConfigError(f"{strategy}: {key} must be {wanted} (got {value!r})")
