"""One worker: a Python process running ``runtime.py`` for one action version."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp
import psutil

from fedkeeper.host.fabric.containment import RUNTIME, Cell, Containment
from fedkeeper.host.fabric.limits import MB, ActionLimits
from fedkeeper.host.fabric.logs import LogCollector

# As in runtime.py, a standalone script the fabric never imports: the worker's secret for /init and /run.
TOKEN_ENV = "__FABRIC_RUNTIME_TOKEN"
TOKEN_HEADER = "X-Fabric-Token"
_ids = itertools.count(1)
_CHILDREN_REFRESH_S = 1.0


@dataclass(frozen=True)
class WorkerKey:
    """Workers are reused only for the same action version (as OpenWhisk's containers)."""

    namespace: str
    name: str
    version: str


class WorkerState(Enum):
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"


class WorkerStartError(RuntimeError):
    """The process did not come up (the activation is a whisk internal error)."""


class Worker:
    """A runtime process, its log collector, and its bookkeeping in the pool."""

    def __init__(self, key: WorkerKey, limits: ActionLimits) -> None:
        self.id = next(_ids)
        self.key = key
        self.limits = limits
        self.state = WorkerState.STARTING
        self.in_flight = 1  # created for the activation that asked for it
        self.last_used = time.monotonic()
        self.retired = False
        self.death: str | None = None  # why the pool killed it: "timeout", "memory", "crash", ...
        self.process: asyncio.subprocess.Process | None = None
        self.logs: LogCollector | None = None
        self.url = ""
        self.token = secrets.token_urlsafe(32)  # see runtime.TOKEN_ENV
        self.ready = asyncio.Event()  # set once it serves (or is dead): activations may queue on it
        self._psutil: psutil.Process | None = None
        self._children: list[psutil.Process] = []
        self._children_at = 0.0
        self.cell: Cell | None = None

    @property
    def memory_mb(self) -> int:
        return self.limits.memory

    @property
    def alive(self) -> bool:
        return (
            self.state is not WorkerState.DEAD
            and self.process is not None
            and self.process.returncode is None
        )

    def has_slot(self) -> bool:
        """A free activation slot, now or once the worker has started (``limits.concurrency`` > 1)."""
        exited = self.process is not None and self.process.returncode is not None
        return (
            self.state is not WorkerState.DEAD
            and not exited
            and not self.retired
            and self.in_flight < self.limits.concurrency
        )

    def __repr__(self) -> str:
        return (
            f"<worker {self.id} {self.key.namespace}/{self.key.name}@{self.key.version} {self.state.value}>"
        )

    # ------------------------------------------------------------------ life cycle
    async def spawn(self, env: dict[str, str], start_timeout: float, containment: Containment) -> None:
        """Start the process in its cell and wait for its ``runtime listening on PORT`` line."""
        try:
            self.cell = await asyncio.to_thread(
                containment.cell, f"w{self.id}", self.key.namespace, self.limits.memory
            )
        except OSError as exc:
            raise WorkerStartError(f"cannot prepare the worker's folder or cgroups: {exc}") from exc
        # Inside a PID namespace the runtime's parent is the namespace's init, which dies with the fabric.
        watched = 0 if self.cell.pid_namespace else os.getpid()
        runtime = [sys.executable, str(RUNTIME), "--port", "0", "--concurrency", str(self.limits.concurrency)]
        folder = str(self.cell.folder)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.cell.argv([*runtime, "--parent-pid", str(watched)], os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                # The action's unpacked files (and anything it caches) go away with the worker.
                env={**env, "TMPDIR": folder, "HOME": folder, TOKEN_ENV: self.token},
                cwd=folder,
                start_new_session=True,  # its own process group: a kill reaches the action's children
            )
        except OSError as exc:
            raise WorkerStartError(f"cannot start {sys.executable}: {exc}") from exc
        assert self.process.stdout is not None and self.process.stderr is not None
        try:
            async with asyncio.timeout(start_timeout):
                line = await self.process.stdout.readline()
        except TimeoutError:
            self.kill("start timeout")
            raise WorkerStartError(f"worker did not listen within {start_timeout:g} s") from None
        text = line.decode("utf-8", "replace").strip()
        if not text.startswith("runtime listening on "):
            self.kill("start failure")
            raise WorkerStartError(f"worker did not start: {text or 'it exited'}")
        self.url = f"http://127.0.0.1:{int(text.rsplit(' ', 1)[1])}"
        self.logs = LogCollector(self.process.stdout, self.process.stderr, self.limits.logs * MB)
        with contextlib.suppress(psutil.Error):
            self._psutil = psutil.Process(self.process.pid)

    async def post(
        self, session: aiohttp.ClientSession, path: str, payload: dict[str, Any], timeout: float
    ) -> tuple[int, bytes]:
        """POST JSON to the runtime; raises TimeoutError or aiohttp.ClientError."""
        async with (
            asyncio.timeout(timeout),
            session.post(
                self.url + path,
                data=json.dumps(payload).encode("utf-8"),
                headers={"Content-Type": "application/json", TOKEN_HEADER: self.token},
            ) as response,
        ):
            return response.status, await response.read()

    def rss_bytes(self) -> int:
        """Resident memory of the worker and every process it started.

        Listing children scans all of /proc (milliseconds), so it is refreshed once a second;
        the RSS reads themselves are cheap and happen on every poll.
        """
        if self.cell is not None:
            counted = self.cell.memory_bytes()
            if counted is not None:  # the cgroup sees every process, however it was started
                return counted
        if self._psutil is None:
            return 0
        now = time.monotonic()
        if now - self._children_at >= _CHILDREN_REFRESH_S:
            self._children_at = now
            with contextlib.suppress(psutil.Error):
                self._children = self._psutil.children(recursive=True)
        try:
            total = self._psutil.memory_info().rss
        except psutil.Error:
            return 0
        for child in self._children:
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def over_memory(self) -> bool:
        """Past ``limits.memory``: by the poll, or killed by the kernel in the worker's cgroup."""
        return self.rss_bytes() > self.memory_mb * MB or (self.cell is not None and self.cell.oom_killed())

    def kill(self, reason: str) -> None:
        """SIGKILL the worker's process group and everything in its cell (idempotent)."""
        if self.death is None:
            self.death = reason
        self.state = WorkerState.DEAD
        self.ready.set()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.cell is not None:
            self.cell.kill()

    async def reap(self) -> None:
        """Wait for the process to be gone and release its files."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                await self.process.wait()
        if self.logs is not None:
            await self.logs.close()
        if self.cell is not None:
            cell, self.cell = self.cell, None
            await asyncio.to_thread(cell.remove)
