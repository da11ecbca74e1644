"""Which clients train in a round: ``random``, ``round_robin``, ``straggler_aware`` or ``min_cost_to_target``.

``random`` and ``round_robin`` need nothing but the round number and the seed. ``straggler_aware``
(in the spirit of FedLesScan, Elzohairy et al., 2022) also reads each client's history, folded
once per round from the activation ledger into a :class:`ClientStats`: it prefers clients likely
to finish before the round's deadline, while a rotation share of every round goes to the clients
picked least recently, so every client (and its data partition) trains at least once in every
``rotation_rounds`` consecutive rounds. ``min_cost_to_target`` (``server_config.objective``) keeps
the same rotation and prefers the clients whose updates are cheapest (:class:`ClientRate`). See
docs/selection.md for the heuristics and their bound.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

EVALUATE_STREAM = 1  # federated evaluation's draws: apart from random selection's for the same round
EWMA_ALPHA = 0.5  # weight of the newest duration: two rounds mostly forget a one-off slow run
MIN_SPREAD_S = 0.1  # a duration's spread is never taken as smaller than this, nor 10 % of its mean


@dataclass(frozen=True)
class ClientStats:
    """One client's history: what its attempts did, as running aggregates.

    Attributes
    ----------
    successes, failures
        Attempts that delivered; attempts that failed (outages are nobody's failure: not counted).
    lates
        Rounds that closed while the client's attempt was still running.
    runs
        Attempts whose run time the platform reported (the durations below average over them).
    cold_starts
        Runs the platform reported as cold starts.
    mean_s, spread_s
        EWMA of the warm run time and of its absolute deviation, seconds.
    init_s
        EWMA of a cold start's initialisation, seconds.
    last_selected
        The last round the client was selected for; -1 if never.
    """

    successes: int = 0
    failures: int = 0
    lates: int = 0
    runs: int = 0
    cold_starts: int = 0
    mean_s: float = 0.0
    spread_s: float = 0.0
    init_s: float = 0.0
    last_selected: int = -1

    # ------------------------------------------------------------------ folding in
    def ran(self, duration_s: float, init_s: float | None = None) -> ClientStats:
        """Fold in a run the platform timed (``init_s``: its cold start's initialisation)."""
        warm = max(duration_s - (init_s or 0.0), 0.0)
        if self.runs == 0:
            mean, spread = warm, 0.0
        else:
            mean = (1 - EWMA_ALPHA) * self.mean_s + EWMA_ALPHA * warm
            spread = (1 - EWMA_ALPHA) * self.spread_s + EWMA_ALPHA * abs(warm - self.mean_s)
        changes: dict[str, Any] = {"runs": self.runs + 1, "mean_s": mean, "spread_s": spread}
        if init_s is not None:
            cold = self.cold_starts
            changes["cold_starts"] = cold + 1
            changes["init_s"] = init_s if cold == 0 else (1 - EWMA_ALPHA) * self.init_s + EWMA_ALPHA * init_s
        return replace(self, **changes)

    # ------------------------------------------------------------------ predicting
    def p_success(self) -> float:
        """How likely an attempt delivers: successes over outcomes, with one of each assumed (Laplace)."""
        return (self.successes + 1) / (self.successes + self.failures + self.lates + 2)

    def expected_s(self) -> float:
        """Expected run time: the warm mean plus the cold-start share of the initialisation."""
        return self.mean_s + (self.cold_starts / self.runs) * self.init_s if self.runs else 0.0

    def p_in_time(self, deadline_s: float) -> float:
        """How likely a run ends within ``deadline_s``: a normal around :meth:`expected_s` (0.5 if never timed)."""
        if self.runs == 0:
            return 0.5
        mean = self.expected_s()
        spread = max(self.spread_s, 0.1 * mean, MIN_SPREAD_S)
        return 0.5 * (1 + math.erf((deadline_s - mean) / (spread * math.sqrt(2))))

    def p_finish(self, deadline_s: float) -> float:
        """How likely the client delivers before the deadline: the straggler-aware score."""
        return self.p_success() * self.p_in_time(deadline_s)

    # ------------------------------------------------------------------ storing
    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ClientStats:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


NO_HISTORY = ClientStats()


@dataclass(frozen=True)
class SelectionPolicy(ABC):
    """Picks a round's clients; the same inputs always give the same answer.

    Parameters
    ----------
    seed
        ``server_config.seed``: random choices and ties are drawn from ``(seed, round)``.
    """

    name: ClassVar[str]
    uses_history: ClassVar[bool] = False  # whether :meth:`choose` reads ``history``
    seed: int = 0

    @abstractmethod
    def choose(
        self, ids: list[int], k: int, round_number: int, history: Mapping[int, ClientStats]
    ) -> list[int]:
        """``k`` distinct clients of ``ids`` (sorted, distinct, ``1 <= k <= len(ids)``)."""

    def _rng(self, round_number: int) -> np.random.Generator:
        return np.random.default_rng((self.seed % 2**64, round_number % 2**64))


@dataclass(frozen=True)
class RandomSelection(SelectionPolicy):
    """A sample without replacement from a generator seeded by ``(seed, round)``."""

    name: ClassVar[str] = "random"

    def choose(
        self, ids: list[int], k: int, round_number: int, history: Mapping[int, ClientStats]
    ) -> list[int]:
        return [ids[i] for i in self._rng(round_number).choice(len(ids), size=k, replace=False)]


@dataclass(frozen=True)
class RoundRobinSelection(SelectionPolicy):
    """The next ``k`` clients after the previous round's window, wrapping around."""

    name: ClassVar[str] = "round_robin"

    def choose(
        self, ids: list[int], k: int, round_number: int, history: Mapping[int, ClientStats]
    ) -> list[int]:
        start = (round_number * k) % len(ids)
        return [ids[(start + i) % len(ids)] for i in range(k)]


@dataclass(frozen=True)
class Rotating(SelectionPolicy):
    """A rotation share of every round for the clients picked least recently; the rest by :meth:`rank`.

    Each round, ``q = ceil(N / K)`` slots go to the clients selected least recently (never-selected
    ones first), and the other ``k - q`` to the best-ranked among the rest (ties: a seeded draw). A
    client not picked in a round has at least ``q`` fewer clients selected no more recently than
    it, so it is picked within ``K`` rounds of its last selection: every data partition trains.

    Parameters
    ----------
    rotation_rounds
        ``K``, the fairness bound; None for ``2 * ceil(N / k)``. Never below ``ceil(N / k)``, the
        fewest rounds that can cover ``N`` clients ``k`` at a time.
    """

    uses_history: ClassVar[bool] = True
    rotation_rounds: int | None = None

    def bound(self, n: int, k: int) -> int:
        """``K``: every client is selected at least once in every ``K`` consecutive rounds."""
        fewest = math.ceil(n / k)
        return max(fewest, self.rotation_rounds or 2 * fewest)

    @abstractmethod
    def rank(self, client: int, stats: ClientStats) -> tuple[float, ...]:
        """A client's sort key outside the rotation share: smaller is picked first."""

    def choose(
        self, ids: list[int], k: int, round_number: int, history: Mapping[int, ClientStats]
    ) -> list[int]:
        draw = dict(zip(ids, self._rng(round_number).permutation(len(ids)).tolist(), strict=True))
        stats = {c: history.get(c, NO_HISTORY) for c in ids}
        rotation = min(k, math.ceil(len(ids) / self.bound(len(ids), k)))
        by_age = sorted(ids, key=lambda c: (stats[c].last_selected, draw[c]))
        chosen = by_age[:rotation]
        rest = by_age[rotation:]
        rest.sort(key=lambda c: (*self.rank(c, stats[c]), draw[c]))
        return chosen + rest[: k - rotation]


@dataclass(frozen=True)
class StragglerAware(Rotating):
    """Clients likely to finish before the deadline, with a rotation share so everyone takes part.

    Outside the rotation share, the highest :meth:`ClientStats.p_finish` first (ties: shorter
    expected run, then a seeded draw).

    Parameters
    ----------
    deadline_s
        ``server_config.round_deadline_s``: what "in time" means.
    """

    name: ClassVar[str] = "straggler_aware"
    deadline_s: float = 300.0

    def rank(self, client: int, stats: ClientStats) -> tuple[float, ...]:
        return (-stats.p_finish(self.deadline_s), stats.expected_s())


@dataclass(frozen=True)
class ClientRate:
    """What one attempt of a client costs: ``per_second`` of its run, plus ``per_run`` (invocations
    and the bytes it moves), at its platform's prices."""

    per_second: float = 0.0
    per_run: float = 0.0


@dataclass(frozen=True)
class MinCost(Rotating):
    """``objective: min_cost_to_target``: the cheapest expected updates, with a rotation share.

    Outside the rotation share, the lowest expected cost of a delivered update first:
    ``(per_second * expected_s + per_run) / p_success`` (ties: shorter expected run, then a seeded
    draw). The rotation share keeps every partition (and so every label it holds) in training.

    Parameters
    ----------
    rates
        Each client's :class:`ClientRate` (a client without one costs nothing).
    """

    name: ClassVar[str] = "min_cost_to_target"
    rates: Mapping[int, ClientRate] = field(default_factory=dict)

    def expected_cost(self, client: int, stats: ClientStats) -> float:
        rate = self.rates.get(client, ClientRate())
        return (rate.per_second * stats.expected_s() + rate.per_run) / stats.p_success()

    def rank(self, client: int, stats: ClientStats) -> tuple[float, ...]:
        return (self.expected_cost(client, stats), stats.expected_s())


SELECTION_POLICIES: dict[str, type[SelectionPolicy]] = {
    p.name: p for p in (RandomSelection, RoundRobinSelection, StragglerAware, MinCost)
}


def make_selection(
    name: str, seed: int = 0, deadline_s: float = 300.0, rotation_rounds: int | None = None
) -> SelectionPolicy:
    """The policy ``server_config.selection`` names; unknown names raise ``ValueError``."""
    if name not in SELECTION_POLICIES:
        raise ValueError(f"unknown selection policy {name!r}; known: {', '.join(SELECTION_POLICIES)}")
    if name == StragglerAware.name:
        return StragglerAware(seed, rotation_rounds=rotation_rounds, deadline_s=deadline_s)
    if name == MinCost.name:  # its rates are the keeper's, given round by round
        return MinCost(seed, rotation_rounds=rotation_rounds)
    return SELECTION_POLICIES[name](seed)


def select_clients(
    client_ids: Sequence[int],
    k: int,
    round_number: int,
    seed: int,
    policy: str | SelectionPolicy = "random",
    history: Mapping[int, ClientStats] | None = None,
) -> list[int]:
    """``k`` distinct clients for ``round_number``, sorted; the same inputs always give the same answer.

    ``policy``: a :class:`SelectionPolicy` or its name (then built with ``seed`` and defaults).
    ``history``: each client's :class:`ClientStats` (missing clients have none), for policies
    that read it. The order of ``client_ids`` does not matter.
    """
    chooser = make_selection(policy, seed) if isinstance(policy, str) else policy
    ids = sorted(int(i) for i in client_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("client_ids contains duplicates")
    if not 1 <= k <= len(ids):
        raise ValueError(f"cannot select {k} of {len(ids)} clients")
    return sorted(chooser.choose(ids, k, round_number, history or {}))


@dataclass(frozen=True)
class ClientPool:
    """The session's clients and how a round samples them (what Flower's ``ClientManager`` answers).

    A strategy's ``configure_fit`` calls :meth:`sample`, so the configured selection policy (and,
    for ``straggler_aware``, the clients' history read for this round) decides who trains.
    """

    ids: tuple[int, ...]
    per_round: int
    policy: str | SelectionPolicy = "random"
    seed: int = 0
    history: Mapping[int, ClientStats] = field(default_factory=dict)

    def sample(self, round_number: int) -> list[int]:
        """The clients of ``round_number``, sorted (see :func:`select_clients`)."""
        return select_clients(self.ids, self.per_round, round_number, self.seed, self.policy, self.history)

    def sample_evaluate(self, round_number: int, k: int) -> list[int]:
        """``k`` clients drawn at random for federated evaluation, sorted; a draw of its own, apart
        from who trains (as Flower samples evaluation apart from fit)."""
        rng = np.random.default_rng((self.seed % 2**64, round_number % 2**64, EVALUATE_STREAM))
        ids = sorted(self.ids)
        return sorted(ids[i] for i in rng.choice(len(ids), size=k, replace=False))
