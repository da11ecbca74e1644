"""Start and stop a fabric as a separate process: a child for tests, or a detached daemon.

``FabricProcess`` runs ``python -m fedkeeper.host.fabric`` as a child and stops it (and its workers)
when asked. ``ensure_local_fabric`` starts a *detached* daemon for a config's local OpenWhisk
cluster, so that ``main.py -d`` in one process and ``main.py -s`` in the next find the same
fabric and actions; ``stop_local_fabric`` stops it through its pid file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from fedkeeper.function.config import GUEST_AUTH, OpenWhiskCluster
from fedkeeper.function.errors import FedkeeperError
from fedkeeper.host.childproc import ChildService, Daemon, tail
from fedkeeper.host.fabric.auth import ADMIN_KEY_FILE, write_private
from fedkeeper.host.fabric.server import READY_LINE


class FabricStartError(FedkeeperError):
    """The fabric process did not come up (the message quotes its log)."""


def _command(host: str, port: int, state_dir: Path | None, args: list[str]) -> list[str]:
    command = [sys.executable, "-m", "fedkeeper.host.fabric", "--host", host, "--port", str(port)]
    if state_dir is not None:
        command += ["--state-dir", str(state_dir)]
    return command + args


def _limit_args(limits: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in limits.items():
        out += ["--" + name.replace("_", "-"), str(value)]
    return out


class FabricProcess(ChildService):
    """A fabric in a child process; ``stop`` also ends every worker it started.

    Parameters
    ----------
    port
        0 picks a free port.
    state_dir
        Where actions persist; a temporary folder (removed on ``cleanup``) when None.
    limits
        :class:`~fedkeeper.host.fabric.limits.FabricLimits` fields to change, e.g. ``{"max_workers": 1}``.
    faults
        A fault plan (a mapping) or the path of a plan file.
    auth
        More keys, ``uuid:key[=namespace]``: passed in a private ``--auth-file``.
    args
        More command-line flags.
    """

    ready_line = READY_LINE
    what = "the fabric"
    start_error = FabricStartError

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        state_dir: Path | None = None,
        limits: dict[str, Any] | None = None,
        faults: dict[str, Any] | Path | None = None,
        auth: list[str] | None = None,
        args: list[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__("fabric-", "fabric.log", state_dir, start_timeout)
        self.host = host
        self.requested_port = port
        extra = _limit_args(limits or {}) + list(args or [])
        if auth:
            keys = Path(self._tmp.name) / "auth"
            write_private(keys, "".join(f"{spec}\n" for spec in auth))
            extra += ["--auth-file", str(keys)]
        if isinstance(faults, dict):
            plan = Path(self._tmp.name) / "faults.json"
            plan.write_text(json.dumps(faults), encoding="utf-8")
            faults = plan
        if faults is not None:
            extra += ["--faults", str(faults)]
        self.args = extra

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def admin_key(self) -> str:
        """The ``uuid:key`` for ``/admin/*``, which the fabric wrote at start."""
        return admin_key(self.state_dir)

    def argv(self) -> list[str]:
        return _command(self.host, self.requested_port, self.state_dir, self.args)


# --------------------------------------------------------------------------- the daemon
def _answers(url: str) -> bool:
    try:
        requests.get(url.rstrip("/") + "/api/v1", timeout=2)
    except requests.RequestException:
        return False
    return True


def _address(cluster: OpenWhiskCluster) -> tuple[str, int]:
    parts = urlsplit(cluster.base_url)
    host = parts.hostname or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def admin_key(state_dir: Path) -> str:
    """The admin key a fabric serving from ``state_dir`` made at start."""
    return (state_dir / ADMIN_KEY_FILE).read_text(encoding="utf-8").strip()


def _daemon(port: int, state_root: Path) -> Daemon:
    return Daemon(
        state_root / f"fabric-{port}.pid", state_root / f"fabric-{port}.log", "fedkeeper.host.fabric"
    )


def ensure_local_fabric(cluster: OpenWhiskCluster, state_root: Path, start_timeout: float = 30.0) -> bool:
    """Start a detached fabric for a ``local`` cluster when nothing answers at its ``base_url``.

    Returns True when it started one. The daemon outlives the caller; its pid and log files are
    ``<state_root>/fabric-<port>.pid`` and ``.log``, its actions ``<state_root>/<port>`` (with
    ``state_root`` = ``.fedkeeper/fabric``, the same folder ``python -m fedkeeper.host.fabric`` uses).
    """
    if not cluster.local or _answers(cluster.base_url):
        return False
    if urlsplit(cluster.base_url).scheme != "http":
        raise FabricStartError(f"local cluster {cluster.base_url}: the local fabric serves http:// only")
    host, port = _address(cluster)
    daemon = _daemon(port, state_root)
    args: list[str] = []
    auth_file = state_root / f"fabric-{port}.auth"
    if cluster.auth != GUEST_AUTH:
        # The key goes in a private file (read once at start, then removed), never on the command
        # line; a cluster with its own key does not accept the public guest key.
        write_private(auth_file, f"{cluster.auth}={cluster.namespace}\n")
        args += ["--auth-file", str(auth_file), "--no-guest"]
    try:
        process = daemon.spawn(_command(host, port, state_root / str(port), args))
        up = daemon.wait_ready(process, lambda: _answers(cluster.base_url) or None, start_timeout, 5.0)
    except TimeoutError:
        raise FabricStartError(
            f"local fabric for {cluster.base_url} did not answer within {start_timeout:g} s"
        ) from None
    finally:
        auth_file.unlink(missing_ok=True)
    if up is None:
        if _answers(cluster.base_url):  # another caller won the race to start it
            return False
        raise FabricStartError(
            f"local fabric for {cluster.base_url} exited with status {process.returncode}:\n{tail(daemon.log_file)}"
        )
    return True


def stop_local_fabric(cluster: OpenWhiskCluster, state_root: Path, timeout: float = 10.0) -> bool:
    """Stop the daemon ``ensure_local_fabric`` started (through its pid file); False if none ran."""
    return _daemon(_address(cluster)[1], state_root).stop(timeout)


def fabric_pid(cluster: OpenWhiskCluster, state_root: Path) -> int | None:
    """The daemon's pid from its pid file, if it runs."""
    return _daemon(_address(cluster)[1], state_root).pid()


__all__ = [
    "FabricProcess",
    "FabricStartError",
    "admin_key",
    "ensure_local_fabric",
    "fabric_pid",
    "stop_local_fabric",
]
