"""DP-FedAvg with fixed clipping on the server (McMahan et al., 2018; Flower's
``DifferentialPrivacyServerSideFixedClipping`` over FedAvg).

Each update's change ``y_i - x`` is scaled to L2 norm at most ``clipping_norm``; the clipped
updates are averaged by example count; Gaussian noise of standard deviation
``noise_multiplier * clipping_norm / k`` (``k`` clients selected for the round) is added to every
coordinate. The noise is drawn from a generator seeded by ``server_config.seed`` and the round, so
a resumed session adds the same noise. As Flower's, a round with any failure or rejected update
keeps the global weights unchanged: the noise is calibrated to ``k`` contributions. Streaming,
O(model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedkeeper.function.strategies.base import RoundContext, cast_like
from fedkeeper.function.strategies.checks import non_negative, positive
from fedkeeper.function.strategies.fedavg import FedAvg
from fedkeeper.function.strategies.records import Failure, FitRes, Weights
from fedkeeper.function.strategies.state import StrategyState
from fedkeeper.function.strategies.streaming import as_float64


def noise_seed(seed: int, round_number: int) -> int:
    """The round's noise seed: a 32-bit draw from ``SeedSequence((seed, round))``."""
    return int(np.random.SeedSequence([seed % 2**64, round_number]).generate_state(1)[0])


class DPFedAvgFixed(FedAvg):
    """Central DP: server-side fixed clipping, FedAvg, seeded Gaussian noise."""

    name = "dpfedavg_fixed"
    shard_exact = False  # clips by the whole update's norm and draws noise over all arrays in turn
    hierarchy_exact = False  # clips each update before the mean (a partial sum hides them)
    folds_late = False  # its noise is calibrated to the round's selected clients' updates only

    def __init__(self, clipping_norm: float, noise_multiplier: float) -> None:
        super().__init__()
        self.clipping_norm = positive("clipping_norm", clipping_norm)
        self.noise_multiplier = non_negative("noise_multiplier", noise_multiplier)

    def _begin(self, context: RoundContext) -> None:
        super()._begin(context)
        self._x = as_float64(context.current)
        self._clipped = 0

    def _accumulate(self, result: FitRes) -> None:
        change = [y.astype(np.float64) - x for y, x in zip(result.weights, self._x, strict=True)]
        norm = math.sqrt(sum(float(np.linalg.norm(c.ravel())) ** 2 for c in change))
        scale = 1.0 if norm <= self.clipping_norm else self.clipping_norm / norm
        self._clipped += scale < 1.0
        self._mean.add((x + c * scale for x, c in zip(self._x, change, strict=True)), result.num_examples)

    def _server_step(
        self, average: list[np.ndarray], failures: Sequence[Failure]
    ) -> tuple[Weights | None, StrategyState]:
        context = self.context
        if failures:
            return None, StrategyState({}, {"dp_skipped": f"{len(failures)} selected clients failed"})
        std = self.noise_multiplier * self.clipping_norm / max(context.num_selected, 1)
        # A legacy RandomState: the same seed draws the same noise as Flower's np.random.normal.
        generator = np.random.RandomState(noise_seed(context.seed, context.round_number))
        noisy = [a + generator.normal(0, std, a.shape).astype(a.dtype) for a in average]
        metrics = {"dp_clipped": self._clipped, "dp_noise_std": std}
        return cast_like(noisy, context.current), StrategyState({}, metrics)
