"""The frames a host's runtime reads and answers: complete, bounded, JSON objects only."""

from __future__ import annotations

import io

import pytest

from fedkeeper.function.tasks import frames


def test_a_frame_round_trips_and_announces_its_length() -> None:
    message = {"op": "run", "params": {"text": "line\nbreak", "n": [1, 2]}}
    encoded = frames.encode(message)
    assert encoded.startswith(b"fedkeeper-frame 1 ")
    assert frames.read(io.BytesIO(encoded), limit=1024) == message


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (frames.encode({"a": 1})[:-3], "frame cut short"),
        (b"", "stream ended before a frame"),
        (b'{"op": "run"}\n', "not a fedkeeper frame"),
        (b"fedkeeper-frame 1 x1\n{}", "bad frame length"),
        (frames.encode({"a": "x" * 100}), "past the 50 byte limit"),
        (b"fedkeeper-frame 1 2\n[]", "not a JSON object"),
        (b"fedkeeper-frame 1 2\n\x80\x81", "not JSON"),
    ],
)
def test_a_frame_that_is_cut_short_malformed_or_too_large_is_refused(data: bytes, error: str) -> None:
    with pytest.raises(frames.FrameError, match=error):
        frames.read(io.BytesIO(data), limit=50)
