"""Child processes and background event loops shared by the harnesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

# What a function process inherits from us: enough to find Python and its site-packages, nothing
# else (no cloud credentials, no test settings), as on the real platforms.
_INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "TF_CPP_MIN_LOG_LEVEL", "SSL_CERT_FILE")


def sandbox_env(root: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """Environment for a function process rooted at ``root`` (also its HOME and PYTHONPATH)."""
    env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
    env.update(
        HOME=str(root),
        PYTHONPATH=str(root),  # the bundled fedkeeper copy wins over the installed one
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


async def spawn(args: list[str], cwd: Path, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Start ``args`` in its own process group (so its children die with it)."""
    return await asyncio.create_subprocess_exec(
        *args,
        cwd=str(cwd),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


async def kill_group(process: asyncio.subprocess.Process, grace_s: float = 3.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace_s``, and reap the leader.

    A leader reaped earlier is left alone: its group id may since have been given to another
    process group, which is not ours to signal.
    """
    if process.returncode is not None:
        return
    _signal_group(process.pid, signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), grace_s if grace_s > 0 else 5.0)
    # Children (gunicorn workers) may outlive their leader; the group id is still ours this instant.
    _signal_group(process.pid, signal.SIGKILL)
    if process.returncode is None:
        await process.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def wait_for_line(
    process: asyncio.subprocess.Process, pattern: re.Pattern[str], timeout_s: float, sink: list[str]
) -> re.Match[str]:
    """Read the merged output until a line matches ``pattern``; every line read goes to ``sink``."""
    assert process.stdout is not None

    async def scan() -> re.Match[str]:
        assert process.stdout is not None
        while True:
            raw = await process.stdout.readline()
            if not raw:
                tail = "\n".join(sink[-15:])
                raise RuntimeError(f"process exited ({await process.wait()}) before it was ready:\n{tail}")
            line = raw.decode(errors="replace").rstrip()
            sink.append(line)
            match = pattern.search(line)
            if match:
                return match

    return await asyncio.wait_for(scan(), timeout_s)


async def pump(process: asyncio.subprocess.Process, sink: list[str], limit: int = 2000) -> None:
    """Keep reading a process's output (so its pipe never fills), keeping the last ``limit`` lines."""
    assert process.stdout is not None
    while raw := await process.stdout.readline():
        sink.append(raw.decode(errors="replace").rstrip())
        if len(sink) > limit:
            del sink[: len(sink) - limit]


class LoopThread:
    """An asyncio loop in a daemon thread, so synchronous tests can drive async servers."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def serve(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    """Serve ``app`` on an ephemeral port; returns the runner and ``http://host:port``."""
    # handler_cancellation: a caller that hangs up (a timed-out client, a killed runtime) ends its
    # handler, so a long poll or a proxied call never outlives the connection it serves.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://{host}:{port}"


PYTHON = sys.executable
