"""The fabric's limits, with Apache OpenWhisk's defaults.

``FabricLimits`` is the one place every limit lives; the command line offers one flag per
field (``--max-param-bytes`` for ``max_param_bytes``...), so tests can shrink any of them.
``ActionLimits`` is what one action declares (its ``limits`` object), checked against them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

import psutil

MB = 1024 * 1024


def _half_of_physical_memory_mb() -> int:
    # OpenWhisk's invoker reserves a "user memory" pool for action containers; half the machine
    # leaves room for the keeper, the store and the fabric itself.
    return max(512, psutil.virtual_memory().total // MB // 2)


def _worker_cap() -> int:
    # Workers are whole Python processes; more of them than a few per core only adds thrashing.
    return max(2, 4 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class FabricLimits:
    """Limits of one fabric (OpenWhisk's defaults unless noted in ``docs/fabric.md``).

    Attributes
    ----------
    max_param_bytes
        Largest invocation request entity (OpenWhisk: 1 MB); larger requests get 413.
    max_result_bytes
        Largest action result (OpenWhisk: 5 MB); larger results are a developer error.
    min_timeout_ms, max_timeout_ms, default_timeout_ms
        Range and default of an action's ``limits.timeout``.
    min_memory_mb, max_memory_mb, default_memory_mb
        Range and default of an action's ``limits.memory``. OpenWhisk's stock maximum is 512;
        the fabric allows 2048 because fedkeeper's training functions ask for 1024.
    max_logs_mb, default_logs_mb
        Range and default of an action's ``limits.logs`` (log bytes kept per activation).
    max_concurrency, default_concurrency
        Range and default of an action's ``limits.concurrency`` (activations per worker).
    concurrent_invocations
        Activations in flight (queued or running) per namespace before 429.
    user_memory_mb
        Memory budget of all workers together; each reserves its action's ``limits.memory``.
    max_workers
        Most worker processes alive at once.
    blocking_wait_s
        How long a blocking invoke waits before answering 202 with the activation id.
    idle_timeout_s
        An idle warm worker is stopped after this long.
    max_records
        Activation records kept in memory (newest first).
    max_record_bytes
        Result and log bytes all kept records may hold together (64 MB); the oldest go first.
    memory_poll_s
        How often workers' resident memory is checked against their limit.
    worker_start_timeout_s
        How long a new worker process may take to listen.
    """

    max_param_bytes: int = 1 * MB
    max_result_bytes: int = 5 * MB
    min_timeout_ms: int = 100
    max_timeout_ms: int = 300_000
    default_timeout_ms: int = 60_000
    min_memory_mb: int = 128
    max_memory_mb: int = 2048
    default_memory_mb: int = 256
    max_logs_mb: int = 10
    default_logs_mb: int = 10
    max_concurrency: int = 500
    default_concurrency: int = 1
    concurrent_invocations: int = 100
    user_memory_mb: int = field(default_factory=_half_of_physical_memory_mb)
    max_workers: int = field(default_factory=_worker_cap)
    blocking_wait_s: float = 60.0
    idle_timeout_s: float = 600.0
    max_records: int = 10_000
    max_record_bytes: int = 64 * MB
    memory_poll_s: float = 0.1
    worker_start_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0 or (value == 0 and f.name not in {"max_logs_mb", "default_logs_mb"}):
                raise ValueError(f"fabric limit {f.name} must be positive (got {value!r})")
        for low, default, high in (
            ("min_timeout_ms", "default_timeout_ms", "max_timeout_ms"),
            ("min_memory_mb", "default_memory_mb", "max_memory_mb"),
            (None, "default_logs_mb", "max_logs_mb"),
            (None, "default_concurrency", "max_concurrency"),
        ):
            lo = getattr(self, low) if low else 0
            if not lo <= getattr(self, default) <= getattr(self, high):
                raise ValueError(
                    f"fabric limit {default} must lie within [{low or 0}, {high}] (got {getattr(self, default)})"
                )

    def replace(self, **changes: Any) -> FabricLimits:
        """A copy with some limits changed (validated again)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = set(changes) - set(values)
        if unknown:
            raise ValueError(f"unknown fabric limit(s): {', '.join(sorted(unknown))}")
        values.update(changes)
        return FabricLimits(**values)


class LimitError(ValueError):
    """An action's ``limits`` object is out of range (answered with 400)."""


@dataclass(frozen=True)
class ActionLimits:
    """One action's ``limits``: timeout (ms), memory (MB), logs (MB), concurrency."""

    timeout: int
    memory: int
    logs: int
    concurrency: int

    @classmethod
    def defaults(cls, limits: FabricLimits) -> ActionLimits:
        return cls(
            timeout=limits.default_timeout_ms,
            memory=limits.default_memory_mb,
            logs=limits.default_logs_mb,
            concurrency=limits.default_concurrency,
        )

    @classmethod
    def parse(cls, data: Any, limits: FabricLimits, base: ActionLimits | None = None) -> ActionLimits:
        """Validate a ``limits`` object; fields it leaves out come from ``base`` or the defaults."""
        start = base or cls.defaults(limits)
        if data is None:
            return start
        if not isinstance(data, dict):
            raise LimitError("limits must be a JSON object")
        values = {"timeout": start.timeout, "memory": start.memory, "logs": start.logs}
        values["concurrency"] = start.concurrency
        ranges = {
            "timeout": (limits.min_timeout_ms, limits.max_timeout_ms, "milliseconds"),
            "memory": (limits.min_memory_mb, limits.max_memory_mb, "MB"),
            "logs": (0, limits.max_logs_mb, "MB"),
            "concurrency": (1, limits.max_concurrency, "activations"),
        }
        for name, (low, high, unit) in ranges.items():
            if name not in data or data[name] is None:
                continue
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise LimitError(f"{name} must be an integer (got {value!r})")
            # The wording follows OpenWhisk's limit deserializers.
            if value < low:
                raise LimitError(f"{name} {value} {unit} below allowed threshold of {low} {unit}")
            if value > high:
                raise LimitError(f"{name} {value} {unit} exceeds allowed threshold of {high} {unit}")
            values[name] = value
        return cls(**values)

    def to_json(self) -> dict[str, int]:
        return {
            "concurrency": self.concurrency,
            "logs": self.logs,
            "memory": self.memory,
            "timeout": self.timeout,
        }
