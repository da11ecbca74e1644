"""Run the edge gateway (and so the fleet) as a separate process: a child for tests and benches,
or a detached daemon for ``main.py -d`` / ``-r``.

The daemon's state dir holds ``gateway.pid``, ``gateway.log``, ``gateway.token`` (0600, the bearer
token every request needs) and, while it serves, ``gateway.json`` (``{"url", "pid", "instances",
"token_id", "firmware"}``): any process of the same user (the keeper, an invoker running in a fabric worker)
finds the gateway's URL there.
"""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from fedkeeper.function.tasks.contract import EDGE_TOKEN_FILE
from fedkeeper.host.childproc import ChildService, Daemon, tail
from fedkeeper.host.edge.errors import EdgeError
from fedkeeper.host.edge.gateway import READY_LINE, STATE_FILE
from fedkeeper.host.edge.token import write_token

PID_FILE = "gateway.pid"
LOG_FILE = "gateway.log"
# SIGTERM powers the guests off, and they die with the gateway (parent-death signal): the sweep
# for leftovers need not wait long.
_GRACE_S = 0.5


def gateway_command(
    instances: int, state_dir: Path, host: str = "127.0.0.1", port: int = 0, args: list[str] | None = None
) -> list[str]:
    return [
        sys.executable, "-m", "fedkeeper.host.edge",
        "--instances", str(instances),
        "--host", host,
        "--port", str(port),
        "--state-dir", str(state_dir),
        *(args or []),
    ]  # fmt: skip


class GatewayProcess(ChildService):
    """An edge gateway in a child process, stopped (with its guests) by ``stop()``.

    Parameters
    ----------
    instances
        Guests to boot.
    state_dir
        Pipes, logs and ``gateway.json``; a temporary folder (removed on ``cleanup``) when None.
    args
        More ``python -m fedkeeper.host.edge`` flags (``--kernel``, ``--job-timeout-s`` ...).
    token
        The bearer token requests need (a random one when None; see :attr:`token`).
    """

    ready_line = READY_LINE
    what = "the edge gateway"
    start_error = EdgeError
    stop_timeout = 15.0
    grace = _GRACE_S

    def __init__(
        self,
        instances: int,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        args: list[str] | None = None,
        start_timeout: float = 120.0,
        token: str | None = None,
    ) -> None:
        super().__init__("edge-", LOG_FILE, state_dir, start_timeout)
        self.token = token or secrets.token_urlsafe(32)
        write_token(self.state_dir / EDGE_TOKEN_FILE, self.token)
        self.command = gateway_command(instances, self.state_dir, host, port, args)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def argv(self) -> list[str]:
        return self.command


# --------------------------------------------------------------------------- the daemon
@dataclass(frozen=True)
class DaemonInfo:
    url: str
    pid: int
    instances: int
    token_id: str  # fingerprint of the token it serves (fedkeeper.host.edge.token.fingerprint)
    firmware: str  # what its guests run (fedkeeper.host.edge.firmware.FIRMWARES)


def _daemon(state_dir: Path) -> Daemon:
    return Daemon(
        state_dir / PID_FILE, state_dir / LOG_FILE, "fedkeeper.host.edge", _GRACE_S, (state_dir / STATE_FILE,)
    )


def running_daemon(state_dir: Path) -> DaemonInfo | None:
    """The gateway serving from ``state_dir``, if one runs."""
    try:
        state = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
        info = DaemonInfo(
            str(state["url"]),
            int(state["pid"]),
            int(state["instances"]),
            str(state.get("token_id", "")),
            str(state.get("firmware", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if _daemon(state_dir).owns(info.pid) else None


def start_daemon(
    state_dir: Path,
    instances: int,
    host: str = "127.0.0.1",
    port: int = 0,
    args: list[str] | None = None,
    start_timeout: float = 120.0,
    token: str | None = None,
) -> DaemonInfo:
    """Start a detached gateway that outlives the caller; returns once it serves.

    ``token`` is written to the state dir's token file first (by default the gateway makes one).
    """
    if token is not None:
        write_token(state_dir / EDGE_TOKEN_FILE, token)
    daemon = _daemon(state_dir)
    process = daemon.spawn(gateway_command(instances, state_dir, host, port, args))

    def serving() -> DaemonInfo | None:
        info = running_daemon(state_dir)
        return info if info is not None and info.pid == process.pid else None

    try:
        info = daemon.wait_ready(process, serving, start_timeout, 10.0)
    except TimeoutError:
        raise EdgeError(
            f"the edge gateway did not come up within {start_timeout:g} s:\n{tail(daemon.log_file)}"
        ) from None
    if info is None:
        raise EdgeError(f"the edge gateway exited with status {process.returncode}:\n{tail(daemon.log_file)}")
    return info


def stop_daemon(state_dir: Path, timeout: float = 15.0) -> bool:
    """Stop the daemon of ``state_dir`` and its guests; False when none ran (safe to call twice)."""
    return _daemon(state_dir).stop(timeout)
