"""Model weights as plain arrays: serialization without pickle, checksums, validation.

Weights are a list of numpy arrays in Keras' ``model.get_weights()`` order. On the wire
they are an ``.npz`` archive loaded with ``allow_pickle=False``, so object arrays are refused.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import numbers
import struct
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedkeeper.function.errors import InvalidUpdate

Weights = list[np.ndarray]
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64"})
# Decompressed size past which an .npz is refused before any array is read (weights of any model
# fedkeeper trains are far smaller; a zip bomb is not).
MAX_NPZ_BYTES = 1024 * 1024 * 1024
# The most examples an update may claim: exact in float64, the aggregate's accumulator, and in BSON.
MAX_EXAMPLES = 2**53


def checksum(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 over every array's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.reshape(-1).view(np.uint8).data)  # its own bytes, not a copy
    return digest.hexdigest()


def encode(weights: Sequence[np.ndarray]) -> bytes:
    """Serialize to ``.npz`` bytes (arrays ``a0``, ``a1``, ... in order)."""
    buffer = io.BytesIO()
    named: dict[str, Any] = {f"a{i}": np.asarray(w) for i, w in enumerate(weights)}
    np.savez(buffer, **named)
    return buffer.getvalue()


def check_npz_sizes(data: bytes | bytearray, max_bytes: int) -> None:
    """Refuse an ``.npz`` whose arrays would take more than ``max_bytes`` once decompressed.

    Reads only the zip directory (each member's ``file_size``) and each ``.npy`` header (shape and
    dtype), so nothing is inflated or allocated before the sizes are known. Raises ``ValueError``.
    """
    with zipfile.ZipFile(_Reader(data)) as archive:
        members = archive.infolist()
        total = sum(member.file_size for member in members)
        if total > max_bytes:
            raise ValueError(f"{total} bytes once decompressed, past the limit of {max_bytes}")
        for member in members:
            with archive.open(member) as handle:
                shape, _, dtype = _npy_header(handle)
            declared = math.prod(shape) * dtype.itemsize
            if declared > member.file_size:  # the header claims more than the member holds
                raise ValueError(
                    f"{member.filename}: header declares {declared} bytes, it holds {member.file_size}"
                )


def decode(data: bytes | bytearray, max_bytes: int = MAX_NPZ_BYTES) -> Weights:
    """Parse ``.npz`` bytes of at most ``max_bytes`` decompressed; :class:`InvalidUpdate` if malformed.

    The arrays of a ``bytearray`` payload are views into it (``np.savez`` stores members
    uncompressed), so a model-sized payload is not copied again; ``bytes`` are copied once so
    that the arrays are writable either way.
    """
    buffer = data if isinstance(data, bytearray) else bytearray(data)
    try:
        check_npz_sizes(buffer, max_bytes)
        with zipfile.ZipFile(_Reader(buffer)) as archive:
            members = {member.filename.removesuffix(".npy"): member for member in archive.infolist()}
            names = sorted(members, key=lambda n: int(n[1:]) if n[1:].isdigit() else -1)
            if [f"a{i}" for i in range(len(names))] != names:
                raise InvalidUpdate(f"weights archive has unexpected array names {names[:5]}")
            return [_member_array(archive, members[name], buffer) for name in names]
    except InvalidUpdate:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise InvalidUpdate(f"weights are not a valid .npz archive: {exc}") from None


def _npy_header(handle: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream at ``handle``; object arrays refused."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    if dtype.hasobject:
        raise ValueError("object arrays are not weights (pickle is never loaded)")
    return shape, fortran, dtype


def _member_array(archive: zipfile.ZipFile, member: zipfile.ZipInfo, buffer: bytearray) -> np.ndarray:
    with archive.open(member) as handle:
        shape, fortran, dtype = _npy_header(handle)
        if member.compress_type != zipfile.ZIP_STORED:  # not written by encode(): inflate it
            count = math.prod(shape)
            array = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype, count=count).copy()
            return array.reshape(shape, order="F" if fortran else "C")
        header_end = handle.tell()
    # A stored member's data follows its local header: 30 bytes, then its name and extra field.
    try:
        name_len, extra_len = struct.unpack_from("<HH", buffer, member.header_offset + 26)
        offset = member.header_offset + 30 + name_len + extra_len + header_end
        return np.ndarray(shape, dtype, buffer=buffer, offset=offset, order="F" if fortran else "C")
    except (struct.error, TypeError) as exc:  # offsets past the payload
        raise ValueError(f"{member.filename}: {exc}") from None


class _Reader(io.RawIOBase):
    """A seekable file over a buffer without copying it (``io.BytesIO`` copies a ``bytearray``)."""

    def __init__(self, data: bytes | bytearray) -> None:
        self._view = memoryview(data)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, target: Any) -> int:
        piece = self._view[self._position : self._position + len(target)]
        target[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)


def to_b64(weights: Sequence[np.ndarray]) -> str:
    return base64.b64encode(encode(weights)).decode("ascii")


def from_b64(text: str, max_bytes: int = MAX_NPZ_BYTES) -> Weights:
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise InvalidUpdate(f"weights are not valid base64: {exc}") from None
    return decode(raw, max_bytes)


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


def update_norm(update: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """L2 norm of ``update - reference`` over all arrays (float64, one layer-sized temporary at a time)."""
    total = 0.0
    for got, want in zip(update, reference, strict=True):
        delta = got.astype(np.float64) - want.astype(np.float64)
        total += float(np.dot(delta.ravel(), delta.ravel()))
    return math.sqrt(total)


def check_update(
    update: Sequence[np.ndarray],
    num_examples: Any,
    reference: Sequence[np.ndarray],
    *,
    max_examples: int | None = None,
    max_norm: float | None = None,
) -> int:
    """Check one client's update against the round's global weights; returns ``num_examples``.

    The one gate for updates: shapes, dtypes and finiteness (:func:`validate_like`), an integer
    ``num_examples`` in ``[1, max_examples]`` (the partition the server assigned; at most
    :data:`MAX_EXAMPLES`), and, when ``max_norm`` is set, ``||update - reference|| <= max_norm``.
    Raises :class:`InvalidUpdate` with the reason.
    """
    validate_like(update, reference)
    # bool is an int subclass; True examples is a bug, not a count.
    if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral):
        raise InvalidUpdate(f"num_examples must be an integer, got {type(num_examples).__name__}")
    count = int(num_examples)
    shown = str(count) if count.bit_length() <= 64 else f"a {count.bit_length()}-bit integer"
    if count <= 0:
        raise InvalidUpdate(f"num_examples must be positive, got {shown}")
    if count > MAX_EXAMPLES:
        raise InvalidUpdate(f"num_examples {shown} is past the limit of {MAX_EXAMPLES}")
    if max_examples is not None and count > max_examples:
        raise InvalidUpdate(
            f"num_examples {shown} is more than the {max_examples} examples of the client's partition"
        )
    if max_norm is not None:
        norm = update_norm(update, reference)
        if not norm <= max_norm:
            raise InvalidUpdate(f"update norm {norm:.6g} is past max_update_norm {max_norm:g}")
    return count
