"""Which clients train in a round: seeded random samples, or consecutive round-robin windows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def _random(ids: list[int], k: int, round_number: int, seed: int) -> list[int]:
    rng = np.random.default_rng((seed % 2**64, round_number % 2**64))
    return [ids[i] for i in rng.choice(len(ids), size=k, replace=False)]


def _round_robin(ids: list[int], k: int, round_number: int, seed: int) -> list[int]:
    start = (round_number * k) % len(ids)
    return [ids[(start + i) % len(ids)] for i in range(k)]


SELECTION_POLICIES: dict[str, Callable[[list[int], int, int, int], list[int]]] = {
    "random": _random,
    "round_robin": _round_robin,
}


def select_clients(
    client_ids: Sequence[int], k: int, round_number: int, seed: int, policy: str = "random"
) -> list[int]:
    """``k`` distinct clients for ``round_number``, sorted; the same inputs always give the same answer.

    ``random`` samples without replacement from a generator seeded by ``(seed, round_number)``;
    ``round_robin`` takes the next ``k`` clients after the previous round's window, wrapping around.
    The order of ``client_ids`` does not matter.
    """
    if policy not in SELECTION_POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; known: {', '.join(SELECTION_POLICIES)}")
    ids = sorted(int(i) for i in client_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("client_ids contains duplicates")
    if not 1 <= k <= len(ids):
        raise ValueError(f"cannot select {k} of {len(ids)} clients")
    return sorted(SELECTION_POLICIES[policy](ids, k, round_number, seed))


@dataclass(frozen=True)
class ClientPool:
    """The session's clients and how a round samples them (what Flower's ``ClientManager`` answers)."""

    ids: tuple[int, ...]
    per_round: int
    policy: str = "random"
    seed: int = 0

    def sample(self, round_number: int) -> list[int]:
        """The clients of ``round_number``, sorted (see :func:`select_clients`)."""
        return select_clients(self.ids, self.per_round, round_number, self.seed, self.policy)
