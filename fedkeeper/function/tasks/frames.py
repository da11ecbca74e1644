"""JSON frames over a byte stream: how a job reaches a host's client runtime and its reply comes back.

A frame is a header line ``fedkeeper-frame 1 <length>\\n`` followed by exactly ``length`` bytes of
UTF-8 JSON (one object). The explicit length tells a complete message from one cut short by a lost
link, which a bare newline-terminated document cannot; nothing is ever unpickled.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from fedkeeper.function.errors import FedkeeperError

MAGIC = b"fedkeeper-frame 1 "
_MAX_HEADER = len(MAGIC) + 20


class FrameError(FedkeeperError):
    """A frame that is malformed, cut short or past its size limit."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return MAGIC + str(len(body)).encode() + b"\n" + body


def parse_header(line: bytes, limit: int) -> int:
    """The body length a header line announces (FrameError when it is not a header or past ``limit``)."""
    if not line.startswith(MAGIC) or not line.endswith(b"\n"):
        raise FrameError(f"not a fedkeeper frame (starts {line[:40]!r})")
    digits = line[len(MAGIC) : -1]
    if not digits.isdigit():
        raise FrameError(f"bad frame length {digits[:20]!r}")
    length = int(digits)
    if length > limit:
        raise FrameError(f"frame of {length} bytes is past the {limit} byte limit")
    return length


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"frame body is not JSON ({type(exc).__name__})") from None
    if not isinstance(message, dict):
        raise FrameError("frame body is not a JSON object")
    return message


def read(stream: BinaryIO, limit: int) -> dict[str, Any]:
    """Read one frame from a blocking stream."""
    line = stream.readline(_MAX_HEADER)
    if not line:
        raise FrameError("stream ended before a frame")
    length = parse_header(line, limit)
    body = stream.read(length)
    if len(body) != length:
        raise FrameError(f"frame cut short: {len(body)} of {length} bytes")
    return decode(body)
