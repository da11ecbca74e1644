"""The training core of ``fl_client``.

A warm worker reuses its compiled model and train function but restores the optimizer's initial
state and shuffles with its own seeded generator, so a warm call returns exactly what a cold one
would. Evaluation is in numpy (``learning.evaluation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedkeeper.function.config import ModelParams
from fedkeeper.function.learning.evaluation import check_inputs
from fedkeeper.function.learning.models import cached_model
from fedkeeper.function.learning.objective import Terms, train_epochs
from fedkeeper.function.store.weights import validate_like


@dataclass(frozen=True, eq=False)
class LocalResult:
    """One client's update: new weights, how many examples trained them, last-epoch loss and accuracy."""

    weights: list[np.ndarray]
    num_examples: int
    loss: float
    accuracy: float


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
    x, y = check_inputs(x, y)
    rng = np.random.default_rng((params.seed if seed is None else seed) % 2**64)
    entry = cached_model(params, x.shape[1], num_classes)
    with entry.lock:
        entry.load(weights)
        if proximal_mu > 0 or correction is not None:
            if correction is not None:
                validate_like(list(correction), list(weights))
            terms = Terms(anchor=list(weights), proximal_mu=proximal_mu, correction=correction)
            loss, accuracy = train_epochs(entry, x, y, params.local_epochs, params.batch_size, rng, terms)
            return LocalResult(entry.model.get_weights(), len(x), loss, accuracy)
        loss = accuracy = float("nan")
        # Our own permutation per epoch: Keras' shuffle draws from global TF state, which differs
        # between a warm and a cold worker.
        for _ in range(params.local_epochs):
            order = rng.permutation(len(x))
            loss, accuracy = entry.train_epoch(x[order], y[order], params.batch_size)
        new_weights: list[np.ndarray] = entry.model.get_weights()
    return LocalResult(new_weights, len(x), loss, accuracy)
