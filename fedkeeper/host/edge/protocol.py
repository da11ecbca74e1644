"""The serial protocol between the host and the edge guest (mirrors ``emulated_edge/guest/proto.h``).

A frame is ``magic (FE ED) | version | type | seq u16 | flags u16 | length u32 | payload | crc32``,
little-endian, with a zlib CRC-32 over header and payload. Bytes between frames (the firmware's
banners, a crash message) are not an error: the decoder keeps them as *noise* for the logs and
re-synchronises on the next magic.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise

import numpy as np

MAGIC = b"\xfe\xed"
VERSION = 1
HEADER = struct.Struct("<2sBBHHI")
TRAILER = struct.Struct("<I")
MAX_LAYERS = 8
NOISE_LIMIT = 4096  # bytes of noise kept for the logs


class MsgType(IntEnum):
    HELLO = 0x01
    PING = 0x02
    PONG = 0x03
    LOAD_WEIGHTS = 0x10
    LOADED = 0x11
    TRAIN = 0x20
    TRAINED = 0x21
    GET_WEIGHTS = 0x30
    WEIGHTS = 0x31
    EXIT = 0x40
    ERROR = 0x7F


class ErrorCode(IntEnum):
    CRC = 1
    TYPE = 2
    PAYLOAD = 3
    NO_MODEL = 4
    NO_DATA = 5
    SHAPE = 6
    MEMORY = 7


class DataStatus(IntEnum):
    OK = 0
    MISSING = 1
    BAD_FORMAT = 2
    BAD_CRC = 3
    BAD_LABEL = 4


class Optimizer(IntEnum):
    SGD = 0
    ADAM = 1
    NADAM = 2


class ProtocolError(ValueError):
    """A payload does not have the shape its message type requires."""


# --------------------------------------------------------------------------- frames
@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes = b""


def encode(frame: Frame) -> bytes:
    """The frame's bytes on the wire."""
    head = HEADER.pack(MAGIC, VERSION, frame.type, frame.seq & 0xFFFF, 0, len(frame.payload))
    body = head + frame.payload
    return body + TRAILER.pack(zlib.crc32(body))


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get back whole, checked frames.

    Parameters
    ----------
    max_payload
        Larger lengths are taken as a false magic (noise), not waited for.
    """

    def __init__(self, max_payload: int = 64 << 20) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self.noise = bytearray()
        self.bad_frames = 0

    def _skip(self, n: int) -> None:
        self.noise += self._buf[:n]
        del self.noise[:-NOISE_LIMIT]
        del self._buf[:n]

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            start = self._buf.find(MAGIC)
            if start < 0:
                # keep a trailing 0xFE: it may be the first half of the next magic
                self._skip(len(self._buf) - (1 if self._buf.endswith(MAGIC[:1]) else 0))
                return frames
            self._skip(start)
            if len(self._buf) < HEADER.size:
                return frames
            _, version, mtype, seq, _flags, length = HEADER.unpack_from(self._buf)
            if version != VERSION or length > self.max_payload:
                self._skip(1)
                continue
            end = HEADER.size + length
            if len(self._buf) < end + TRAILER.size:
                return frames
            (crc,) = TRAILER.unpack_from(self._buf, end)
            if crc != zlib.crc32(self._buf[:end]):
                self.bad_frames += 1
                self._skip(1)
                continue
            frames.append(Frame(mtype, seq, bytes(self._buf[HEADER.size : end])))
            del self._buf[: end + TRAILER.size]

    def take_noise(self) -> str:
        """The noise seen so far, as text, and forget it."""
        text = self.noise.decode("utf-8", "replace")
        self.noise.clear()
        return text


# --------------------------------------------------------------------------- payloads
_STATUS = struct.Struct("<11I20s")


@dataclass(frozen=True)
class Status:
    """What a guest says in HELLO and PONG."""

    version: int
    device_id: int
    data_status: DataStatus
    n: int
    features: int
    classes: int
    data_crc: int
    mem_free: int
    max_payload: int
    cpu_khz: int
    uptime_ms: int
    board: str

    @classmethod
    def from_bytes(cls, payload: bytes) -> Status:
        if len(payload) != _STATUS.size:
            raise ProtocolError(f"status payload is {len(payload)} bytes, expected {_STATUS.size}")
        (version, device, data, n, features, classes, crc, mem, max_payload, khz, uptime, board) = (
            _STATUS.unpack(payload)
        )
        try:
            data_status = DataStatus(data)
        except ValueError:
            raise ProtocolError(f"unknown data status {data}") from None
        text = board.rstrip(b"\0").decode("ascii", "replace")
        return cls(
            version, device, data_status, n, features, classes, crc, mem, max_payload, khz, uptime, text
        )

    def to_bytes(self) -> bytes:
        return _STATUS.pack(
            self.version,
            self.device_id,
            self.data_status,
            self.n,
            self.features,
            self.classes,
            self.data_crc,
            self.mem_free,
            self.max_payload,
            self.cpu_khz,
            self.uptime_ms,
            self.board.encode("ascii"),
        )


_TRAIN = struct.Struct("<IIfIIIfff")
SHUFFLE = 1


@dataclass(frozen=True)
class TrainParams:
    """Local training settings; Adam/Nadam constants default to Keras'."""

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Optimizer = Optimizer.SGD
    seed: int = 0
    shuffle: bool = True
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7

    def to_bytes(self) -> bytes:
        return _TRAIN.pack(
            self.epochs,
            self.batch_size,
            self.learning_rate,
            self.optimizer,
            self.seed & 0xFFFFFFFF,
            SHUFFLE if self.shuffle else 0,
            self.beta_1,
            self.beta_2,
            self.epsilon,
        )


