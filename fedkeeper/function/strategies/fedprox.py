"""FedProx (Li et al., 2020): FedAvg on the server, a proximal term in the clients' loss.

Each client minimises ``loss(w) + proximal_mu / 2 * ||w - w_global||^2`` (Flower's formulation,
squared L2 norm over all layers); the term is added in the client's TensorFlow training
(:mod:`fedkeeper.function.learning.objective`). ``proximal_mu = 0`` is FedAvg.
"""

from __future__ import annotations

from dataclasses import replace

from fedkeeper.function.strategies.checks import non_negative
from fedkeeper.function.strategies.fedavg import FedAvg
from fedkeeper.function.strategies.records import FitConfig


class FedProx(FedAvg):
    """FedAvg that sends ``proximal_mu`` with every client's instructions."""

    name = "fedprox"
    client_objective = True

    def __init__(self, proximal_mu: float) -> None:
        super().__init__()
        self.proximal_mu = non_negative("proximal_mu", proximal_mu)

    def fit_config(self, base: FitConfig) -> FitConfig:
        return replace(base, proximal_mu=self.proximal_mu)
