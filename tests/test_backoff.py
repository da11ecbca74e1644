"""The one backoff policy: doubling delays from the base, jitter within its bound, one cap."""

from __future__ import annotations

import pytest

from fedkeeper.function.backoff import RETRY_CAP_S, Backoff, retry_policy


def test_delays_double_from_the_base_and_stop_at_the_cap() -> None:
    policy = Backoff(base_s=0.5, cap_s=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(10_000) == 3.0  # no overflow far past the cap


def test_jitter_adds_at_most_its_bound_and_never_passes_the_cap() -> None:
    policy = Backoff(base_s=1.0, cap_s=2.5, jitter_s=0.5)
    firsts = [policy.delay(1) for _ in range(200)]
    assert all(1.0 <= d <= 1.5 for d in firsts) and len(set(firsts)) > 1
    assert all(policy.delay(2) <= 2.5 for _ in range(200))


def test_a_zero_base_means_no_wait() -> None:
    assert Backoff(base_s=0.0, cap_s=10.0, jitter_s=1.0).delay(3) == 0.0


@pytest.mark.parametrize("base_s", [0.1, 1.0, 8.0])
def test_retry_backoff_s_has_one_cap_for_every_retry_and_probe(base_s: float) -> None:
    policy = retry_policy(base_s)
    assert (policy.base_s, policy.cap_s, policy.jitter_s) == (base_s, RETRY_CAP_S, base_s / 2)
    assert max(policy.delay(n) for n in range(1, 12)) == RETRY_CAP_S
