"""The layers fedkeeper's models are made of, each with its numpy forward pass and its Keras twin.

A layer knows the shapes of its weights (in Keras' ``get_weights()`` order), its output shape, how
to compute its output in numpy (inference only) and which Keras layer it stands for. Shapes leave
out the batch dimension; images are channels-last, as in Keras.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Shape = tuple[int, ...]
Activation = Literal["relu", "softmax"]


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, dtype=x.dtype)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"relu": relu, "softmax": softmax}


class Layer(ABC):
    """One layer of a sequential model."""

    def weight_shapes(self, shape: Shape) -> list[Shape]:
        """Shapes of the layer's weights for an input of ``shape`` (none for most layers)."""
        return []

    @abstractmethod
    def output_shape(self, shape: Shape) -> Shape:
        """The output shape for an input of ``shape``."""

    @abstractmethod
    def forward(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        """The layer's output for a batch ``x`` (inference)."""

    @abstractmethod
    def keras(self, keras: Any, seed: int) -> Any:
        """The Keras layer; a layer with weights draws its kernel with ``GlorotUniform(seed)``."""


class Affine(Layer):
    """A layer with a kernel, a bias and an activation; :meth:`affine` is its output before it."""

    activation: Activation

    @abstractmethod
    def affine(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        """``x`` times the kernel plus the bias."""

    def forward(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        return ACTIVATIONS[self.activation](self.affine(x, weights))


@dataclass(frozen=True)
class Dense(Affine):
    units: int
    activation: Activation

    def weight_shapes(self, shape: Shape) -> list[Shape]:
        return [(shape[0], self.units), (self.units,)]

    def output_shape(self, shape: Shape) -> Shape:
        return (self.units,)

    def affine(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        kernel, bias = weights
        return x @ kernel + bias

    def keras(self, keras: Any, seed: int) -> Any:
        init = keras.initializers.GlorotUniform(seed)
        return keras.layers.Dense(self.units, activation=self.activation, kernel_initializer=init)


@dataclass(frozen=True)
class Conv2D(Affine):
    """Square kernel, stride 1, ``same`` padding (the output keeps the input's height and width)."""

    filters: int
    kernel: int
    activation: Activation

    def weight_shapes(self, shape: Shape) -> list[Shape]:
        return [(self.kernel, self.kernel, shape[2], self.filters), (self.filters,)]

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], shape[1], self.filters)

    def affine(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        kernel, bias = weights
        n, height, width, channels = x.shape
        k = self.kernel
        before = (k - 1) // 2  # Keras' "same": the odd pixel of padding goes after
        padded = np.pad(x, ((0, 0), (before, k - 1 - before), (before, k - 1 - before), (0, 0)))
        # im2col: every k x k x channels patch as one row, in the kernel's (row, column, channel) order
        windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))
        patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * height * width, k * k * channels)
        out = patches @ kernel.reshape(k * k * channels, self.filters) + bias
        return out.reshape(n, height, width, self.filters)

    def keras(self, keras: Any, seed: int) -> Any:
        init = keras.initializers.GlorotUniform(seed)
        return keras.layers.Conv2D(
            self.filters, self.kernel, padding="same", activation=self.activation, kernel_initializer=init
        )


@dataclass(frozen=True)
class MaxPool2D(Layer):
    """Non-overlapping ``size`` x ``size`` windows, ``valid`` padding (a leftover row or column is dropped)."""

    size: int

    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0] // self.size, shape[1] // self.size, shape[2])

    def forward(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        n, height, width, channels = x.shape
        s, rows, cols = self.size, height // self.size, width // self.size
        blocks = x[:, : rows * s, : cols * s, :].reshape(n, rows, s, cols, s, channels)
        return blocks.max(axis=(2, 4))

    def keras(self, keras: Any, seed: int) -> Any:
        return keras.layers.MaxPooling2D(self.size)


@dataclass(frozen=True)
class Reshape(Layer):
    target: Shape

    def output_shape(self, shape: Shape) -> Shape:
        return self.target

    def forward(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        return x.reshape(len(x), *self.target)

    def keras(self, keras: Any, seed: int) -> Any:
        return keras.layers.Reshape(self.target)


@dataclass(frozen=True)
class Flatten(Layer):
    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def forward(self, x: np.ndarray, weights: Sequence[np.ndarray]) -> np.ndarray:
        return x.reshape(len(x), -1)

    def keras(self, keras: Any, seed: int) -> Any:
        return keras.layers.Flatten()
