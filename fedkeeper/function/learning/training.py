"""The training core of ``fl_client`` and the evaluation of ``fl_server_aggregator``.

A warm worker reuses its compiled model but restores the optimizer's initial state and shuffles
with its own seeded generator, so a warm call returns exactly what a cold one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkeeper.function.config import ModelParams
from fedkeeper.function.learning.models import CachedModel, cached_model
from fedkeeper.function.learning.objective import Terms, train_epochs
from fedkeeper.function.store.weights import validate_like

EVAL_BATCH_SIZE = 1024  # evaluation keeps no gradients, so larger batches are only faster


@dataclass(frozen=True, eq=False)
class LocalResult:
    """One client's update: new weights, how many examples trained them, last-epoch loss and accuracy."""

    weights: list[np.ndarray]
    num_examples: int
    loss: float
    accuracy: float


def _inputs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"expected x of shape (n, features) and y of shape (n,), got {x.shape} and {y.shape}"
        )
    if len(x) == 0:
        raise ValueError("no examples")
    return x, y


def _load(entry: CachedModel, weights: Sequence[np.ndarray]) -> None:
    validate_like(list(weights), entry.model.get_weights())
    entry.model.set_weights(list(weights))


def train_local(
    weights: Sequence[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    params: ModelParams,
    num_classes: int,
    *,
    seed: int | None = None,
    proximal_mu: float = 0.0,
    correction: Sequence[np.ndarray] | None = None,
) -> LocalResult:
    """Train ``params.local_epochs`` epochs from ``weights`` on ``(x, y)``.

    ``seed`` (default ``params.seed``) drives the per-epoch shuffling; pass e.g. a value derived
    from client and round to decorrelate clients. ``proximal_mu`` (FedProx) and ``correction``
    (SCAFFOLD's ``c - c_i``, one array per weight) change the objective (see
    :mod:`~fedkeeper.function.learning.objective`).
    """
    x, y = _inputs(x, y)
    rng = np.random.default_rng((params.seed if seed is None else seed) % 2**64)
    entry = cached_model(params, x.shape[1], num_classes)
    with entry.lock:
        _load(entry, weights)
        entry.reset_optimizer()
        if proximal_mu > 0 or correction is not None:
            if correction is not None:
                validate_like(list(correction), list(weights))
            terms = Terms(anchor=list(weights), proximal_mu=proximal_mu, correction=correction)
            loss, accuracy = train_epochs(entry, x, y, params.local_epochs, params.batch_size, rng, terms)
            return LocalResult(entry.model.get_weights(), len(x), loss, accuracy)
        loss = accuracy = float("nan")
        # One fit per epoch with our own permutation: Keras' shuffle draws from global TF state,
        # which differs between a warm and a cold worker.
        for _ in range(params.local_epochs):
            order = rng.permutation(len(x))
            history = entry.model.fit(
                x[order], y[order], batch_size=params.batch_size, epochs=1, shuffle=False, verbose=0
            )
            loss = float(history.history["loss"][-1])
            accuracy = float(history.history["accuracy"][-1])
        new_weights: list[np.ndarray] = entry.model.get_weights()
    return LocalResult(new_weights, len(x), loss, accuracy)


def evaluate(
    weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, params: ModelParams, num_classes: int
) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``weights`` on ``(x, y)``."""
    x, y = _inputs(x, y)
    entry = cached_model(params, x.shape[1], num_classes)
    with entry.lock:
        _load(entry, weights)
        result = entry.model.evaluate(x, y, batch_size=EVAL_BATCH_SIZE, verbose=0, return_dict=True)
    return float(result["loss"]), float(result["accuracy"])
