"""Per-activation logs read from a worker's stdout and stderr, framed by OpenWhisk's sentinel.

The runtime prints ``XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX`` on both streams after each run;
everything a stream printed before that line belongs to the activation that just ended. Lines
are timestamped when read, as Docker's log driver does for OpenWhisk, and kept up to the
action's ``limits.logs`` megabytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
TRUNCATED = "Logs were truncated because the total bytes size exceeds the limit of {limit} bytes."
LOG_FAILURE = "There was an issue while collecting your logs. Data might be missing."
DEVELOPER_WARNING = "The action did not initialize or run as expected. Log data might be missing."
_CHUNK = 64 * 1024


def timestamp(epoch_s: float) -> str:
    """OpenWhisk's log timestamp: ISO 8601 in UTC with a ``Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LogLine:
    at: float
    stream: str
    text: str

    def format(self) -> str:
        return f"{timestamp(self.at)} {self.stream}: {self.text}"


@dataclass
class _Segment:
    lines: list[LogLine] = field(default_factory=list)
    size: int = 0
    dropped: bool = False


class _StreamLog:
    """One stream: the lines since the last sentinel, and finished segments."""

    def __init__(self, name: str, cap_bytes: int) -> None:
        self.name = name
        self.cap_bytes = cap_bytes
        self.current = _Segment()
        self.done: deque[_Segment] = deque()
        self.closed = False

    def add(self, text: str) -> bool:
        """Add one line; True when it was the sentinel (a segment ended)."""
        if text == SENTINEL:
            self.done.append(self.current)
            self.current = _Segment()
            return True
        size = len(text.encode("utf-8", "replace")) + 1
        if self.current.size + size > self.cap_bytes:
            self.current.dropped = True  # keep counting nothing more: the memory stays bounded
            return False
        self.current.lines.append(LogLine(time.time(), self.name, text))
        self.current.size += size
        return False


class LogCollector:
    """Reads both streams of one worker for its whole life."""

    def __init__(self, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader, cap_bytes: int) -> None:
        self.cap_bytes = cap_bytes
        self._streams = {"stdout": _StreamLog("stdout", cap_bytes), "stderr": _StreamLog("stderr", cap_bytes)}
        self._changed = asyncio.Condition()
        self._tasks = [
            asyncio.create_task(self._pump(stdout, self._streams["stdout"])),
            asyncio.create_task(self._pump(stderr, self._streams["stderr"])),
        ]

    async def _pump(self, reader: asyncio.StreamReader, log: _StreamLog) -> None:
        pending = b""
        try:
            while True:
                chunk = await reader.read(_CHUNK)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > self.cap_bytes + _CHUNK:  # a runaway line without newline
                    lines.append(pending)
                    pending = b""
                ended = False
                for raw in lines:
                    ended |= log.add(raw.decode("utf-8", "replace").rstrip("\r"))
                if ended:
                    async with self._changed:
                        self._changed.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            if pending:
                log.add(pending.decode("utf-8", "replace").rstrip("\r"))
            log.closed = True
            async with self._changed:
                self._changed.notify_all()

    def _ready(self) -> bool:
        return all(s.done or s.closed for s in self._streams.values())

    async def next_activation(self, timeout: float) -> tuple[list[str], bool]:
        """The logs of the activation that just ended; False when its sentinels never came."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(self._ready)
        segments: list[_Segment] = []
        complete = True
        for log in self._streams.values():
            if log.done:
                segments.append(log.done.popleft())
            else:
                complete = False
                segments.append(log.current)
                log.current = _Segment()
        return self._merge(segments), complete

    async def drain(self, settle: float = 0.2) -> list[str]:
        """Everything not yet taken (after the worker died: its last, unterminated activation)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settle):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        segments: list[_Segment] = []
        for log in self._streams.values():
            segments.extend(log.done)
            log.done.clear()
            segments.append(log.current)
            log.current = _Segment()
        return self._merge(segments)

    def _merge(self, segments: list[_Segment]) -> list[str]:
        lines = sorted((line for s in segments for line in s.lines), key=lambda line: line.at)
        out: list[str] = []
        total = 0
        truncated = any(s.dropped for s in segments)
        for line in lines:
            text = line.format()
            total += len(text.encode("utf-8", "replace"))
            if total > self.cap_bytes:
                truncated = True
                break
            out.append(text)
        if truncated:
            out.append(LogLine(time.time(), "stderr", TRUNCATED.format(limit=self.cap_bytes)).format())
        return out

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
