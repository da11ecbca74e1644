"""Keras models ``mlp`` and ``cnn``, seeded so that round-0 weights are reproducible.

TensorFlow is imported inside the functions, so a process that only partitions data or
aggregates weights never pays for it. Weights are Keras' ``model.get_weights()`` order; for
``mlp`` that is ``[kernel (in, hidden), bias (hidden,), kernel (hidden, out), bias (out,)]``,
float32, the layout the edge guest's C trainer mirrors.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedkeeper.function.config import ModelParams
from fedkeeper.function.errors import ConfigError

if TYPE_CHECKING:
    import keras

# How many compiled models one process keeps (each distinct ModelParams needs its own).
MODEL_CACHE_SIZE = 4


def _keras() -> Any:
    """Import Keras with TensorFlow's C++ logging quieted (must be set before the first import)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras


def _check_dimensions(params: ModelParams, num_features: int, num_classes: int) -> None:
    if params.input_size != num_features:
        raise ConfigError(
            f"model_params.input_size: {params.input_size}, but the data set has {num_features} features"
        )
    if params.output_size != num_classes:
        raise ConfigError(
            f"model_params.output_size: {params.output_size}, but the data set has {num_classes} classes"
        )


def _mlp(keras: Any, params: ModelParams, num_features: int, num_classes: int) -> keras.Model:
    init = keras.initializers.GlorotUniform
    return keras.Sequential(
        [
            keras.Input(shape=(num_features,)),
            keras.layers.Dense(params.hidden_size, activation="relu", kernel_initializer=init(params.seed)),
            keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init(params.seed + 1)),
        ],
        name="mlp",
    )


def _cnn(keras: Any, params: ModelParams, num_features: int, num_classes: int) -> keras.Model:
    side = math.isqrt(num_features)
    if side * side != num_features:
        raise ConfigError(
            f"model_params.model: cnn needs square images, but {num_features} features is not n*n"
        )
    init = keras.initializers.GlorotUniform
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(shape=(num_features,)),
            layers.Reshape((side, side, 1)),
            layers.Conv2D(32, 5, padding="same", activation="relu", kernel_initializer=init(params.seed)),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 5, padding="same", activation="relu", kernel_initializer=init(params.seed + 1)),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(512, activation="relu", kernel_initializer=init(params.seed + 2)),
            layers.Dense(num_classes, activation="softmax", kernel_initializer=init(params.seed + 3)),
        ],
        name="cnn",
    )


_ARCHITECTURES: dict[str, Callable[[Any, ModelParams, int, int], Any]] = {"mlp": _mlp, "cnn": _cnn}
_OPTIMIZERS: dict[str, str] = {"adam": "Adam", "sgd": "SGD", "nadam": "Nadam"}


def _architecture(params: ModelParams, num_features: int, num_classes: int) -> keras.Model:
    _check_dimensions(params, num_features, num_classes)
    return _ARCHITECTURES[params.model](_keras(), params, num_features, num_classes)


def make_optimizer(params: ModelParams) -> Any:
    """A fresh ``keras.optimizers.Optimizer`` of ``params.optimizer`` with ``params.learning_rate``."""
    return getattr(_keras().optimizers, _OPTIMIZERS[params.optimizer])(learning_rate=params.learning_rate)


def build_model(params: ModelParams, num_features: int, num_classes: int) -> keras.Model:
    """A new compiled model (sparse categorical cross-entropy, accuracy) with seeded initial weights."""
    model = _architecture(params, num_features, num_classes)
    # XLA would recompile for every new batch shape; plain graphs are faster for these small models.
    model.compile(
        optimizer=make_optimizer(params),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    return model


def initial_weights(params: ModelParams, num_features: int, num_classes: int) -> list[np.ndarray]:
    """Round-0 weights; the same ``params`` (including ``seed``) give the same arrays in any process."""
    weights: list[np.ndarray] = _architecture(params, num_features, num_classes).get_weights()
    return weights


# --------------------------------------------------------------------------- per-process model cache
@dataclass
class CachedModel:
    """A compiled model kept by a warm worker, with what is needed to make it look freshly built."""

    model: Any
    optimizer_start: list[np.ndarray]
    lock: threading.Lock = field(default_factory=threading.Lock)
    objective_step: Any = None  # learning.objective's compiled step, built on first use

    def reset_optimizer(self) -> None:
        """Restore the optimizer's slots and step count, so no state leaks from an earlier activation."""
        for variable, start in zip(self.model.optimizer.variables, self.optimizer_start, strict=True):
            variable.assign(start)


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
            entry = CachedModel(model, [np.array(v.numpy()) for v in model.optimizer.variables])
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
