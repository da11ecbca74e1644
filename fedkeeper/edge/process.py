"""Run the edge gateway (and so the fleet) as a separate process: a child for tests and benches,
or a detached daemon for ``main.py -d`` / ``-r``.

The daemon's state dir holds ``gateway.pid``, ``gateway.log`` and, while it serves,
``gateway.json`` (``{"url", "pid", "instances"}``): any process of the same user (the keeper, an
invoker running in a fabric worker) finds the gateway's URL there.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from fedkeeper.edge.errors import EdgeError
from fedkeeper.edge.gateway import READY_LINE, STATE_FILE

_READY_PREFIX = READY_LINE.split("{", 1)[0]
PID_FILE = "gateway.pid"
LOG_FILE = "gateway.log"


def gateway_command(
    instances: int, state_dir: Path, host: str = "127.0.0.1", port: int = 0, args: list[str] | None = None
) -> list[str]:
    return [
        sys.executable, "-m", "fedkeeper.edge",
        "--instances", str(instances),
        "--host", host,
        "--port", str(port),
        "--state-dir", str(state_dir),
        *(args or []),
    ]  # fmt: skip


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM (the gateway powers its guests off), then SIGKILL whatever is left of the tree."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        root.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs([root], timeout=timeout)
    # Guests die with the gateway (parent-death signal); this catches any that did not.
    _, alive = psutil.wait_procs(family[1:] + alive, timeout=0.5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=2.0)


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or "" if it exits or stays silent past ``timeout``."""
    stdout = process.stdout
    assert stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0].strip() if result else ""


class GatewayProcess:
    """An edge gateway in a child process, stopped (with its guests) by ``stop()``.

    Parameters
    ----------
    instances
        Guests to boot.
    state_dir
        Pipes, logs and ``gateway.json``; a temporary folder (removed on ``cleanup``) when None.
    args
        More ``python -m fedkeeper.edge`` flags (``--kernel``, ``--job-timeout-s`` ...).
    """

    def __init__(
        self,
        instances: int,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        args: list[str] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="edge-")
        self.state_dir = state_dir or Path(self._tmp.name) / "state"
        self.log_path = Path(self._tmp.name) / LOG_FILE
        self.command = gateway_command(instances, self.state_dir, host, port, args)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self._log: IO[str] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> GatewayProcess:
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        line = _read_line(self.process, self.start_timeout)
        if not line.startswith(_READY_PREFIX):
            self.stop()
            raise EdgeError(
                f"the edge gateway did not start: {line or 'no ready line'}\n{_tail(self.log_path)}"
            )
        self.url = line[len(_READY_PREFIX) :].strip()
        return self

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the gateway and every guest (safe to call twice)."""
        if self.process is not None:
            if self.process.poll() is None:
                _terminate(self.process.pid, timeout)
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

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# --------------------------------------------------------------------------- the daemon
@dataclass(frozen=True)
class DaemonInfo:
    url: str
    pid: int
    instances: int


def _is_gateway(pid: int) -> bool:
    # A recycled pid must never be taken (or killed) for our gateway.
    try:
        return "fedkeeper.edge" in " ".join(psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def running_daemon(state_dir: Path) -> DaemonInfo | None:
    """The gateway serving from ``state_dir``, if one runs."""
    try:
        state = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
        info = DaemonInfo(str(state["url"]), int(state["pid"]), int(state["instances"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if _is_gateway(info.pid) else None


def start_daemon(
    state_dir: Path,
    instances: int,
    host: str = "127.0.0.1",
    port: int = 0,
    args: list[str] | None = None,
    start_timeout: float = 120.0,
) -> DaemonInfo:
    """Start a detached gateway that outlives the caller; returns once it serves."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_file = state_dir / LOG_FILE
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    with open(log_file, "a", encoding="utf-8") as log:
        process = subprocess.Popen(
            gateway_command(instances, state_dir, host, port, args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # detached: survives the CLI that started it
            close_fds=True,
        )
    (state_dir / PID_FILE).write_text(f"{process.pid}\n", encoding="utf-8")
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            (state_dir / PID_FILE).unlink(missing_ok=True)
            raise EdgeError(f"the edge gateway exited with status {process.returncode}:\n{_tail(log_file)}")
        info = running_daemon(state_dir)
        if info is not None and info.pid == process.pid:
            return info
        time.sleep(0.1)
    _terminate(process.pid, 10.0)
    (state_dir / PID_FILE).unlink(missing_ok=True)
    raise EdgeError(f"the edge gateway did not come up within {start_timeout:g} s:\n{_tail(log_file)}")


def stop_daemon(state_dir: Path, timeout: float = 15.0) -> bool:
    """Stop the daemon of ``state_dir`` and its guests; False when none ran (safe to call twice)."""
    try:
        pid = int((state_dir / PID_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    stopped = _is_gateway(pid)
    if stopped:
        _terminate(pid, timeout)
    (state_dir / PID_FILE).unlink(missing_ok=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped
