"""Parity with Flower: the same client results, fed to Flower's strategy and to ours for several
rounds, give the same global weights (relative 1e-6; float64 models, so neither side rounds).

Our strategies carry their state between rounds as a value (what the aggregator stores in
MongoDB); Flower's keep it in the object. Each round's client results are drawn around our
current weights and handed to both sides unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import strategy as flower
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from fedkeeper.function import strategies as ours
from fedkeeper.function.strategies.dpfedavg import noise_seed

ROUNDS = 4
CLIENTS = 6
SEED = 13
SHAPES = [(9, 7), (7,), (7, 4), (4,)]
FIT = ours.FitConfig(learning_rate=0.05, local_epochs=1, batch_size=16)


class Proxy(ClientProxy):
    """A client Flower's client manager can sample; parity tests never call it."""

    def _unused(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Flower called a client in a parity test")

    get_properties = get_parameters = fit = evaluate = reconnect = _unused


def _manager(proxies: list[Proxy]) -> SimpleClientManager:
    manager = SimpleClientManager()
    for proxy in proxies:
        manager.register(proxy)
    return manager


def _results(
    rng: np.random.Generator, current: list[np.ndarray], round_number: int
) -> list[tuple[int, list[np.ndarray], int]]:
    """Updates around the current weights: a shared drift plus per-client noise, one far outlier."""
    drift = [rng.normal(scale=0.05, size=w.shape) for w in current]
    results = []
    for client in range(CLIENTS):
        scale = 2.0 if client == (round_number % CLIENTS) else 0.02
        weights = [w + d + rng.normal(scale=scale, size=w.shape) for w, d in zip(current, drift, strict=True)]
        results.append((client, weights, int(rng.integers(10, 200))))
    return results


def _flower_fit(
    results: list[tuple[int, list[np.ndarray], int]], proxies: list[Proxy]
) -> list[tuple[ClientProxy, FitRes]]:
    return [
        (proxies[client], FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), count, {}))
        for client, weights, count in results
    ]


def _max_relative(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(g - w) / np.maximum(np.abs(w), 1e-12))) for g, w in zip(got, want, strict=True)
    )


