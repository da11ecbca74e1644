"""Update codecs: how a client's update is compressed between the client and the store.

``none`` stores the update's weights as they are. ``float16``, ``int8`` and ``topk`` store the
update's *delta* (its weights minus the round's global weights the client trained from): deltas
are small and centred on zero, which is what quantizes well, and what top-k's error feedback is
defined on. The aggregator adds the decoded delta back to the round's weights, one update at a
time, so decoding keeps the aggregator's memory O(model).

Every payload is a few flat arrays with explicit dtypes, in the same ``.npz`` as weights (never
pickle); the update's document names the codec and its version (:func:`tag`). The layouts, over
the model's arrays ``0..n-1`` of sizes ``s_i`` (``S = sum s_i``):

- ``float16``: ``a0`` float16 ``(S,)``, every delta in array order;
- ``int8``: ``a0`` int8 ``(S,)`` in ``[-127, 127]``, ``a1`` float32 ``(n,)`` one symmetric scale
  per array (``delta ~= q * scale``, error at most ``scale / 2``);
- ``topk``: each array keeps its ``k_i = ceil(fraction * s_i)`` entries of largest magnitude.
  ``a0`` uint32 ``(n,)`` the ``k_i``; ``a1`` uint32, per array, how many kept indices fall in each
  block of 65536 (``ceil(s_i / 65536)`` blocks); ``a2`` uint16 ``(sum k_i,)`` each kept index
  modulo 65536, strictly increasing within an array; ``a3`` float16 ``(sum k_i,)`` their values.
  Indices cost 2 bytes whatever the model's size. What is not sent (and float16's rounding of
  what is) is the client's *residual*, added to its next delta before the next selection (error
  feedback).

Decoding checks everything it reads (array count, dtypes, sizes against the model, scales finite
and non-negative, indices in range and unique, values finite) and raises :class:`InvalidUpdate`
naming the array and what is wrong, so a malformed update is rejected with a reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedkeeper.function.errors import InvalidUpdate

Weights = list[np.ndarray]
CodecName = Literal["none", "float16", "int8", "topk"]
CODECS: tuple[CodecName, ...] = ("none", "float16", "int8", "topk")
VERSION = 1  # of the payload layouts above; a stored update names the version it was written in
BLOCK = 65536  # top-k indices are stored as (block, uint16 offset)
INT8_LEVELS = 127  # symmetric: -127..127, so q and -q both exist


@dataclass(frozen=True)
class Codec:
    """A codec and its parameter (``fraction``: the share of each array top-k keeps)."""

    name: CodecName = "none"
    fraction: float = 1.0

    @property
    def on_delta(self) -> bool:
        """It encodes ``update - reference`` rather than the update."""
        return self.name != "none"

    @property
    def feedback(self) -> bool:
        """It carries a residual per client (error feedback)."""
        return self.name == "topk"

    def tag(self) -> dict[str, Any]:
        """What an update's document records about how its payload was written."""
        tag: dict[str, Any] = {"name": self.name, "version": VERSION}
        if self.name == "topk":
            tag["fraction"] = self.fraction
        return tag


NONE = Codec()


@dataclass(frozen=True)
class Encoded:
    """A payload to store, and the residual to keep for the client's next update (top-k only)."""

    arrays: Weights
    residual: Weights | None = None


def kept(fraction: float, size: int) -> int:
    """How many of an array's ``size`` entries top-k keeps: at least one of a non-empty array."""
    return min(size, max(1, math.ceil(fraction * size - 1e-9)))  # 0.3 * 10 is 3.0000000000000004


