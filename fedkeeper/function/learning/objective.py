"""The client's local objective as a strategy shapes it: FedProx's proximal term and SCAFFOLD's
gradient correction, in one compiled training step.

For each batch the step minimises ``loss(w) + proximal_mu / 2 * sum_l ||w_l - anchor_l||^2``
(Flower's FedProx formulation, ``anchor`` the round's global weights) and adds ``correction``
(SCAFFOLD's ``c - c_i``) to the gradient before the optimizer applies it. Plain training
(``proximal_mu = 0``, no correction) keeps Keras' ``fit``; this step runs only when a strategy asks
for either term. The anchor, correction and ``mu`` live in TensorFlow variables of the cached
model, so a warm worker reuses the compiled step with new values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkeeper.function.learning.models import CachedModel


@dataclass(frozen=True, eq=False)
class Terms:
    """What the strategy adds to one client's training."""

    anchor: Sequence[np.ndarray]
    proximal_mu: float = 0.0
    correction: Sequence[np.ndarray] | None = None


class _Step:
    """The compiled step of one cached model and the variables it reads."""

    def __init__(self, model: Any) -> None:
        import keras
        import tensorflow as tf

        variables = model.trainable_variables
        self.anchor = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.correction = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.mu = tf.Variable(0.0, dtype=variables[0].dtype, trainable=False)
        per_example = keras.losses.get(model.loss)  # the compiled loss, averaged over the batch as fit does

        def objective(x: Any, y: Any, training: bool) -> tuple[Any, Any]:
            predictions = model(x, training=training)
            data_loss = tf.reduce_mean(per_example(y, predictions))
            proximal = tf.add_n(
                [tf.reduce_sum(tf.square(w - a)) for w, a in zip(variables, self.anchor, strict=True)]
            )
            return data_loss + 0.5 * self.mu * proximal, predictions

        def train(x: Any, y: Any) -> tuple[Any, Any]:
            with tf.GradientTape() as tape:
                loss, predictions = objective(x, y, True)
            gradients = tape.gradient(loss, variables)
            corrected = [g + c for g, c in zip(gradients, self.correction, strict=True)]
            model.optimizer.apply_gradients(zip(corrected, variables, strict=True))
            hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(predictions, axis=1), y), tf.float32))
            return loss, hits

        self.train = tf.function(train, reduce_retracing=True)
        self.objective = tf.function(lambda x, y: objective(x, y, False)[0], reduce_retracing=True)

    def load(self, terms: Terms) -> None:
        for variable, value in zip(self.anchor, terms.anchor, strict=True):
            variable.assign(value)
        self.mu.assign(terms.proximal_mu)
        for variable, value in zip(self.correction, _or_zeros(terms.correction, terms.anchor), strict=True):
            variable.assign(value)


def _or_zeros(arrays: Sequence[np.ndarray] | None, like: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    return arrays if arrays is not None else [np.zeros_like(a) for a in like]


def _step(entry: CachedModel) -> _Step:
    if entry.objective_step is None:
        entry.objective_step = _Step(entry.model)
    step: _Step = entry.objective_step
    return step


def train_epochs(
    entry: CachedModel,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    batch_size: int,
    rng: np.random.Generator,
    terms: Terms,
) -> tuple[float, float]:
    """Train ``epochs`` with the terms; returns the last epoch's mean objective and accuracy, as
    Keras' ``fit`` reports them (batch losses weighted by batch size). Hold ``entry.lock``."""
    step = _step(entry)
    step.load(terms)
    loss = accuracy = math.nan
    for _ in range(epochs):
        order = rng.permutation(len(x))
        total = hits = 0.0
        for start in range(0, len(x), batch_size):
            rows = order[start : start + batch_size]
            batch_loss, batch_hits = step.train(x[rows], y[rows])
            total += float(batch_loss) * len(rows)
            hits += float(batch_hits)
        loss, accuracy = total / len(x), hits / len(x)
    return loss, accuracy


def objective_value(entry: CachedModel, x: np.ndarray, y: np.ndarray, terms: Terms) -> float:
    """The objective (loss plus proximal term) at the model's current weights on one batch."""
    step = _step(entry)
    step.load(terms)
    return float(step.objective(x, y))
