"""The client objective strategies shape: FedProx's loss is Flower's formulation on a fixed batch,
and the proximal term and SCAFFOLD's correction change an SGD step by exactly their gradients."""

from __future__ import annotations

import numpy as np
import pytest

from fedkeeper.function.config import ModelParams, TrainingTestData
from fedkeeper.function.learning.architecture import initial_weights
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.models import CachedModel, cached_model
from fedkeeper.function.learning.objective import Terms, objective_value, train_epochs

PARAMS = ModelParams(
    model="mlp", input_size=64, hidden_size=16, output_size=10, optimizer="sgd", learning_rate=0.1
)
MU = 0.7


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset(TrainingTestData(dataset="digits"))
    return data.x_train[:64], data.y_train[:64]


def _weights(seed: int, scale: float = 0.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        w + rng.normal(scale=scale, size=w.shape).astype(np.float32) for w in initial_weights(PARAMS, 64, 10)
    ]


def _flower_fedprox_loss(
    weights: list[np.ndarray], anchor: list[np.ndarray], x: np.ndarray, y: np.ndarray
) -> float:
    """Flower's FedProx client loss, in numpy: cross-entropy + mu / 2 * sum ||w - w_global||^2."""
    w1, b1, w2, b2 = (w.astype(np.float64) for w in weights)
    logits = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    cross_entropy = -np.mean(np.log(probs[np.arange(len(y)), y]))
    proximal = sum(
        float(np.sum((w.astype(np.float64) - a) ** 2)) for w, a in zip(weights, anchor, strict=True)
    )
    return float(cross_entropy + MU / 2 * proximal)


def _entry(weights: list[np.ndarray]) -> CachedModel:
    entry = cached_model(PARAMS, 64, 10)
    entry.load(weights)
    return entry


def _one_step(
    weights: list[np.ndarray], batch: tuple[np.ndarray, np.ndarray], terms: Terms
) -> list[np.ndarray]:
    entry = _entry(weights)
    x, y = batch
    with entry.lock:
        train_epochs(entry, x, y, 1, len(x), np.random.default_rng(0), terms)
        return [np.asarray(w) for w in entry.model.get_weights()]


def test_fedprox_loss_is_flowers_formulation_on_a_fixed_batch(batch: tuple[np.ndarray, np.ndarray]) -> None:
    weights, anchor = _weights(1, scale=0.05), _weights(2)
    entry = _entry(weights)
    with entry.lock:
        ours = objective_value(entry, *batch, Terms(anchor, MU))
        without = objective_value(entry, *batch, Terms(anchor, 0.0))
    assert ours == pytest.approx(_flower_fedprox_loss(weights, anchor, *batch), rel=1e-5)
    assert ours > without


def test_the_objective_step_without_terms_is_kerass_sgd_step(batch: tuple[np.ndarray, np.ndarray]) -> None:
    weights = _weights(3, scale=0.05)
    ours = _one_step(weights, batch, Terms(weights))
    entry = _entry(weights)
    with entry.lock:
        entry.model.fit(*batch, batch_size=len(batch[0]), epochs=1, shuffle=False, verbose=0)
        keras = entry.model.get_weights()
    for a, b in zip(ours, keras, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_the_proximal_term_adds_mu_times_the_distance_to_the_gradient(
    batch: tuple[np.ndarray, np.ndarray],
) -> None:
    weights, anchor = _weights(4, scale=0.05), _weights(5)
    plain = _one_step(weights, batch, Terms(anchor, 0.0))
    prox = _one_step(weights, batch, Terms(anchor, MU))
    for p, q, w, a in zip(prox, plain, weights, anchor, strict=True):
        np.testing.assert_allclose(p - q, -PARAMS.learning_rate * MU * (w - a), rtol=1e-3, atol=1e-6)


def test_scaffolds_correction_is_added_to_every_gradient(batch: tuple[np.ndarray, np.ndarray]) -> None:
    weights = _weights(6, scale=0.05)
    rng = np.random.default_rng(7)
    correction = [rng.normal(scale=0.1, size=w.shape).astype(np.float32) for w in weights]
    plain = _one_step(weights, batch, Terms(weights))
    corrected = _one_step(weights, batch, Terms(weights, correction=correction))
    for p, q, c in zip(corrected, plain, correction, strict=True):
        np.testing.assert_allclose(p - q, -PARAMS.learning_rate * c, rtol=1e-3, atol=1e-6)
