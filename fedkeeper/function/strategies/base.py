"""The strategy interface, in Flower's shape: a strategy owns the algorithm.

``configure_fit`` (in the keeper, when a round opens) picks the clients and tells each what to
do; ``aggregate_fit`` (in ``fl_server_aggregator``) turns the round's updates into the next
global weights; ``configure_evaluate``/``aggregate_evaluate`` (in the keeper, after the round is
aggregated) are federated evaluation of the new weights on the clients' held-out data;
``evaluate`` is the central one. Strategies are numpy only.

Updates stream: ``aggregate_fit`` sees each one once, validates it before any state changes (a
rejected update leaves the aggregate exactly as it was) and folds it in. Strategies of the FedAvg
family keep O(model) memory; the robust ones must hold every update (see
:class:`~fedkeeper.function.strategies.buffered.Buffered`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

import numpy as np

from fedkeeper.function.errors import FedkeeperError, InvalidUpdate
from fedkeeper.function.store.weights import check_update
from fedkeeper.function.strategies.checks import at_least_one, fraction
from fedkeeper.function.strategies.records import (
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitConfig,
    FitIns,
    FitRes,
    Weights,
)
from fedkeeper.function.strategies.selection import ClientPool
from fedkeeper.function.strategies.state import ClientStates, InMemoryClientStates, StrategyState

# Central evaluation: (round, weights) -> (loss, metrics).
EvaluateFn = Callable[[int, Weights], tuple[float, dict[str, float]]]


class NothingToAggregate(FedkeeperError):
    """A round with no accepted update."""


@dataclass(frozen=True, eq=False)
class RoundContext:
    """What the aggregator knows about the round it aggregates.

    ``round_number`` counts from 0; Flower's ``server_round`` is ``round_number + 1``.
    """

    round_number: int
    current: Weights
    state: StrategyState = field(default_factory=StrategyState)
    clients: ClientStates = field(default_factory=InMemoryClientStates)
    num_selected: int = 0
    num_clients: int = 0
    seed: int = 0


@dataclass(frozen=True, eq=False)
class FitOutcome:
    """``aggregate_fit``'s answer.

    ``weights`` None keeps the round's weights (Flower's ``None``). ``rejected`` lists updates
    found invalid while streaming; updates rejected when they were stored arrive as failures.
    """

    weights: Weights | None
    state: StrategyState
    accepted: list[int]
    rejected: dict[int, str]


def cast_like(arrays: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> Weights:
    """``arrays`` in the reference's dtypes (aggregates are computed in float64)."""
    return [np.asarray(a).astype(ref.dtype) for a, ref in zip(arrays, reference, strict=True)]