def _run_both(
    name: str, params: dict[str, Any], make_flower: Callable[[Parameters], Any], *, dp: bool = False
) -> float:
    """Drive both for ROUNDS rounds; returns the largest relative difference seen."""
    rng = np.random.default_rng(SEED)
    current = [rng.normal(size=s) for s in SHAPES]
    proxies = [Proxy(str(c)) for c in range(CLIENTS)]
    manager = _manager(proxies)
    theirs = make_flower(ndarrays_to_parameters(current))
    state = ours.StrategyState()
    worst = 0.0
    for round_number in range(ROUNDS):
        server_round = round_number + 1
        if dp:  # the DP wrapper learns the round's weights in configure_fit
            theirs.configure_fit(server_round, ndarrays_to_parameters(current), manager)
        results = _results(rng, current, round_number)
        outcome = ours.make_strategy(name, params).aggregate_fit(
            ours.RoundContext(
                round_number, current, state, num_selected=CLIENTS, num_clients=CLIENTS, seed=SEED
            ),
            [ours.FitRes(c, w, n, FIT) for c, w, n in results],
            [],
        )
        if dp:  # Flower draws its noise from numpy's global generator
            np.random.seed(noise_seed(SEED, round_number))
        parameters, _ = theirs.aggregate_fit(server_round, _flower_fit(results, proxies), [])
        assert outcome.weights is not None and parameters is not None
        expected = parameters_to_ndarrays(parameters)
        for got, want in zip(outcome.weights, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
        worst = max(worst, _max_relative(outcome.weights, expected))
        current, state = outcome.weights, outcome.state
    return worst


CASES: dict[str, tuple[str, dict[str, Any], Callable[[Parameters], Any]]] = {
    "fedavg": ("fedavg", {}, lambda p: flower.FedAvg()),
    "fedavgm": (
        "fedavgm",
        {"server_learning_rate": 0.7, "server_momentum": 0.9},
        lambda p: flower.FedAvgM(initial_parameters=p, server_learning_rate=0.7, server_momentum=0.9),
    ),
    "fedavgm-no-momentum": (
        "fedavgm",
        {"server_learning_rate": 1.5},
        lambda p: flower.FedAvgM(initial_parameters=p, server_learning_rate=1.5),
    ),
    "fedadam": (
        "fedadam",
        {"eta": 0.03, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-3},
        lambda p: flower.FedAdam(initial_parameters=p, eta=0.03, beta_1=0.8, beta_2=0.95, tau=1e-3),
    ),
    "fedadam-defaults": ("fedadam", {}, lambda p: flower.FedAdam(initial_parameters=p)),
    "fedyogi": (
        "fedyogi",
        {"eta": 0.02, "beta_1": 0.85, "beta_2": 0.9, "tau": 1e-2},
        lambda p: flower.FedYogi(initial_parameters=p, eta=0.02, beta_1=0.85, beta_2=0.9, tau=1e-2),
    ),
    "fedadagrad": (
        "fedadagrad",
        {"eta": 0.05, "tau": 1e-4},
        lambda p: flower.FedAdagrad(initial_parameters=p, eta=0.05, tau=1e-4),
    ),
    "fedprox": ("fedprox", {"proximal_mu": 0.1}, lambda p: flower.FedProx(proximal_mu=0.1)),
    "fedmedian": ("fedmedian", {}, lambda p: flower.FedMedian()),
    "fedtrimmedavg": ("fedtrimmedavg", {"beta": 0.2}, lambda p: flower.FedTrimmedAvg(beta=0.2)),
    "krum": ("krum", {"num_malicious_clients": 1}, lambda p: flower.Krum(num_malicious_clients=1)),
    "multi-krum": (
        "krum",
        {"num_malicious_clients": 1, "num_clients_to_keep": 3},
        lambda p: flower.Krum(num_malicious_clients=1, num_clients_to_keep=3),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_results_give_flowers_weights_every_round(case: str) -> None:
    name, params, make_flower = CASES[case]
    assert _run_both(name, params, make_flower) < 1e-6


def test_dp_fedavg_fixed_clips_averages_and_adds_flowers_noise_from_the_same_seed() -> None:
    worst = _run_both(
        "dpfedavg_fixed",
        {"clipping_norm": 0.8, "noise_multiplier": 0.3},
        lambda p: flower.DifferentialPrivacyServerSideFixedClipping(
            flower.FedAvg(), noise_multiplier=0.3, clipping_norm=0.8, num_sampled_clients=CLIENTS
        ),
        dp=True,
    )
    assert worst < 1e-6


def test_fedprox_sends_proximal_mu_to_every_client_as_flower_does() -> None:
    proxies = [Proxy(str(c)) for c in range(CLIENTS)]
    theirs = flower.FedProx(proximal_mu=0.25, fraction_fit=0.5).configure_fit(
        1, ndarrays_to_parameters([np.zeros(2)]), _manager(proxies)
    )
    pool = ours.ClientPool(tuple(range(CLIENTS)), CLIENTS // 2)
    mine = ours.make_strategy("fedprox", {"proximal_mu": 0.25}).configure_fit(0, pool, FIT)
    assert len(mine) == len(theirs) == CLIENTS // 2
    assert (
        {ins.config.get("proximal_mu") for _, ins in theirs}
        == {ins.config.proximal_mu for ins in mine}
        == {0.25}
    )


def test_federated_evaluation_weights_losses_by_examples_as_flower_does() -> None:
    rng = np.random.default_rng(SEED)
    rows = [(int(rng.integers(1, 300)), float(rng.random()), float(rng.random())) for _ in range(CLIENTS)]
    theirs, _ = flower.FedAvg().aggregate_evaluate(
        1,
        [
            (Proxy(str(i)), EvaluateRes(Status(Code.OK, ""), loss, n, {"accuracy": acc}))
            for i, (n, loss, acc) in enumerate(rows)
        ],
        [],
    )
    loss, metrics = ours.FedAvg().aggregate_evaluate(
        0, [ours.EvaluateRes(i, n, loss, acc) for i, (n, loss, acc) in enumerate(rows)], []
    )
    assert theirs is not None and loss == pytest.approx(theirs, rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(sum(n * a for n, _, a in rows) / sum(n for n, _, _ in rows))


@pytest.mark.parametrize(
    ("fraction", "minimum", "available"),
    [(0.5, 2, 10), (0.1, 2, 10), (0.3, 1, 7), (1.0, 2, 5), (0.25, 3, 20)],
)
def test_federated_evaluation_samples_as_many_clients_as_flower(
    fraction: float, minimum: int, available: int
) -> None:
    theirs, _ = flower.FedAvg(
        fraction_evaluate=fraction, min_evaluate_clients=minimum
    ).num_evaluation_clients(available)
    strategy = ours.make_strategy("fedavg", {"fraction_evaluate": fraction, "min_evaluate_clients": minimum})
    mine = strategy.configure_evaluate(0, ours.ClientPool(tuple(range(available)), 1))
    assert len(mine) == theirs


def test_no_federated_evaluation_at_fraction_evaluate_zero_as_in_flower() -> None:
    manager = _manager([Proxy(str(i)) for i in range(CLIENTS)])
    parameters = ndarrays_to_parameters([np.zeros(2)])
    assert flower.FedAvg(fraction_evaluate=0.0).configure_evaluate(1, parameters, manager) == []
    assert ours.make_strategy("fedavg").configure_evaluate(0, ours.ClientPool(tuple(range(CLIENTS)), 1)) == []
