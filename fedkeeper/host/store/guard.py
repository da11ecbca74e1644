"""Keep the embedded MongoDB server running exactly while some process holds its lease.

``python -m fedkeeper.host.store.guard LEASE -- COMMAND...`` runs COMMAND (``secantusd-py``) as its
child. Every process using the server holds a shared ``flock`` on the LEASE file, which the kernel
drops when that process ends, even by SIGKILL. Every ``POLL_S`` the guard tries an exclusive lock:
once it gets one, no holder is left, and it stops the server while still holding the lock, so that
nobody joins a server on its way out. SIGTERM stops it too (``-r``, or the last holder leaving).
The server gets SIGTERM if the guard itself dies (Linux's parent-death signal).

Until the server's ``listening`` line, its output goes to stdout (the starter reads the port and
any start-up error there); after it, to stderr (a log file), so that no pipe to a holder that has
died can break the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import signal
import subprocess
import sys
import threading
from typing import IO

POLL_S = 0.2
STOP_TIMEOUT_S = 10.0
LISTENING = "secantus listening on"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the server's process before exec: SIGTERM it when the guard dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _relay(lines: IO[str]) -> None:
    out = sys.stdout
    for line in lines:
        out.write(line)
        out.flush()
        if out is sys.stdout and LISTENING in line:
            sys.stdout.close()
            out = sys.stderr


def _stop(server: subprocess.Popen[str]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m fedkeeper.host.store.guard LEASE -- COMMAND...", file=sys.stderr)
        return 2
    lease_path, command = argv[0], argv[2:]
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the keeper, not its store
    server = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # preexec_fn is safe here: the guard has started no thread yet.
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    assert server.stdout is not None
    threading.Thread(target=_relay, args=(server.stdout,), name="relay", daemon=True).start()
    with open(lease_path, "a+", encoding="utf-8") as lease:
        while not stopping.wait(POLL_S):
            if server.poll() is not None:
                return server.returncode
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break  # no holder left
        _stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
