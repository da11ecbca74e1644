"""Client selection: deterministic per (seed, round), distinct, and covering every client."""

from __future__ import annotations

import pytest

from fedkeeper.function.strategies import SELECTION_POLICIES, select_clients

CLIENTS = list(range(10, 30))


@pytest.mark.parametrize("policy", list(SELECTION_POLICIES))
def test_selection_is_deterministic_distinct_sorted_and_ignores_input_order(policy: str) -> None:
    for round_number in range(5):
        chosen = select_clients(CLIENTS, 6, round_number, seed=3, policy=policy)
        assert chosen == select_clients(list(reversed(CLIENTS)), 6, round_number, seed=3, policy=policy)
        assert len(set(chosen)) == 6 and set(chosen) <= set(CLIENTS)
        assert chosen == sorted(chosen)


def test_random_selection_changes_with_round_and_seed() -> None:
    by_round = {tuple(select_clients(CLIENTS, 5, r, seed=0)) for r in range(10)}
    by_seed = {tuple(select_clients(CLIENTS, 5, 0, seed=s)) for s in range(10)}
    assert len(by_round) > 5 and len(by_seed) > 5


def test_random_selection_reaches_every_client_over_rounds() -> None:
    seen = {c for r in range(30) for c in select_clients(CLIENTS, 4, r, seed=11)}
    assert seen == set(CLIENTS)


def test_round_robin_takes_consecutive_windows_that_cover_all_clients() -> None:
    ids = list(range(7))
    windows = [select_clients(ids, 3, r, seed=0, policy="round_robin") for r in range(3)]
    assert windows == [[0, 1, 2], [3, 4, 5], [0, 1, 6]]
    assert {c for w in windows for c in w} == set(ids)


def test_negative_seed_is_accepted() -> None:
    assert len(select_clients(CLIENTS, 3, 1, seed=-7)) == 3


@pytest.mark.parametrize(
    ("ids", "k", "policy", "message"),
    [
        ([1, 2, 3], 4, "random", "cannot select 4 of 3"),
        ([1, 2, 3], 0, "random", "cannot select 0 of 3"),
        ([1, 1, 2], 2, "random", "duplicates"),
        ([1, 2, 3], 2, "fastest", "unknown selection policy 'fastest'"),
    ],
)
def test_bad_selection_request_raises_clear_error(ids: list[int], k: int, policy: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_clients(ids, k, 0, seed=0, policy=policy)
