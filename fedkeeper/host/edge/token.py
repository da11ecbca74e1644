"""The edge gateway's bearer token: generated at deploy, kept in a 0600 file of the state dir.

The gateway reads it from that file (never from its command line); deploy binds it to the
invoker like any other platform credential.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from fedkeeper.host.edge.errors import EdgeError


def fingerprint(token: str) -> str:
    """A short, non-secret id of a token (the daemon's state file says which token it serves)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def write_token(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` with mode 0600, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    os.replace(partial, path)


def read_token(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EdgeError(f"{path}: cannot read the gateway token ({type(exc).__name__})") from None
    return token or None


def load_or_create(path: Path) -> str:
    """The token in ``path``; a fresh random one (written there) when there is none."""
    token = read_token(path)
    if token is None:
        token = secrets.token_urlsafe(32)
        write_token(path, token)
    return token
