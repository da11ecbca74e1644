"""Activation records: OpenWhisk's JSON shape, and a bounded in-memory store with its list query."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from fedkeeper.host.fabric.limits import ActionLimits

_RECORD_OVERHEAD = 1024  # ids, times, annotations, and the objects holding them


class Status(IntEnum):
    """OpenWhisk's activation outcomes (``response.statusCode``) and their names."""

    SUCCESS = 0
    APPLICATION_ERROR = 1
    DEVELOPER_ERROR = 2
    INTERNAL_ERROR = 3

    @property
    def label(self) -> str:
        return ("success", "application error", "action developer error", "whisk internal error")[self]


@dataclass
class Activation:
    """One finished activation."""

    activation_id: str
    namespace: str
    name: str
    version: str
    subject: str
    kind: str
    limits: ActionLimits
    start: int
    end: int
    status: Status
    result: dict[str, Any]
    logs: list[str] = field(default_factory=list)
    wait_ms: int = 0
    init_ms: int | None = None
    timeout: bool = False
    extra_annotations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def duration(self) -> int:
        return self.end - self.start

    def size_bytes(self) -> int:
        """About what the record holds: its result and logs (JSON text), plus a fixed overhead."""
        result = len(json.dumps(self.result, ensure_ascii=False).encode("utf-8"))
        return _RECORD_OVERHEAD + result + sum(len(line.encode("utf-8")) for line in self.logs)

    def response(self) -> dict[str, Any]:
        return {
            "status": self.status.label,
            "statusCode": int(self.status),
            "success": self.status is Status.SUCCESS,
            "result": self.result,
        }

    def annotations(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"key": "path", "value": f"{self.namespace}/{self.name}"},
            {"key": "waitTime", "value": self.wait_ms},
            {"key": "kind", "value": self.kind},
            {"key": "timeout", "value": self.timeout},
            {"key": "limits", "value": self.limits.to_json()},
        ]
        if self.init_ms is not None:
            out.append({"key": "initTime", "value": self.init_ms})
        return out + self.extra_annotations

    def to_json(self, *, docs: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "subject": self.subject,
            "activationId": self.activation_id,
            "start": self.start,
            "end": self.end,
            "duration": self.duration,
            "statusCode": int(self.status),
        }
        if docs:
            out["response"] = self.response()
            out["logs"] = self.logs
        out["annotations"] = self.annotations()
        out["publish"] = False
        return out


class RecordStore:
    """The newest records, at most ``capacity`` of them and ``max_bytes`` together (the oldest go
    first; the newest is always kept), with waiters for activations still running."""

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.size_bytes = 0
        self._records: OrderedDict[str, Activation] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._waiters: dict[str, asyncio.Future[Activation | None]] = {}

    def expect(self, activation_id: str) -> asyncio.Future[Activation | None]:
        """A future resolved when the activation finishes (``None`` if its record is lost)."""
        future: asyncio.Future[Activation | None] = asyncio.get_running_loop().create_future()
        self._waiters[activation_id] = future
        return future

    def finish(self, activation_id: str, record: Activation | None) -> None:
        """Store ``record`` (unless it is lost: ``None``) and wake whoever waits for it."""
        if record is not None:
            self._records[activation_id] = record
            self._sizes[activation_id] = size = record.size_bytes()
            self.size_bytes += size
            while len(self._records) > 1 and (
                len(self._records) > self.capacity
                or (self.max_bytes is not None and self.size_bytes > self.max_bytes)
            ):
                oldest, _ = self._records.popitem(last=False)
                self.size_bytes -= self._sizes.pop(oldest)
        future = self._waiters.pop(activation_id, None)
        if future is not None and not future.done():
            future.set_result(record)

    def get(self, namespace: str, activation_id: str) -> Activation | None:
        record = self._records.get(activation_id)
        return record if record is not None and record.namespace == namespace else None

    def query(
        self,
        namespace: str,
        *,
        name: str | None = None,
        since: int | None = None,
        upto: int | None = None,
    ) -> list[Activation]:
        """Matching records, newest (by start) first."""
        found = [
            r
            for r in self._records.values()
            if r.namespace == namespace
            and (name is None or r.name == name)
            and (since is None or r.start >= since)
            and (upto is None or r.start <= upto)
        ]
        found.sort(key=lambda r: r.start, reverse=True)
        return found
