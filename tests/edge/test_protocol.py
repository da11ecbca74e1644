"""Framing and payload encodings of the host side (pure Python, no QEMU)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from fedkeeper.host.edge import protocol
from fedkeeper.host.edge.protocol import Frame, FrameDecoder, MsgType, ProtocolError


def test_frame_round_trips_through_the_decoder() -> None:
    frames = [Frame(MsgType.PING, 1), Frame(MsgType.LOAD_WEIGHTS, 65535, bytes(range(256)) * 40)]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(protocol.encode(f) for f in frames)) == frames
    assert decoder.bad_frames == 0


def test_frame_split_into_single_bytes_still_decodes() -> None:
    frame = Frame(MsgType.TRAIN, 7, b"\xfe\xed" * 9)  # the magic inside a payload is no frame start
    decoder = FrameDecoder()
    got = [f for byte in protocol.encode(frame) for f in decoder.feed(bytes([byte]))]
    assert got == [frame]


def test_corrupted_crc_is_rejected_and_the_next_frame_still_decodes() -> None:
    good = Frame(MsgType.PONG, 3, b"status")
    bad = bytearray(protocol.encode(Frame(MsgType.WEIGHTS, 2, b"payload")))
    bad[14] ^= 0x01  # flip one payload bit
    decoder = FrameDecoder()
    assert decoder.feed(bytes(bad) + protocol.encode(good)) == [good]
    assert decoder.bad_frames == 1


def test_banner_text_before_a_frame_is_kept_as_noise() -> None:
    banner = b"\x1bcSeaBIOS (version 1.16)\r\nBooting from ROM..\r\n"
    hello = Frame(MsgType.HELLO, 0, b"x" * 64)
    decoder = FrameDecoder()
    assert decoder.feed(banner + protocol.encode(hello)) == [hello]
    assert "SeaBIOS" in decoder.take_noise()


def test_header_wire_layout_is_the_documented_one() -> None:
    raw = protocol.encode(Frame(MsgType.TRAIN, 0x0102, b"ab"))
    assert raw[:2] == b"\xfe\xed" and raw[2] == protocol.VERSION and raw[3] == MsgType.TRAIN
    assert struct.unpack_from("<HHI", raw, 4) == (0x0102, 0, 2)
    assert struct.unpack_from("<I", raw, 14)[0] == zlib.crc32(raw[:14])


def test_oversized_length_is_taken_for_noise_not_waited_for() -> None:
    decoder = FrameDecoder(max_payload=16)
    fake = b"\xfe\xed" + struct.pack("<BBHHI", protocol.VERSION, 1, 0, 0, 1 << 30)
    good = Frame(MsgType.PONG, 1, b"ok")
    assert decoder.feed(fake + protocol.encode(good)) == [good]


def test_weights_blob_round_trips_keras_dense_layout() -> None:
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=s).astype(np.float32) for s in [(64, 32), (32,), (32, 10), (10,)]]
    blob = protocol.pack_weights(weights)
    assert struct.unpack_from("<4I", blob) == (2, 64, 32, 10)
    back = protocol.unpack_weights(blob)
    assert [a.shape for a in back] == [a.shape for a in weights]
    assert all(np.array_equal(a, b) and b.dtype == np.float32 for a, b in zip(weights, back, strict=True))


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ([(64, 32), (32,), (16, 10), (10,)], "array 2: kernel shape (16, 10), expected (32, width)"),
        ([(64, 32), (31,)], "array 1: bias shape (31,), expected (32,)"),
        ([(64, 32)], "kernel/bias pairs"),
    ],
)
def test_weights_that_are_no_dense_stack_are_refused(shapes: list[tuple[int, ...]], message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        protocol.dense_sizes(shapes)


def test_truncated_weights_blob_is_refused() -> None:
    blob = protocol.pack_weights([np.zeros((4, 3), np.float32), np.zeros(3, np.float32)])
    with pytest.raises(ProtocolError, match="header says"):
        protocol.unpack_weights(blob[:-4])


def test_partition_image_has_header_features_and_labels() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    y = np.array([2, 0, 1])
    image = protocol.pack_partition(x, y, 3)
    magic, version, dtype, n, features, classes, crc = struct.unpack_from("<4sHHIIII", image)
    assert (magic, version, dtype, n, features, classes) == (b"KFDP", 1, 1, 3, 4, 3)
    assert crc == zlib.crc32(image[32:]) == protocol.partition_crc(image)
    assert np.array_equal(np.frombuffer(image, "<f4", 12, 32).reshape(3, 4), x)
    assert np.array_equal(np.frombuffer(image, "<i4", 3, 32 + 48), y)


def test_status_round_trips() -> None:
    status = protocol.Status(
        1, 5, protocol.DataStatus.OK, 360, 64, 10, 0xDEADBEEF, 1 << 20, 1 << 21, 2_000_000, 15, "x86"
    )
    assert protocol.Status.from_bytes(status.to_bytes()) == status
