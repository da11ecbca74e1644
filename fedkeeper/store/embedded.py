"""Run a local MongoDB-compatible server (``secantusd-py``) as a separate process.

``mongo_config.url: embedded`` uses it, so a fresh machine trains with no MongoDB installed.
secantusdb is GPL, so it is only ever run as its own process, never imported.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from fedkeeper.errors import StoreError

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
    """A ``secantusd-py`` child process.

    Parameters
    ----------
    storage
        Data directory, or ``":memory:"`` for a throw-away server (tests).
    port
        0 picks a free port; the chosen one is read from the server's log line.
    """

    def __init__(self, storage: str | Path = ":memory:", port: int = 0, host: str = "127.0.0.1") -> None:
        self.storage = str(storage)
        self.port = port
        self.host = host
        self._process: subprocess.Popen[str] | None = None
        self._tail: deque[str] = deque(maxlen=30)

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def start(self, timeout_s: float = 30.0) -> EmbeddedMongo:
        if self.storage != ":memory:":
            Path(self.storage).mkdir(parents=True, exist_ok=True)
        command = [
            _daemon_binary(),
            "--host", self.host,
            "--port", str(self.port),
            "--storage-path", self.storage,
            "--cache-size", "256M",
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C in the keeper's terminal must not kill the store first
        )
        found = threading.Event()

        def pump() -> None:
            assert self._process is not None and self._process.stdout is not None
            for line in self._process.stdout:
                self._tail.append(line.rstrip())
                match = _LISTENING.search(line)
                if match and not found.is_set():
                    self.port = int(match.group(2))
                    found.set()

        threading.Thread(target=pump, name="secantusd-log", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not found.wait(0.05):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = " | ".join(list(self._tail)[-3:])
                raise StoreError(f"embedded MongoDB server did not start ({self.storage}): {tail}")
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def __enter__(self) -> EmbeddedMongo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
