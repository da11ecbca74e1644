"""Test-set loss and accuracy of a model's weights, in numpy (``fl_server_aggregator``).

The forward pass is :meth:`Architecture.logits`, so the aggregator never imports TensorFlow. The
loss is Keras' sparse categorical cross-entropy as Keras computes it for a softmax output (from
the logits before the softmax), averaged over the examples; accuracy is the share of examples
whose largest output is their label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedkeeper.function.config import ModelParams
from fedkeeper.function.learning.architecture import architecture
from fedkeeper.function.store.weights import validate_like

# Examples per forward step: a cnn's im2col rows for 64 MNIST images take ~40 MB.
EVAL_BATCH_SIZE = 64


def check_inputs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as float32 (n, features) and ``y`` as int64 (n,), or a ``ValueError`` saying why not."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(
            f"expected x of shape (n, features) and y of shape (n,), got {x.shape} and {y.shape}"
        )
    if len(x) == 0:
        raise ValueError("no examples")
    return x, y


def evaluate(
    weights: Sequence[np.ndarray], x: np.ndarray, y: np.ndarray, params: ModelParams, num_classes: int
) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``weights`` on ``(x, y)``."""
    x, y = check_inputs(x, y)
    model = architecture(params, x.shape[1], num_classes)
    validate_like(list(weights), [np.empty(shape, dtype=np.float32) for shape in model.weight_shapes()])
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        labels = y[start : start + EVAL_BATCH_SIZE]
        logits = model.logits(x[start : start + EVAL_BATCH_SIZE], weights).astype(np.float64)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_sum = np.log(np.exp(shifted).sum(axis=1))
        loss_sum += float(np.sum(log_sum - shifted[np.arange(len(labels)), labels]))
        correct += int(np.count_nonzero(logits.argmax(axis=1) == labels))
    return loss_sum / len(x), correct / len(x)
