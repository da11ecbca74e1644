"""The Keras twins of ``learning.architecture``'s models, compiled for training (``fl_client`` only).

TensorFlow is imported inside the functions, so a process that only partitions data, aggregates
or evaluates never pays for it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedkeeper.function.config import ModelParams
from fedkeeper.function.learning.architecture import architecture
from fedkeeper.function.store.weights import validate_like

if TYPE_CHECKING:
    import keras

# How many compiled models one process keeps (each distinct ModelParams needs its own).
MODEL_CACHE_SIZE = 4


def _keras() -> Any:
    """Import Keras with TensorFlow's C++ logging quieted (must be set before the first import)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


_OPTIMIZERS: dict[str, str] = {"adam": "Adam", "sgd": "SGD", "nadam": "Nadam"}


def make_optimizer(params: ModelParams) -> Any:
    """A fresh ``keras.optimizers.Optimizer`` of ``params.optimizer`` with ``params.learning_rate``."""
    return getattr(_keras().optimizers, _OPTIMIZERS[params.optimizer])(learning_rate=params.learning_rate)


def build_model(params: ModelParams, num_features: int, num_classes: int) -> keras.Model:
    """A new compiled model (sparse categorical cross-entropy, accuracy) with seeded initial weights."""
    model = architecture(params, num_features, num_classes).keras_model(_keras())
    # XLA would recompile for every new batch shape; plain graphs are faster for these small models.
    model.compile(
        optimizer=make_optimizer(params),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    return model


# --------------------------------------------------------------------------- per-process model cache
@dataclass
class CachedModel:
    """A compiled model a warm worker keeps, with what is needed to make it look freshly built."""

    model: Any
    shapes: list[tuple[int, ...]]
    optimizer_start: list[np.ndarray]
    lock: threading.Lock = field(default_factory=threading.Lock)
    objective_step: Any = None  # learning.objective's compiled step, built on first use

    def load(self, weights: Sequence[np.ndarray]) -> None:
        """Set ``weights`` (checked against the model's layout) and restore the optimizer's start."""
        validate_like(list(weights), [np.empty(shape, dtype=np.float32) for shape in self.shapes])
        self.model.set_weights(list(weights))
        # The optimizer's slots and step count, so no state leaks from an earlier activation.
        for variable, start in zip(self.model.optimizer.variables, self.optimizer_start, strict=True):
            variable.assign(start)

    def train_epoch(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
        """One pass over ``(x, y)`` in order, one gradient step per batch; the epoch's loss and accuracy.

        What ``fit(x, y, batch_size, epochs=1, shuffle=False)`` computes (the same steps, metrics
        and weights, bit for bit), through the model's compiled train function: ``fit`` builds and
        traces a new ``tf.data`` pipeline on every call, which costs a warm activation ~0.1-0.2
        CPU-seconds, more than training a small partition.
        """
        self.model.make_train_function()
        self.model.reset_metrics()
        steps = range(0, len(x), batch_size)
        batches = ((x[s : s + batch_size], y[s : s + batch_size]) for s in steps)
        logs: dict[str, Any] = {}
        for _ in steps:
            logs = self.model.train_function(batches)  # takes one batch per call
        return float(logs["loss"]), float(logs["accuracy"])


_models: OrderedDict[tuple[ModelParams, int, int], CachedModel] = OrderedDict()
_models_lock = threading.Lock()


def cached_model(params: ModelParams, num_features: int, num_classes: int) -> CachedModel:
    """The process's compiled model for this key, built on first use (hold ``.lock`` while using it)."""
    key = (params, num_features, num_classes)
    with _models_lock:
        entry = _models.get(key)
        if entry is None:
            model = build_model(params, num_features, num_classes)
            model.optimizer.build(model.trainable_variables)
            entry = CachedModel(
                model,
                [tuple(w.shape) for w in model.get_weights()],
                [np.array(v.numpy()) for v in model.optimizer.variables],
            )
            _models[key] = entry
            while len(_models) > MODEL_CACHE_SIZE:
                _models.popitem(last=False)
        else:
            _models.move_to_end(key)
        return entry


def clear_model_cache() -> None:
    """Drop every cached model (tests; a cold worker)."""
    with _models_lock:
        _models.clear()
