"""Run a local MongoDB-compatible server (``secantusd-py``) as a separate process.

``mongo_config.url: embedded`` uses it, so a fresh machine trains with no MongoDB installed.
secantusdb is GPL, so it is only ever run as its own process, never imported.

The server runs under :mod:`fedkeeper.host.store.guard`, which ends it once no process holds its
lease: a keeper killed by SIGKILL leaves nothing running, and a restarted one starts it again.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO

import pymongo
from pymongo.errors import PyMongoError

from fedkeeper.function.errors import StoreError
from fedkeeper.host.childproc import Daemon

_LISTENING = re.compile(r"secantus listening on ([\d.]+):(\d+)")


def _daemon_binary() -> str:
    found = shutil.which("secantusd-py") or str(Path(sys.executable).with_name("secantusd-py"))
    if not Path(found).exists():
        raise StoreError(
            "mongo_config.url is 'embedded' but secantusd-py is not installed: "
            "pip install secantusdb, or set mongo_config.url to a mongodb:// URL"
        )
    return found


class EmbeddedMongo:
    """A ``secantusd-py`` server, held for as long as this object is started.

    Parameters
    ----------
    storage
        Data directory, or ``":memory:"`` for a throw-away server (tests).
    port
        0 picks a free port; the chosen one is read from the server's log line.
    state_dir
        Where its lease, pid and log files live (``mongo-<port>.*``). With a fixed ``port``, a
        server another process started there is reused and held too. None: a private
        temporary folder, removed on ``stop``.
    """

    def __init__(
        self,
        storage: str | Path = ":memory:",
        port: int = 0,
        host: str = "127.0.0.1",
        state_dir: Path | None = None,
    ) -> None:
        self.storage = str(storage)
        self.port = port
        self._files = f"mongo-{port}"  # named by the requested port, so -r finds them
        self.host = host
        self._tmp = tempfile.TemporaryDirectory(prefix="secantusd-") if state_dir is None else None
        self.state_dir = Path(self._tmp.name) if self._tmp is not None else state_dir
        self._lease: IO[str] | None = None
        self._tail: deque[str] = deque(maxlen=30)

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    @property
    def daemon(self) -> Daemon:
        """The guard process (found again through its pid file, e.g. by ``-r``)."""
        assert self.state_dir is not None
        stem = self.state_dir / self._files
        return Daemon(stem.with_suffix(".pid"), stem.with_suffix(".log"), "fedkeeper.host.store.guard")

    def start(self, timeout_s: float = 30.0) -> EmbeddedMongo:
        """Hold the lease, and start the server unless one already answers on ``port``."""
        assert self.state_dir is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lease = open(self.state_dir / f"{self._files}.lease", "a+", encoding="utf-8")  # noqa: SIM115
        # Blocks only while a guard whose holders all left is stopping its server.
        fcntl.flock(lease, fcntl.LOCK_SH)
        self._lease = lease
        if self.port and _answers(self.url):
            return self
        try:
            self._spawn(lease.name, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, lease: str, timeout_s: float) -> None:
        if self.storage != ":memory:":
            Path(self.storage).mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "fedkeeper.host.store.guard", lease, "--",
            _daemon_binary(),
            "--host", self.host,
            "--port", str(self.port),
            "--storage-path", self.storage,
            "--cache-size", "256M",
        ]  # fmt: skip
        daemon = self.daemon
        with open(daemon.log_file, "a", encoding="utf-8") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,  # Ctrl-C in the keeper's terminal must not kill the store first
            )
        daemon.pid_file.write_text(f"{process.pid}\n", encoding="utf-8")
        found = threading.Event()

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                self._tail.append(line.rstrip())
                match = _LISTENING.search(line)
                if match and not found.is_set():
                    self.port = int(match.group(2))
                    found.set()

        threading.Thread(target=pump, name="secantusd-log", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found.wait(0.05):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = " | ".join(list(self._tail)[-3:])
                raise StoreError(f"embedded MongoDB server did not start ({self.storage}): {tail}")

    def stop(self) -> None:
        """Let go of the server; the last holder out stops it (safe to call twice)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            try:
                fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another holder still uses it, or its guard is already stopping it
            else:
                # Still holding the lock: nobody joins while it stops.
                self.daemon.stop(timeout=15.0)
            lease.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedMongo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(url: str) -> bool:
    client: pymongo.MongoClient = pymongo.MongoClient(url, serverSelectionTimeoutMS=1500)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()
