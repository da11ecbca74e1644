"""The one backoff policy: exponential delays from a base, with jitter, up to a cap.

Every wait-and-try-again in fedkeeper is a :class:`Backoff`: the keeper's client retries, its
managing-function retries and its outage probes (one policy from ``server_config.retry_backoff_s``,
:func:`retry_policy`), and the OpenWhisk client's HTTP retries (its own, much shorter policy).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# The cap of ``server_config.retry_backoff_s``: a retry, and a probe of what is down, is never
# further off than this. Short enough that an outage's end is seen soon after it happens.
RETRY_CAP_S = 10.0


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt ``n + 1``: ``min(base_s * 2**(n - 1) + uniform(0, jitter_s), cap_s)``.

    Parameters
    ----------
    base_s
        The first delay; 0 means no delay at all.
    cap_s
        No delay is longer.
    jitter_s
        Up to this much random extra, so that many waiters do not retry in step.
    """

    base_s: float
    cap_s: float
    jitter_s: float = 0.0

    def delay(self, attempt: int) -> float:
        """The delay after the ``attempt``-th failure (1 for the first)."""
        if self.base_s <= 0:
            return 0.0
        exponent = min(max(attempt, 1) - 1, 64)  # past 2**64 every delay is the cap anyway
        return min(self.base_s * 2**exponent + random.uniform(0, self.jitter_s), self.cap_s)

    def tenacity_wait(self, retry_state: Any) -> float:
        """This policy as tenacity's ``wait=`` (it passes the attempt number in ``retry_state``)."""
        return self.delay(int(retry_state.attempt_number))


def retry_policy(base_s: float) -> Backoff:
    """The keeper's policy for ``server_config.retry_backoff_s``: cap :data:`RETRY_CAP_S`, jitter base/2."""
    return Backoff(base_s=base_s, cap_s=RETRY_CAP_S, jitter_s=base_s / 2)
