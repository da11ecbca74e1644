"""FedBuff's server step (Nguyen et al., AISTATS 2022): a buffer of stale deltas into one version.

Each update ``i`` in the buffer trained on model version ``v_i`` and is ``t_i = v - v_i`` versions
stale when version ``v`` is aggregated. Its delta ``d_i = w_i - w_{v_i}`` counts ``s(t_i)`` (see
:func:`staleness_weight`) times its examples ``n_i``::

    w_{v+1} = w_v + eta_g * sum_i s(t_i) n_i d_i / sum_i n_i

With ``s = 1`` and ``eta_g = 1`` on fresh updates this is FedAvg over the buffer. The sum is
folded one update at a time (:class:`~fedkeeper.function.strategies.streaming.WeightedSum`): memory
O(model), not O(buffer x model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedkeeper.function.config import Staleness
from fedkeeper.function.strategies.base import cast_like
from fedkeeper.function.strategies.records import Weights
from fedkeeper.function.strategies.streaming import WeightedSum


def staleness_weight(staleness: Staleness, t: int) -> float:
    """``s(t)``: constant 1, polynomial ``(1 + t)^-a``, hinge ``1 if t <= b else 1 / (a (t - b) + 1)``."""
    if t < 0:
        raise ValueError(f"staleness must be >= 0, got {t}")
    if staleness.kind == "polynomial":
        return float((1.0 + t) ** -staleness.a)
    if staleness.kind == "hinge":
        return 1.0 if t <= staleness.b else 1.0 / (staleness.a * (t - staleness.b) + 1.0)
    return 1.0


class BufferStep:
    """Folds a buffer's deltas in one at a time; :meth:`apply` makes the next version."""

    def __init__(self, current: Weights, staleness: Staleness, server_learning_rate: float) -> None:
        self.current = current
        self.staleness = staleness
        self.eta_g = server_learning_rate
        self._sum = WeightedSum(current)
        self.examples = 0
        self.staleness_seen: list[int] = []

    def add(
        self, weights: Sequence[np.ndarray], base: Sequence[np.ndarray], num_examples: int, t: int
    ) -> None:
        """Fold in one update trained from ``base`` (its version's weights), ``t`` versions stale."""
        delta = (
            np.asarray(w, dtype=np.float64) - np.asarray(b, dtype=np.float64)
            for w, b in zip(weights, base, strict=True)
        )
        self._sum.add(delta, staleness_weight(self.staleness, t) * num_examples)
        self.examples += num_examples
        self.staleness_seen.append(t)

    def apply(self) -> Weights:
        """``w_v + eta_g * sum_i s(t_i) n_i d_i / sum_i n_i``, in the current weights' dtypes."""
        if not self.examples:
            raise ValueError("an empty buffer makes no version")
        step = [
            np.asarray(w, dtype=np.float64) + self.eta_g * total / self.examples
            for w, total in zip(self.current, self._sum.sums, strict=True)
        ]
        return cast_like(step, self.current)
