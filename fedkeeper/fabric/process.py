"""Start and stop a fabric as a separate process: a child for tests, or a detached daemon.

``FabricProcess`` runs ``python -m fedkeeper.fabric`` as a child and stops it (and its workers)
when asked. ``ensure_local_fabric`` starts a *detached* daemon for a config's local OpenWhisk
cluster, so that ``main.py -d`` in one process and ``main.py -s`` in the next find the same
fabric and actions; ``stop_local_fabric`` stops it through its pid file.
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
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psutil
import requests

from fedkeeper.config import GUEST_AUTH, OpenWhiskCluster
from fedkeeper.errors import FedkeeperError
from fedkeeper.fabric.server import READY_LINE

_READY_PREFIX = READY_LINE.split("{", 1)[0]


class FabricStartError(FedkeeperError):
    """The fabric process did not come up (the message quotes its log)."""


def _command(host: str, port: int, state_dir: Path | None, args: list[str]) -> list[str]:
    command = [sys.executable, "-m", "fedkeeper.fabric", "--host", host, "--port", str(port)]
    if state_dir is not None:
        command += ["--state-dir", str(state_dir)]
    return command + args


def _limit_args(limits: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for name, value in limits.items():
        out += ["--" + name.replace("_", "-"), str(value)]
    return out


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _terminate_tree(pid: int, timeout: float) -> None:
    """SIGTERM ``pid``, then SIGKILL it and any descendant still alive (workers included)."""
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
    # Workers live in their own sessions; the fabric kills them on SIGTERM, this catches the rest.
    with contextlib.suppress(psutil.NoSuchProcess):
        family += [c for c in root.children(recursive=True) if c not in family]
    _, alive = psutil.wait_procs(family[1:], timeout=1.0)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=2.0)


class FabricProcess:
    """A fabric in a child process.

    Parameters
    ----------
    port
        0 picks a free port.
    state_dir
        Where actions persist; a temporary folder (removed on ``stop``) when None.
    limits
        :class:`~fedkeeper.fabric.limits.FabricLimits` fields to change, e.g. ``{"max_workers": 1}``.
    faults
        A fault plan (a mapping) or the path of a plan file.
    args
        More command-line flags.
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        state_dir: Path | None = None,
        limits: dict[str, Any] | None = None,
        faults: dict[str, Any] | Path | None = None,
        args: list[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self._tmp = tempfile.TemporaryDirectory(prefix="fabric-")
        self.state_dir = state_dir or Path(self._tmp.name) / "state"
        self.log_path = Path(self._tmp.name) / "fabric.log"
        extra = _limit_args(limits or {}) + list(args or [])
        if isinstance(faults, dict):
            plan = Path(self._tmp.name) / "faults.json"
            plan.write_text(json.dumps(faults), encoding="utf-8")
            faults = plan
        if faults is not None:
            extra += ["--faults", str(faults)]
        self.args = extra
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self._log: IO[str] | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self) -> FabricProcess:
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            _command(self.host, self.requested_port, self.state_dir, self.args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        line = _read_line(self.process, self.start_timeout)
        if not line.startswith(_READY_PREFIX):
            self.stop()
            raise FabricStartError(
                f"the fabric did not start: {line or 'no ready line'}\n{_tail(self.log_path)}"
            )
        self.url = line[len(_READY_PREFIX) :].strip()
        return self

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the fabric and every worker it started (safe to call twice)."""
        if self.process is not None:
            if self.process.poll() is None:
                _terminate_tree(self.process.pid, timeout)
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

    def __enter__(self) -> FabricProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or "" if it exits or stays silent past ``timeout``."""
    assert process.stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return result[0].strip() if result else ""


# --------------------------------------------------------------------------- the daemon
def _answers(url: str) -> bool:
    try:
        requests.get(url.rstrip("/") + "/api/v1", timeout=2)
    except requests.RequestException:
        return False
    return True


def _daemon_files(cluster: OpenWhiskCluster, state_root: Path) -> tuple[str, int, Path, Path, Path]:
    parts = urlsplit(cluster.base_url)
    host = parts.hostname or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (
        host,
        port,
        state_root / f"fabric-{port}.pid",
        state_root / f"fabric-{port}.log",
        state_root / str(port),
    )


def ensure_local_fabric(cluster: OpenWhiskCluster, state_root: Path, start_timeout: float = 30.0) -> bool:
    """Start a detached fabric for a ``local`` cluster when nothing answers at its ``base_url``.

    Returns True when it started one. The daemon outlives the caller; its pid and log files are
    ``<state_root>/fabric-<port>.pid`` and ``.log``, its actions ``<state_root>/<port>`` (with
    ``state_root`` = ``.fedkeeper/fabric``, the same folder ``python -m fedkeeper.fabric`` uses).
    """
    if not cluster.local or _answers(cluster.base_url):
        return False
    if urlsplit(cluster.base_url).scheme != "http":
        raise FabricStartError(f"local cluster {cluster.base_url}: the local fabric serves http:// only")
    host, port, pid_file, log_file, state_dir = _daemon_files(cluster, state_root)
    state_root.mkdir(parents=True, exist_ok=True)
    args: list[str] = []
    if cluster.auth != GUEST_AUTH:
        args += ["--auth", f"{cluster.auth}={cluster.namespace}"]
    with open(log_file, "a", encoding="utf-8") as log:
        process = subprocess.Popen(
            _command(host, port, state_dir, args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # detached: survives the CLI that started it
            close_fds=True,
        )
    pid_file.write_text(f"{process.pid}\n", encoding="utf-8")
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pid_file.unlink(missing_ok=True)
            if _answers(cluster.base_url):  # another caller won the race to start it
                return False
            raise FabricStartError(
                f"local fabric for {cluster.base_url} exited with status {process.returncode}:\n{_tail(log_file)}"
            )
        if _answers(cluster.base_url):
            return True
        time.sleep(0.1)
    _terminate_tree(process.pid, 5.0)
    pid_file.unlink(missing_ok=True)
    raise FabricStartError(f"local fabric for {cluster.base_url} did not answer within {start_timeout:g} s")


def stop_local_fabric(cluster: OpenWhiskCluster, state_root: Path, timeout: float = 10.0) -> bool:
    """Stop the daemon ``ensure_local_fabric`` started (through its pid file); False if none ran."""
    _, _, pid_file, _, _ = _daemon_files(cluster, state_root)
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    stopped = False
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        process = psutil.Process(pid)
        # A recycled pid must not be killed: check that it still is our fabric.
        if "fedkeeper.fabric" in " ".join(process.cmdline()):
            _terminate_tree(pid, timeout)
            stopped = True
    pid_file.unlink(missing_ok=True)
    return stopped


def fabric_pid(cluster: OpenWhiskCluster, state_root: Path) -> int | None:
    """The daemon's pid from its pid file, if it runs."""
    _, _, pid_file, _, _ = _daemon_files(cluster, state_root)
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


__all__ = ["FabricProcess", "FabricStartError", "ensure_local_fabric", "fabric_pid", "stop_local_fabric"]