def _flat_delta(weights: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [
        np.asarray(w, dtype=np.float64).ravel() - np.asarray(r, dtype=np.float64).ravel()
        for w, r in zip(weights, reference, strict=True)
    ]


def _half(values: np.ndarray, what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    if not np.all(np.isfinite(half)):
        raise InvalidUpdate(f"{what}: a delta is past float16's range (65504)")
    return half


def compress(
    weights: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    codec: Codec,
    residual: Sequence[np.ndarray] | None = None,
) -> Encoded:
    """Encode a checked update (same shapes as ``reference``) with ``codec``.

    ``residual`` (top-k) is what the client's earlier updates did not send; it is added first.
    Raises :class:`InvalidUpdate` when a delta does not fit the codec (past float16's range).
    """
    if codec.name == "none":
        return Encoded([np.asarray(w) for w in weights])
    deltas = _flat_delta(weights, reference)
    if codec.name == "float16":
        return Encoded([_half(np.concatenate(deltas), "float16 payload")])
    if codec.name == "int8":
        quantized: list[np.ndarray] = []
        scales: list[np.float32] = []
        for delta in deltas:
            peak = float(np.max(np.abs(delta))) if delta.size else 0.0
            scale = np.float32(peak / INT8_LEVELS)
            if not math.isfinite(float(scale)):
                raise InvalidUpdate("int8 payload: a delta is past float32's range")
            q = np.zeros(delta.shape, np.int8) if scale == 0 else np.rint(delta / float(scale))
            quantized.append(np.clip(q, -INT8_LEVELS, INT8_LEVELS).astype(np.int8))
            scales.append(scale)
        return Encoded([np.concatenate(quantized), np.asarray(scales, dtype=np.float32)])
    if residual is not None:
        deltas = [d + np.asarray(r, dtype=np.float64).ravel() for d, r in zip(deltas, residual, strict=True)]
    counts: list[int] = []
    blocks: list[np.ndarray] = []
    offsets: list[np.ndarray] = []
    values: list[np.ndarray] = []
    left: Weights = []
    for i, acc in enumerate(deltas):
        k = kept(codec.fraction, acc.size)
        chosen = np.sort(np.argpartition(-np.abs(acc), k - 1)[:k]) if k else np.zeros(0, np.int64)
        sent = _half(acc[chosen], f"topk payload, array {i}")
        rest = acc.copy()
        rest[chosen] -= sent.astype(np.float64)  # float16's rounding is fed back too
        counts.append(k)
        blocks.append(np.bincount(chosen // BLOCK, minlength=-(-acc.size // BLOCK)).astype(np.uint32))
        offsets.append((chosen % BLOCK).astype(np.uint16))
        values.append(sent)
        left.append(rest.reshape(np.shape(reference[i])).astype(np.asarray(reference[i]).dtype))
    arrays: Weights = [
        np.asarray(counts, dtype=np.uint32),
        np.concatenate(blocks),
        np.concatenate(offsets),
        np.concatenate(values),
    ]
    return Encoded(arrays, left)


def check_tag(tag: Any, codec: Codec) -> None:
    """Refuse an update written with another codec (or version) than the session's.

    A document without a tag was written before codecs existed: ``none``.
    """
    if tag is None:
        tag = {"name": "none", "version": VERSION}
    if not isinstance(tag, dict):
        raise InvalidUpdate(f"update's codec tag must be a mapping, got {type(tag).__name__}")
    if tag.get("name") != codec.name:
        raise InvalidUpdate(
            f"update was written with codec {tag.get('name')!r}, the session uses {codec.name!r}"
        )
    if tag.get("version") != VERSION:
        raise InvalidUpdate(f"update's {codec.name} codec version {tag.get('version')!r} is not {VERSION}")
    if codec.name == "topk" and tag.get("fraction") != codec.fraction:
        raise InvalidUpdate(
            f"update's topk fraction {tag.get('fraction')!r} is not the session's {codec.fraction}"
        )


def _expect(
    arrays: Sequence[np.ndarray], codec: str, dtypes: Sequence[str], sizes: Sequence[int | None]
) -> None:
    """``arrays`` are exactly ``len(dtypes)`` 1-D arrays of those dtypes and sizes (None: any)."""
    if len(arrays) != len(dtypes):
        raise InvalidUpdate(f"{codec} payload has {len(arrays)} arrays, expected {len(dtypes)}")
    for i, (array, dtype, size) in enumerate(zip(arrays, dtypes, sizes, strict=True)):
        if array.dtype != np.dtype(dtype):
            raise InvalidUpdate(f"{codec} payload a{i}: dtype {array.dtype}, expected {dtype}")
        if array.ndim != 1:
            raise InvalidUpdate(f"{codec} payload a{i}: shape {array.shape}, expected one dimension")
        if size is not None and array.size != size:
            raise InvalidUpdate(f"{codec} payload a{i}: {array.size} values, expected {size}")


def _finite(array: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(array)):
        raise InvalidUpdate(f"{what}: contains NaN or infinite values")


def decompress(arrays: Sequence[np.ndarray], reference: Sequence[np.ndarray], codec: Codec) -> Weights:
    """The update's weights from its stored payload; :class:`InvalidUpdate` naming what is malformed.

    ``none`` returns the arrays as stored (the update gate checks them); the other codecs return
    ``reference + delta`` in the reference's dtypes and shapes.
    """
    if codec.name == "none":
        return list(arrays)
    sizes = [int(np.size(r)) for r in reference]
    total = sum(sizes)
    if codec.name == "float16":
        _expect(arrays, "float16", ["float16"], [total])
        _finite(arrays[0], "float16 payload a0")
        deltas = np.split(arrays[0].astype(np.float64), np.cumsum(sizes)[:-1])
    elif codec.name == "int8":
        _expect(arrays, "int8", ["int8", "float32"], [total, len(sizes)])
        q, scales = arrays
        if np.any(q < -INT8_LEVELS):
            raise InvalidUpdate(f"int8 payload a0: value {int(q.min())} is outside [-127, 127]")
        _finite(scales, "int8 payload a1 (scales)")
        if np.any(scales < 0):
            raise InvalidUpdate(f"int8 payload a1 (scales): negative scale {float(scales.min())}")
        parts = np.split(q.astype(np.float64), np.cumsum(sizes)[:-1])
        deltas = [part * float(scale) for part, scale in zip(parts, scales, strict=True)]
    else:
        deltas = _topk_deltas(arrays, sizes, codec.fraction)
    return [
        (np.asarray(ref, dtype=np.float64) + delta.reshape(np.shape(ref))).astype(np.asarray(ref).dtype)
        for ref, delta in zip(reference, deltas, strict=True)
    ]


def _topk_deltas(arrays: Sequence[np.ndarray], sizes: Sequence[int], fraction: float) -> list[np.ndarray]:
    blocks = [-(-size // BLOCK) for size in sizes]
    _expect(arrays, "topk", ["uint32", "uint32", "uint16", "float16"], [len(sizes), sum(blocks), None, None])
    counts, per_block, offsets, values = arrays
    want = [kept(fraction, size) for size in sizes]
    if counts.tolist() != want:
        raise InvalidUpdate(f"topk payload a0 (counts): {counts.tolist()[:8]}, expected {want[:8]}")
    if offsets.size != sum(want) or values.size != sum(want):
        raise InvalidUpdate(
            f"topk payload: {offsets.size} indices (a2) and {values.size} values (a3), expected {sum(want)}"
        )
    _finite(values, "topk payload a3 (values)")
    deltas = []
    start = block_start = 0
    for i, (size, k, n_blocks) in enumerate(zip(sizes, want, blocks, strict=True)):
        in_blocks = per_block[block_start : block_start + n_blocks].astype(np.int64)
        if int(in_blocks.sum()) != k:
            raise InvalidUpdate(
                f"topk payload a1 (blocks) of array {i}: {int(in_blocks.sum())} indices, expected {k}"
            )
        index = np.repeat(np.arange(n_blocks, dtype=np.int64), in_blocks) * BLOCK + offsets[start : start + k]
        if index.size and int(index.max()) >= size:
            raise InvalidUpdate(
                f"topk payload a2 (indices) of array {i}: index {int(index.max())} is past its size {size}"
            )
        if np.any(np.diff(index) <= 0):
            raise InvalidUpdate(
                f"topk payload a2 (indices) of array {i}: not strictly increasing (repeated or unsorted)"
            )
        delta = np.zeros(size, dtype=np.float64)
        delta[index] = values[start : start + k].astype(np.float64)
        deltas.append(delta)
        start += k
        block_start += n_blocks
    return deltas
