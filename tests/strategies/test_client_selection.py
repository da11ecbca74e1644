"""Client selection: deterministic per (seed, round), distinct, covering every client; straggler_aware
prefers clients likely to finish in time, min_cost_to_target cheap ones, and both still select each
within their rotation bound."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from fedkeeper.function.strategies import (
    SELECTION_POLICIES,
    ClientPool,
    ClientRate,
    ClientStats,
    FitConfig,
    MinCost,
    make_selection,
    make_strategy,
    select_clients,
)
from fedkeeper.function.strategies.selection import StragglerAware

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


# ---------------------------------------------------------------------- straggler_aware
FAST, SLOW = ClientStats(successes=3, runs=3, mean_s=2.0), ClientStats(successes=3, runs=3, mean_s=50.0)


def _history(last_selected: dict[int, int]) -> dict[int, ClientStats]:
    """Even clients finish in 2 s, odd ones in 50 s; each last selected as given."""
    return {c: replace(FAST if c % 2 == 0 else SLOW, last_selected=r) for c, r in last_selected.items()}


def test_a_client_likely_to_finish_before_the_deadline_scores_higher() -> None:
    assert FAST.p_finish(10.0) > 0.7 > 0.01 > SLOW.p_finish(10.0)
    flaky = replace(FAST, failures=9)
    assert flaky.p_finish(10.0) < FAST.p_finish(10.0)
    cold = FAST.ran(2.0, init_s=4.0).ran(2.0, init_s=4.0)
    assert cold.expected_s() > FAST.expected_s()  # cold starts add their share of initialisation


def test_straggler_aware_fills_its_scored_slots_with_fast_clients() -> None:
    policy = make_selection("straggler_aware", seed=1, deadline_s=10.0)
    assert isinstance(policy, StragglerAware)
    ids, k = list(range(12)), 4
    rotation = math.ceil(len(ids) / policy.bound(len(ids), k))
    for round_number in range(10):
        history = _history(dict.fromkeys(ids, round_number - 1))  # rotation alone cannot tell them apart
        chosen = select_clients(ids, k, round_number, 1, policy, history)
        assert sum(c % 2 == 0 for c in chosen) >= k - rotation


def test_straggler_aware_selects_every_client_within_its_rotation_bound() -> None:
    ids, k = list(range(10)), 3
    for rotation_rounds in (None, 4, 9):
        policy = StragglerAware(seed=2, deadline_s=10.0, rotation_rounds=rotation_rounds)
        bound = policy.bound(len(ids), k)
        last = dict.fromkeys(ids, -1)
        picks = []
        for round_number in range(40):
            chosen = select_clients(ids, k, round_number, 2, policy, _history(last))
            picks.append(set(chosen))
            last.update(dict.fromkeys(chosen, round_number))
        for start in range(len(picks) - bound + 1):
            assert set().union(*picks[start : start + bound]) == set(ids), (rotation_rounds, start)
        fast = sum(len([c for c in p if c % 2 == 0]) for p in picks)
        if math.ceil(len(ids) / bound) < k:  # slots left beyond the rotation: the fast half gets more
            assert fast > 0.55 * sum(len(p) for p in picks)


def test_client_stats_round_trip_through_a_document() -> None:
    stats = FAST.ran(3.0, init_s=1.0)
    assert ClientStats.from_doc(stats.to_doc()) == stats


def test_a_strategys_configure_fit_selects_through_the_pools_policy_and_history() -> None:
    ids = tuple(range(8))
    history = _history(dict.fromkeys(ids, 0))  # all equally recent: only the scored slots differ
    policy = StragglerAware(seed=4, deadline_s=10.0, rotation_rounds=8)  # one rotation slot of four
    pool = ClientPool(ids, 4, policy, seed=4, history=history)
    fit = make_strategy("fedavg").configure_fit(1, pool, FitConfig(0.1, 1, 8))
    chosen = [ins.client for ins in fit]
    assert chosen == select_clients(ids, 4, 1, 4, policy, history)
    assert sum(c % 2 == 0 for c in chosen) >= 3  # the scored slots went to fast clients


def test_min_cost_prefers_cheap_clients_and_still_selects_every_client_within_its_bound() -> None:
    ids, k = list(range(10)), 3
    # Even clients' updates cost a tenth of odd ones'; every client has run once for 2 s.
    rates = {c: ClientRate(per_second=0.1 if c % 2 == 0 else 1.0, per_run=0.01) for c in ids}
    policy = MinCost(seed=5, rotation_rounds=10, rates=rates)  # one rotation slot of three
    bound = policy.bound(len(ids), k)
    last = dict.fromkeys(ids, -1)
    picks = []
    for round_number in range(30):
        history = {c: replace(ClientStats().ran(2.0), last_selected=last[c]) for c in ids}
        chosen = select_clients(ids, k, round_number, 5, policy, history)
        picks.append(set(chosen))
        last.update(dict.fromkeys(chosen, round_number))
    for start in range(len(picks) - bound + 1):
        assert set().union(*picks[start : start + bound]) == set(ids), start
    cheap = sum(len([c for c in p if c % 2 == 0]) for p in picks)
    assert cheap > 0.6 * sum(len(p) for p in picks)
    stats = ClientStats().ran(2.0)
    assert policy.expected_cost(0, stats) == pytest.approx((0.1 * 2.0 + 0.01) / stats.p_success())
