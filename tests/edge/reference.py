"""A float32 numpy trainer with the guest's exact semantics (Keras' formulas, the guest's shuffle).

Tests compare the guest against it; it is deliberately written as plain array code, not by
calling into the guest's design, so it checks the C trainer independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

F = np.float32


@dataclass
class Result:
    weights: list[np.ndarray]
    loss: float
    accuracy: float
    steps: int


def xorshift_order(n: int, epochs: int, seed: int) -> list[np.ndarray]:
    """The guest's per-epoch Fisher-Yates permutations (xorshift32 seeded with seed ^ 0x9E3779B9)."""
    state = (seed ^ 0x9E3779B9) & 0xFFFFFFFF or 1
    orders = []
    for _ in range(epochs):
        order = list(range(n))
        for i in range(n - 1, 0, -1):
            state ^= (state << 13) & 0xFFFFFFFF
            state ^= state >> 17
            state ^= (state << 5) & 0xFFFFFFFF
            j = state % (i + 1)
            order[i], order[j] = order[j], order[i]
        orders.append(np.array(order))
    return orders


def forward(weights: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    """Activations of every layer; the last is the softmax output."""
    acts = [x.astype(F)]
    layers = len(weights) // 2
    for layer in range(layers):
        z = acts[-1] @ weights[2 * layer] + weights[2 * layer + 1]
        if layer + 1 < layers:
            z = np.maximum(z, F(0))
        acts.append(z.astype(F))
    z = acts[-1].astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    acts[-1] = (e / e.sum(axis=1, keepdims=True)).astype(F)
    return acts


def loss_and_accuracy(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    p = forward(weights, x)[-1].astype(np.float64)
    return float(-np.mean(np.log(p[np.arange(len(y)), y]))), float(np.mean(p.argmax(axis=1) == y))


def train(
    weights: list[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "sgd",
    seed: int = 0,
    shuffle: bool = True,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
) -> Result:
    w = [np.array(a, dtype=F) for a in weights]
    m = [np.zeros_like(a) for a in w]
    v = [np.zeros_like(a) for a in w]
    n, layers = len(y), len(w) // 2
    orders = xorshift_order(n, epochs, seed) if shuffle else [np.arange(n)] * epochs
    step, u_product, loss_sum, correct = 0, 1.0, 0.0, 0
    for order in orders:
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            xb, yb = x[rows].astype(F), y[rows]
            acts = forward(w, xb)
            p = acts[-1]
            logp = np.log(p.astype(np.float64)[np.arange(len(rows)), yb])
            loss_sum += float(-logp.sum())
            correct += int(np.sum(p.argmax(axis=1) == yb))
            delta = p.copy()
            delta[np.arange(len(rows)), yb] -= F(1)
            delta = (delta * F(1.0 / len(rows))).astype(F)
            grads: list[np.ndarray] = [np.empty(0)] * len(w)
            for layer in reversed(range(layers)):
                grads[2 * layer] = (acts[layer].T @ delta).astype(F)
                grads[2 * layer + 1] = delta.sum(axis=0).astype(F)
                if layer:
                    delta = ((delta @ w[2 * layer].T) * (acts[layer] > 0)).astype(F)
            step += 1
            if optimizer == "sgd":
                w = [(a - F(lr) * g).astype(F) for a, g in zip(w, grads, strict=True)]
                continue
            b1, b2 = F(beta_1), F(beta_2)
            for i, g in enumerate(grads):
                m[i] = (m[i] + (g - m[i]) * (F(1) - b1)).astype(F)
                v[i] = (v[i] + (g * g - v[i]) * (F(1) - b2)).astype(F)
            if optimizer == "adam":
                alpha = F(lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step))
                w = [(a - m[i] * alpha / (np.sqrt(v[i]) + F(epsilon))).astype(F) for i, a in enumerate(w)]
            elif optimizer == "nadam":
                u_t = beta_1 * (1 - 0.5 * 0.96**step)
                u_t1 = beta_1 * (1 - 0.5 * 0.96 ** (step + 1))
                u_product *= u_t
                c_m, c_g = F(u_t1 / (1 - u_product * u_t1)), F((1 - u_t) / (1 - u_product))
                c_v = F(1 / (1 - beta_2**step))
                w = [
                    (a - (c_m * m[i] + c_g * grads[i]) * F(lr) / (np.sqrt(v[i] * c_v) + F(epsilon))).astype(F)
                    for i, a in enumerate(w)
                ]
            else:
                raise ValueError(optimizer)
    return Result(w, loss_sum / n, correct / n, step)


def glorot(sizes: list[int], seed: int) -> list[np.ndarray]:
    """Keras-like initial weights: Glorot-uniform kernels, zero biases."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for fan_in, fan_out in pairwise(sizes):
        limit = np.sqrt(6 / (fan_in + fan_out))
        out += [rng.uniform(-limit, limit, (fan_in, fan_out)).astype(F), np.zeros(fan_out, F)]
    return out
