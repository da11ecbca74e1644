"""The models fedkeeper trains (``mlp``, ``cnn``), defined once as layer lists.

The same definition builds the Keras model a client trains (``learning.models``), the seeded
round-0 weights (:meth:`Architecture.initial_weights`, Keras' layout and initializer in numpy) and
the numpy forward pass the aggregator evaluates with (``learning.evaluation``), so only
``fl_client`` imports TensorFlow. Weights are Keras' ``model.get_weights()`` order, float32; for
``mlp`` that is ``[kernel (in, hidden), bias (hidden,), kernel (hidden, out), bias (out,)]``, the
layout the edge guest's C trainer mirrors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkeeper.function.config import ModelParams
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.learning.glorot import glorot_uniform
from fedkeeper.function.learning.layers import (
    Affine,
    Conv2D,
    Dense,
    Flatten,
    Layer,
    MaxPool2D,
    Reshape,
    Shape,
)


@dataclass(frozen=True)
class Architecture:
    """A sequential model: flat inputs of ``input_size`` features through ``layers``.

    The k-th layer with weights (counting from 0) draws its kernel with ``GlorotUniform(seed + k)``
    and starts its bias at zero, as the Keras models always have.
    """

    name: str
    input_size: int
    layers: tuple[Layer, ...]
    seed: int

    def shapes(self) -> list[tuple[Layer, Shape, list[Shape]]]:
        """Each layer with its input shape and its weights' shapes."""
        shape: Shape = (self.input_size,)
        out = []
        for layer in self.layers:
            out.append((layer, shape, layer.weight_shapes(shape)))
            shape = layer.output_shape(shape)
        return out

    def weight_shapes(self) -> list[Shape]:
        return [s for _, _, shapes in self.shapes() for s in shapes]

    def initial_weights(self) -> list[np.ndarray]:
        """Round-0 weights: the same arrays Keras draws for this model and seed, in any process."""
        weights: list[np.ndarray] = []
        weighted = [shapes for _, _, shapes in self.shapes() if shapes]
        for k, (kernel, bias) in enumerate(weighted):
            weights += [glorot_uniform(kernel, self.seed + k), np.zeros(bias, dtype=np.float32)]
        return weights

    def logits(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        """The last layer's output before its activation, for a batch ``x`` of flat float32 inputs."""
        arrays = iter(weights)
        *body, (last, _, last_shapes) = self.shapes()
        for layer, _, shapes in body:
            x = layer.forward(x, [next(arrays) for _ in shapes])
        assert isinstance(last, Affine), "every model ends in a layer with weights"
        return last.affine(x, [next(arrays) for _ in last_shapes])

    def keras_model(self, keras: Any) -> Any:
        """The Keras ``Sequential`` twin of this architecture (drawing its own initial weights)."""
        built, k = [], 0
        for layer in self.layers:
            built.append(layer.keras(keras, self.seed + k))
            k += isinstance(layer, Affine)
        return keras.Sequential([keras.Input(shape=(self.input_size,)), *built], name=self.name)


def _mlp(params: ModelParams, num_features: int, num_classes: int) -> tuple[Layer, ...]:
    return (Dense(params.hidden_size, "relu"), Dense(num_classes, "softmax"))


def _cnn(params: ModelParams, num_features: int, num_classes: int) -> tuple[Layer, ...]:
    side = math.isqrt(num_features)
    if side * side != num_features:
        raise ConfigError(
            f"model_params.model: cnn needs square images, but {num_features} features is not n*n"
        )
    return (
        Reshape((side, side, 1)),
        Conv2D(32, 5, "relu"),
        MaxPool2D(2),
        Conv2D(64, 5, "relu"),
        MaxPool2D(2),
        Flatten(),
        Dense(512, "relu"),
        Dense(num_classes, "softmax"),
    )


ARCHITECTURES: dict[str, Callable[[ModelParams, int, int], tuple[Layer, ...]]] = {"mlp": _mlp, "cnn": _cnn}


def architecture(params: ModelParams, num_features: int, num_classes: int) -> Architecture:
    """The model ``params`` names for a data set of ``num_features`` and ``num_classes``."""
    if params.input_size != num_features:
        raise ConfigError(
            f"model_params.input_size: {params.input_size}, but the data set has {num_features} features"
        )
    if params.output_size != num_classes:
        raise ConfigError(
            f"model_params.output_size: {params.output_size}, but the data set has {num_classes} classes"
        )
    layers = ARCHITECTURES[params.model](params, num_features, num_classes)
    return Architecture(params.model, num_features, layers, params.seed)


def initial_weights(params: ModelParams, num_features: int, num_classes: int) -> list[np.ndarray]:
    """Round-0 weights; the same ``params`` (including ``seed``) give the same arrays in any process."""
    return architecture(params, num_features, num_classes).initial_weights()