_METRICS = struct.Struct("<IIffII")


@dataclass(frozen=True)
class Metrics:
    """TRAINED: the last epoch's mean loss and accuracy, as in Keras' history."""

    num_examples: int
    steps: int
    loss: float
    accuracy: float
    train_us: int
    mem_free: int

    @classmethod
    def from_bytes(cls, payload: bytes) -> Metrics:
        if len(payload) != _METRICS.size:
            raise ProtocolError(f"metrics payload is {len(payload)} bytes, expected {_METRICS.size}")
        return cls(*_METRICS.unpack(payload))


def exit_payload(code: int) -> bytes:
    return struct.pack("<I", code)


def parse_error(payload: bytes) -> tuple[int, str]:
    """``(code, message)`` of an ERROR frame."""
    if len(payload) < 4:
        return 0, "malformed error frame"
    (code,) = struct.unpack_from("<I", payload)
    return code, payload[4:].decode("utf-8", "replace")


# --------------------------------------------------------------------------- weights
def dense_sizes(shapes: Sequence[tuple[int, ...]]) -> list[int]:
    """Layer widths of a Dense stack from its Keras weight shapes ``[(in, h), (h,), (h, out), (out,)]``.

    Raises :class:`ProtocolError` naming the first array that does not fit.
    """
    if not shapes or len(shapes) % 2 or len(shapes) // 2 > MAX_LAYERS:
        raise ProtocolError(
            f"expected kernel/bias pairs of at most {MAX_LAYERS} Dense layers, got {len(shapes)} arrays"
        )
    first = tuple(shapes[0])
    if len(first) != 2:
        raise ProtocolError(f"array 0: kernel shape {first} is not 2-D")
    sizes = [int(first[0])]
    for i in range(0, len(shapes), 2):
        kernel, bias = tuple(shapes[i]), tuple(shapes[i + 1])
        if len(kernel) != 2 or kernel[0] != sizes[-1]:
            raise ProtocolError(f"array {i}: kernel shape {kernel}, expected ({sizes[-1]}, width)")
        if bias != (kernel[1],):
            raise ProtocolError(f"array {i + 1}: bias shape {bias}, expected ({kernel[1]},)")
        sizes.append(int(kernel[1]))
    return sizes


def pack_weights(weights: Sequence[np.ndarray]) -> bytes:
    """A weights blob: ``u32 layers, u32 sizes[layers + 1]``, then every array as float32."""
    sizes = dense_sizes([np.shape(w) for w in weights])
    head = struct.pack(f"<{len(sizes) + 1}I", len(sizes) - 1, *sizes)
    return head + b"".join(np.ascontiguousarray(w, dtype="<f4").tobytes() for w in weights)


def unpack_weights(blob: bytes) -> list[np.ndarray]:
    """The arrays of a weights blob, in Keras ``get_weights()`` order."""
    if len(blob) < 4:
        raise ProtocolError("weights blob shorter than its header")
    (layers,) = struct.unpack_from("<I", blob)
    if not 1 <= layers <= MAX_LAYERS or len(blob) < 4 * (layers + 2):
        raise ProtocolError(f"weights blob has a bad layer count {layers}")
    sizes = struct.unpack_from(f"<{layers + 1}I", blob, 4)
    offset = 4 * (layers + 2)
    total = offset + 4 * sum(i * o + o for i, o in pairwise(sizes))
    if total != len(blob):
        raise ProtocolError(f"weights blob is {len(blob)} bytes, its header says {total}")
    arrays: list[np.ndarray] = []
    for i, o in pairwise(sizes):
        for shape in ((i, o), (o,)):
            count = int(np.prod(shape))
            arrays.append(np.frombuffer(blob, "<f4", count, offset).reshape(shape).astype(np.float32))
            offset += 4 * count
    return arrays


# --------------------------------------------------------------------------- data partitions
PARTITION_MAGIC = b"KFDP"
_PARTITION = struct.Struct("<4sHHIIII8x")


def pack_partition(x: np.ndarray, y: np.ndarray, num_classes: int) -> bytes:
    """The ``-initrd`` image of one client's rows: header, float32 features, int32 labels."""
    x = np.ascontiguousarray(np.asarray(x, dtype="<f4").reshape(len(x), -1))
    y = np.ascontiguousarray(np.asarray(y).reshape(-1), dtype="<i4")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"partition needs as many labels as rows (got {len(x)} rows, {len(y)} labels)")
    body = x.tobytes() + y.tobytes()
    head = _PARTITION.pack(PARTITION_MAGIC, 1, 1, len(x), x.shape[1], num_classes, zlib.crc32(body))
    return head + body


def partition_crc(image: bytes) -> int:
    """The CRC the guest reports in its status for this partition image."""
    return int(_PARTITION.unpack_from(image)[6])
