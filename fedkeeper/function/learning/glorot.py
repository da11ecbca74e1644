"""Keras' ``GlorotUniform(seed)`` in numpy, value for value, so round-0 weights need no TensorFlow.

Keras (TensorFlow backend) draws a seeded initializer with ``tf.random.stateless_uniform`` on the
seed pair ``[seed mod (2**31 - 2), 0]``. On a CPU that is Philox-4x32-10 (Salmon et al., "Parallel
random numbers: as easy as 1, 2, 3", 2011): TensorFlow scrambles the seed pair into a key and a
start counter with one Philox call, then element ``i`` of the flattened output is lane ``i % 4``
of the block at counter ``start + i // 4``, its low 23 bits made a float in ``[0, 1)``.
``tests/learning/test_numpy_model.py`` checks the result against Keras itself.
"""

from __future__ import annotations

import math

import numpy as np

Shape = tuple[int, ...]

_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_KEY_STEPS = (0x9E3779B9, 0xBB67AE85)
_SCRAMBLE_KEY = (0x3EC8F720, 0x02461E29)  # TensorFlow's fixed key for turning a seed into key + counter
_ROUNDS = 10
_LOW32 = np.uint64(0xFFFFFFFF)
_KERAS_SEED_MODULUS = 2**31 - 2  # Keras' TensorFlow backend: floormod(seed, int32.max - 1)


def philox(counter: tuple[np.ndarray, ...], key: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Philox-4x32-10 of each counter (four uint64 arrays holding 32-bit words) under ``key``."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    m0, m1 = np.uint64(_MULTIPLIERS[0]), np.uint64(_MULTIPLIERS[1])
    for _ in range(_ROUNDS):
        p0, p1 = c0 * m0, c2 * m1  # 32 x 32 -> 64-bit products: no overflow in uint64
        c0, c1, c2, c3 = (
            (p1 >> 32) ^ c1 ^ np.uint64(k0),
            p1 & _LOW32,
            (p0 >> 32) ^ c3 ^ np.uint64(k1),
            p0 & _LOW32,
        )
        k0, k1 = (k0 + _KEY_STEPS[0]) & 0xFFFFFFFF, (k1 + _KEY_STEPS[1]) & 0xFFFFFFFF
    return c0, c1, c2, c3


def _words(value: int) -> tuple[int, int]:
    return value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF


def stateless_uniform(shape: Shape, seed: tuple[int, int]) -> np.ndarray:
    """``tf.random.stateless_uniform(shape, seed)`` as float32 in ``[0, 1)`` (Philox on a CPU)."""
    start = tuple(np.array([word], dtype=np.uint64) for word in (*_words(seed[0]), *_words(seed[1])))
    mixed = [int(word[0]) for word in philox(start, _SCRAMBLE_KEY)]
    key = (mixed[0], mixed[1])
    size = math.prod(shape)
    blocks = np.arange((size + 3) // 4, dtype=np.uint64)  # counter (0, 0, mixed[2], mixed[3]) + block
    high = np.full_like(blocks, mixed[2]), np.full_like(blocks, mixed[3])
    lanes = philox((blocks & _LOW32, blocks >> 32, *high), key)
    bits = np.stack(lanes, axis=1).reshape(-1)[:size].astype(np.uint32)
    floats = ((bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1.0)
    return floats.reshape(shape)


def fans(shape: Shape) -> tuple[int, int]:
    """Keras' ``compute_fans``: a dense kernel is (in, out); a conv kernel is (..., in, out)."""
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def glorot_uniform(shape: Shape, seed: int) -> np.ndarray:
    """``keras.initializers.GlorotUniform(seed)(shape)`` (float32), without TensorFlow."""
    fan_in, fan_out = fans(shape)
    limit = math.sqrt(3.0 / max(1.0, (fan_in + fan_out) / 2.0))
    low, high = np.float32(-limit), np.float32(limit)
    uniform = stateless_uniform(shape, (seed % _KERAS_SEED_MODULUS, 0))
    return uniform * (high - low) + low
