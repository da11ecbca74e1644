"""One worker: a Python process running ``runtime.py`` for one action version."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from fedkeeper.fabric.limits import MB, ActionLimits
from fedkeeper.fabric.logs import LogCollector

RUNTIME = Path(__file__).resolve().with_name("runtime.py")
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
        self.ready = asyncio.Event()  # set once it serves (or is dead): activations may queue on it
        self._psutil: psutil.Process | None = None
        self._children: list[psutil.Process] = []
        self._children_at = 0.0
        self._folder: str | None = None

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
    async def spawn(self, env: dict[str, str], start_timeout: float) -> None:
        """Start the process and wait for its ``runtime listening on PORT`` line."""
        self._folder = tempfile.mkdtemp(prefix=f"fabric-worker-{self.id}-")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(RUNTIME),
                "--port",
                "0",
                "--concurrency",
                str(self.limits.concurrency),
                "--parent-pid",
                str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**env, "TMPDIR": self._folder},  # the action's unpacked files go away with the worker
                cwd=self._folder,
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
                headers={"Content-Type": "application/json"},
            ) as response,
        ):
            return response.status, await response.read()

    def rss_bytes(self) -> int:
        """Resident memory of the worker and every process it started.

        Listing children scans all of /proc (milliseconds), so it is refreshed once a second;
        the RSS reads themselves are cheap and happen on every poll.
        """
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

    def kill(self, reason: str) -> None:
        """SIGKILL the worker's whole process group (idempotent)."""
        if self.death is None:
            self.death = reason
        self.state = WorkerState.DEAD
        self.ready.set()
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    async def reap(self) -> None:
        """Wait for the process to be gone and release its files."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                await self.process.wait()
        if self.logs is not None:
            await self.logs.close()
        if self._folder is not None:
            await asyncio.to_thread(_remove_tree, self._folder)
            self._folder = None


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
