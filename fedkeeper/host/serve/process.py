"""``fedkeeper serve`` in a child process (tests, benches): started on a free port, stopped by pid."""

from __future__ import annotations

import sys
from pathlib import Path

from fedkeeper.function.errors import FedkeeperError
from fedkeeper.host.childproc import ChildService
from fedkeeper.host.serve.service import READY_LINE


class ServeStartError(FedkeeperError):
    """``fedkeeper serve`` did not come up (the message quotes its log)."""


class ServeProcess(ChildService):
    """``python -m fedkeeper serve -c CONFIG --port PORT`` as a child; ``url`` once started.

    Parameters
    ----------
    config
        The config file it serves.
    port
        0 picks a free port.
    """

    ready_line = READY_LINE
    what = "fedkeeper serve"
    start_error = ServeStartError

    def __init__(self, config: Path, port: int = 0, start_timeout: float = 60.0) -> None:
        super().__init__("serve-", "serve.log", None, start_timeout)
        self.config = config
        self.port = port

    def argv(self) -> list[str]:
        command = [sys.executable, "-m", "fedkeeper", "serve", "-c", str(self.config)]
        return [*command, "--host", "127.0.0.1", "--port", str(self.port)]