class Strategy(ABC):
    """One federated algorithm: ``configure_fit`` → clients train → ``aggregate_fit`` → ``evaluate``.

    Class attributes say what the algorithm needs of the rest of the system; the configuration
    checks them once.
    """

    name: ClassVar[str]
    # It carries server state between rounds (and a round after the first must find it).
    stateful: ClassVar[bool] = False
    # It changes the client's objective (proximal term, gradient correction): only fedkeeper's own
    # trainer can run it, not the edge devices' fixed one.
    client_objective: ClassVar[bool] = False
    # Its algebra assumes plain SGD steps on the client (model_params.optimizer: sgd).
    sgd_only: ClassVar[bool] = False
    # Each array of the next weights and state depends only on the same array of the updates,
    # current weights and state: it can aggregate in shards of arrays (aggregation_shards).
    shard_exact: ClassVar[bool] = False
    # The next weights and state depend on the updates only through their example-weighted mean:
    # local aggregators may reduce groups of updates to partial sums (topology hierarchical), and
    # :meth:`step_from_mean` gives exactly what :meth:`aggregate_fit` would.
    hierarchy_exact: ClassVar[bool] = False
    # Its aggregate is an example-weighted mean, so a late update can join a later round's mean,
    # rebased onto that round's weights and counted ``FitRes.weight`` times (mode: semi_async).
    folds_late: ClassVar[bool] = False

    # Federated evaluation, Flower's parameters (set by :meth:`evaluating`). Off by default, unlike
    # Flower's fraction_evaluate 1.0: on FaaS every evaluation is a paid activation.
    fraction_evaluate: float = 0.0
    min_evaluate_clients: int = 2

    def __init__(self) -> None:
        self._context: RoundContext | None = None

    def evaluating(self, fraction_evaluate: float = 0.0, min_evaluate_clients: int = 2) -> Self:
        """Set federated evaluation's parameters, which every strategy takes besides its own.

        ``fraction_evaluate``: the share of the clients that can evaluate which does so after
        each round (0: none); ``min_evaluate_clients``: at least this many (as many as can, if fewer).
        """
        self.fraction_evaluate = fraction("fraction_evaluate", fraction_evaluate)
        self.min_evaluate_clients = at_least_one("min_evaluate_clients", min_evaluate_clients)
        return self

    # ------------------------------------------------------------------ fit
    def configure_fit(self, round_number: int, pool: ClientPool, base: FitConfig) -> list[FitIns]:
        """Which clients train in ``round_number`` and what each is told (``base`` from model_params)."""
        config = self.fit_config(base)
        return [FitIns(client, config) for client in pool.sample(round_number)]

    def fit_config(self, base: FitConfig) -> FitConfig:
        """The instructions every selected client gets; strategies add theirs."""
        return base

    def fit_correction(
        self, state: StrategyState, client_state: Weights | None, like: Weights
    ) -> Weights | None:
        """What the client adds to each gradient (SCAFFOLD's ``c - c_i``); None for plain training."""
        return None

    def aggregate_fit(
        self, context: RoundContext, results: Iterable[FitRes | Failure], failures: Sequence[Failure]
    ) -> FitOutcome:
        """Stream ``results`` into the next global weights and state.

        ``failures`` are the selected clients without a usable update, known before streaming;
        ``results`` may also yield a :class:`Failure` for an update found unreadable on the way.
        Raises :class:`NothingToAggregate` when no update is accepted.
        """
        failures = list(failures)
        accepted: list[int] = []
        rejected: dict[int, str] = {}
        self._context = context
        self._begin(context)
        for item in results:
            if isinstance(item, Failure):
                failures.append(item)
                if item.rejected:
                    rejected[item.client] = item.reason
                continue
            reason = why_invalid(item, context.current)
            if reason is not None:
                rejected[item.client] = reason
                failures.append(Failure(item.client, reason, rejected=True))
                continue
            self._accumulate(item)
            accepted.append(item.client)
        if not accepted:
            raise NothingToAggregate(
                f"round {context.round_number}: no accepted update ({len(failures)} failed or rejected)"
            )
        weights, state = self._finish(failures)
        return FitOutcome(weights, state, accepted, rejected)

    def step_from_mean(
        self, context: RoundContext, mean: list[np.ndarray], failures: Sequence[Failure]
    ) -> tuple[Weights | None, StrategyState]:
        """The server step from the float64 example-weighted ``mean`` of the round's accepted
        updates (combined from local aggregators' partials); hierarchy-exact strategies only."""
        raise NotImplementedError(f"{self.name} is not hierarchy-exact: it needs every update")

    # ------------------------------------------------------------------ evaluation
    def configure_evaluate(self, round_number: int, pool: ClientPool) -> list[EvaluateIns]:
        """Which clients evaluate round ``round_number``'s new weights on their held-out data.

        As Flower's: none when ``fraction_evaluate`` is 0, else ``max(int(n * fraction_evaluate),
        min_evaluate_clients)`` of the ``n`` clients in ``pool`` drawn at random (seeded by the
        round); capped at ``n``, where Flower would wait for more clients to connect.
        """
        if self.fraction_evaluate == 0.0 or not pool.ids:
            return []
        wanted = max(int(len(pool.ids) * self.fraction_evaluate), self.min_evaluate_clients)
        return [
            EvaluateIns(client) for client in pool.sample_evaluate(round_number, min(wanted, len(pool.ids)))
        ]

    def aggregate_evaluate(
        self, round_number: int, results: Iterable[EvaluateRes], failures: Sequence[Failure]
    ) -> tuple[float | None, dict[str, float]]:
        """Example-weighted mean loss (Flower's ``weighted_loss_avg``) and accuracy; None without results."""
        examples = loss = accuracy = 0.0
        for res in results:
            examples += res.num_examples
            loss += res.num_examples * res.loss
            accuracy += res.num_examples * res.accuracy
        if examples == 0:
            return None, {}
        return loss / examples, {"accuracy": accuracy / examples}

    def evaluate(
        self, round_number: int, weights: Weights, evaluate_fn: EvaluateFn | None
    ) -> tuple[float, dict[str, float]] | None:
        """Central evaluation of the new global weights (None without an evaluation function)."""
        return None if evaluate_fn is None else evaluate_fn(round_number, weights)

    # ------------------------------------------------------------------ for subclasses
    @property
    def context(self) -> RoundContext:
        if self._context is None:
            raise RuntimeError(f"{type(self).__name__}: no round is being aggregated")
        return self._context

    @abstractmethod
    def _begin(self, context: RoundContext) -> None:
        """Reset the running aggregate for a round."""

    @abstractmethod
    def _accumulate(self, result: FitRes) -> None:
        """Fold in an update that passed validation; must not keep it unless the strategy buffers."""

    @abstractmethod
    def _finish(self, failures: Sequence[Failure]) -> tuple[Weights | None, StrategyState]:
        """The next global weights (reference dtypes) and the state to carry on."""


def why_invalid(result: FitRes, reference: Weights) -> str | None:
    """Why an update cannot be aggregated, or None: the one gate every update passed when stored."""
    weights = result.weights
    if not isinstance(weights, list | tuple) or not all(isinstance(a, np.ndarray) for a in weights):
        return f"update must be a list of numpy arrays, got {type(weights).__name__}"
    try:
        check_update(list(weights), result.num_examples, reference)
    except InvalidUpdate as exc:
        return str(exc)
    return None
