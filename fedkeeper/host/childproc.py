"""A service in its own process: as a child of the caller, or as a detached daemon.

The fabric (``python -m fedkeeper.host.fabric``) and the edge gateway (``python -m fedkeeper.host.edge``)
keep one contract: they log to stderr, print exactly one line on stdout once they serve
(``<what> listening on <url>``), and end their own workers or guests on SIGTERM.

The service's side: :func:`bind`, :func:`serving` and :func:`run_service`. The caller's side:
:class:`ChildService` runs a service as a child (tests, benches) and stops its whole process tree;
:class:`Daemon` starts one that outlives the caller and finds it again through a pid file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Self, TypeVar

import psutil
from aiohttp import web

from fedkeeper.function.errors import FedkeeperError

T = TypeVar("T")


# --------------------------------------------------------------------------- the service's side
def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening, non-blocking socket: binding first lets a taken port fail before any set-up."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def http_url(host: str, sock: socket.socket) -> str:
    """Where ``sock`` serves (an IPv6 host in brackets)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, sock: socket.socket, stop: asyncio.Event | None = None
) -> AsyncIterator[asyncio.Event]:
    """Serve ``app`` on ``sock`` while the body runs; yields ``stop`` (made when None), which
    SIGTERM, SIGINT and SIGHUP set."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, shutdown_timeout=1.0).start()
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        yield stop
    finally:
        await runner.cleanup()


def run_service(name: str, main: Coroutine[Any, Any, None], host: str, port: int, log_level: str) -> int:
    """Run a service's ``main`` with logs on stderr; the exit status for ``python -m``.

    A port it cannot bind or a :class:`FedkeeperError` is one line on stderr and status 1.
    """
    logging.basicConfig(
        level=getattr(logging, log_level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(main)
    except OSError as exc:
        print(f"{name}: cannot serve on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except FedkeeperError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- the caller's side
def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log, for an error message."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def terminate_tree(pid: int, timeout: float, grace: float = 1.0) -> None:
    """SIGTERM ``pid``; SIGKILL it after ``timeout``, and its descendants ``grace`` seconds later."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        root.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs([root], timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    # The service ends its workers/guests on SIGTERM (or they die with it); this catches the rest,
    # including any it started while stopping.
    with contextlib.suppress(psutil.NoSuchProcess):
        family += [c for c in root.children(recursive=True) if c not in family]
    _, alive = psutil.wait_procs(family[1:], timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=2.0)


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or "" if it exits or stays silent past ``timeout``."""
    stdout = process.stdout
    assert stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0].strip() if result else ""


class ChildService(ABC):
    """A service in a child process; ``start`` returns once it printed its ready line.

    Its stderr goes to ``log_path`` in a temporary folder, which also holds ``state_dir`` unless
    one is given; ``stop`` ends the whole process tree, ``cleanup`` also removes the folder.
    Subclasses name the command (:meth:`argv`) and how they report a failed start.
    """

    ready_line: ClassVar[str]  # "<what> listening on {url}"
    what: ClassVar[str]  # "the fabric", for error messages
    start_error: ClassVar[type[FedkeeperError]]
    stop_timeout: ClassVar[float] = 10.0
    grace: ClassVar[float] = 1.0  # see terminate_tree

    def __init__(self, tmp_prefix: str, log_name: str, state_dir: Path | None, start_timeout: float) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=tmp_prefix)
        self.state_dir = state_dir or Path(self._tmp.name) / "state"
        self.log_path = Path(self._tmp.name) / log_name
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self._log: IO[str] | None = None

    @abstractmethod
    def argv(self) -> list[str]:
        """The command that runs the service."""

    def start(self) -> Self:
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        prefix = self.ready_line.split("{", 1)[0]
        line = read_line(self.process, self.start_timeout)
        if not line.startswith(prefix):
            self.stop()
            raise self.start_error(
                f"{self.what} did not start: {line or 'no ready line'}\n{tail(self.log_path)}"
            )
        self.url = line[len(prefix) :].strip()
        return self

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float | None = None) -> None:
        """Stop the service and every process it started (safe to call twice)."""
        timeout = self.stop_timeout if timeout is None else timeout
        if self.process is not None:
            if self.process.poll() is None:
                terminate_tree(self.process.pid, timeout, self.grace)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@dataclass(frozen=True)
class Daemon:
    """A detached service, known by its pid file; its stdout and stderr go to ``log_file``.

    ``module`` must appear in its command line: a pid the system gave to another process since is
    never taken (or killed) for the daemon's. ``state_files`` are what the daemon writes while it
    serves; they are removed before it starts and after it stops.
    """

    pid_file: Path
    log_file: Path
    module: str
    grace: float = 1.0  # see terminate_tree
    state_files: tuple[Path, ...] = ()

    def owns(self, pid: int) -> bool:
        try:
            return self.module in " ".join(psutil.Process(pid).cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def recorded_pid(self) -> int | None:
        """The pid in the pid file, alive or not."""
        try:
            return int(self.pid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def pid(self) -> int | None:
        """The daemon's pid, if it runs."""
        pid = self.recorded_pid()
        return pid if pid is not None and self.owns(pid) else None

    def spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        """Start ``command`` in its own session, so that it survives the caller, and record its pid."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        for path in self.state_files:
            path.unlink(missing_ok=True)
        # Private from creation on: a service's log is nobody else's business.
        with open(
            os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a", encoding="utf-8"
        ) as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        self.pid_file.write_text(f"{process.pid}\n", encoding="utf-8")
        return process

    def wait_ready(
        self,
        process: subprocess.Popen[bytes],
        probe: Callable[[], T | None],
        timeout: float,
        kill_timeout: float,
    ) -> T | None:
        """Poll ``probe`` until it returns something, and return that.

        Returns None when the process exited first; raises TimeoutError (its process tree ended)
        when ``timeout`` passes. Either way the pid file is gone.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                return None
            found = probe()
            if found is not None:
                return found
            time.sleep(0.1)
        terminate_tree(process.pid, kill_timeout, self.grace)
        self.pid_file.unlink(missing_ok=True)
        raise TimeoutError(f"no answer within {timeout:g} s")

    def stop(self, timeout: float) -> bool:
        """Stop the daemon and its process tree; False when none ran (safe to call twice)."""
        pid = self.recorded_pid()
        if pid is None:
            return False
        stopped = self.owns(pid)
        if stopped:
            terminate_tree(pid, timeout, self.grace)
        for path in (self.pid_file, *self.state_files):
            path.unlink(missing_ok=True)
        return stopped
