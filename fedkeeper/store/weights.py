"""Model weights as plain arrays: serialization without pickle, checksums, validation.

Weights are a list of numpy arrays in Keras' ``model.get_weights()`` order. On the wire
they are an ``.npz`` archive loaded with ``allow_pickle=False``, so object arrays are refused.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedkeeper.errors import InvalidUpdate

Weights = list[np.ndarray]
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64"})


def checksum(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 over every array's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def encode(weights: Sequence[np.ndarray]) -> bytes:
    """Serialize to ``.npz`` bytes (arrays ``a0``, ``a1``, ... in order)."""
    buffer = io.BytesIO()
    named: dict[str, Any] = {f"a{i}": np.asarray(w) for i, w in enumerate(weights)}
    np.savez(buffer, **named)
    return buffer.getvalue()


def decode(data: bytes) -> Weights:
    """Parse ``.npz`` bytes; raises :class:`InvalidUpdate` on anything malformed."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = sorted(archive.files, key=lambda n: int(n[1:]) if n[1:].isdigit() else -1)
            if [f"a{i}" for i in range(len(names))] != names:
                raise InvalidUpdate(f"weights archive has unexpected array names {names[:5]}")
            return [archive[name] for name in names]
    except InvalidUpdate:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise InvalidUpdate(f"weights are not a valid .npz archive: {exc}") from None


def to_b64(weights: Sequence[np.ndarray]) -> str:
    return base64.b64encode(encode(weights)).decode("ascii")


def from_b64(text: str) -> Weights:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise InvalidUpdate(f"weights are not valid base64: {exc}") from None
    return decode(raw)


def nbytes(weights: Sequence[np.ndarray]) -> int:
    return sum(int(np.asarray(w).nbytes) for w in weights)


def validate_like(update: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> None:
    """Check that ``update`` matches ``reference`` in count, shape and dtype, and is finite."""
    if len(update) != len(reference):
        raise InvalidUpdate(f"update has {len(update)} arrays, the model has {len(reference)}")
    for i, (got, want) in enumerate(zip(update, reference, strict=True)):
        if got.shape != want.shape:
            raise InvalidUpdate(f"array {i}: shape {got.shape}, expected {want.shape}")
        if got.dtype != want.dtype or got.dtype.name not in ALLOWED_DTYPES:
            raise InvalidUpdate(f"array {i}: dtype {got.dtype}, expected {want.dtype}")
        if not np.all(np.isfinite(got)):
            raise InvalidUpdate(f"array {i}: contains NaN or infinite values")
