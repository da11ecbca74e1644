"""The installation's SSH key pair: one per installation, made on first use, kept 0600.

``$FEDKEEPER_SSH_DIR`` or ``~/.fedkeeper/ssh`` holds ``id_ed25519`` (OpenSSH private key format)
and ``id_ed25519.pub``. The private key is registered with the redactor the moment it is read, and
reaches the invoker only as a deploy-time binding (see
:class:`~fedkeeper.host.providers.hosts.HostsProvider`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedkeeper.function.errors import ConfigError
from fedkeeper.function.invoke import ssh
from fedkeeper.function.invoke.hosts import register_key_text

KEY_DIR_ENV = "FEDKEEPER_SSH_DIR"
KEY_NAME = "id_ed25519"


def key_dir() -> Path:
    root = os.environ.get(KEY_DIR_ENV)
    return (Path(root) if root else Path.home() / ".fedkeeper" / "ssh").resolve()


@dataclass(frozen=True)
class InstallationKey:
    """The key pair; ``text`` (the private key) is left out of repr."""

    path: Path
    text: str = field(repr=False)
    pkey: paramiko.PKey = field(repr=False)

    @property
    def public_line(self) -> str:
        return f"{ssh.public_line(self.pkey)} fedkeeper@{socket.gethostname()}"

    @property
    def fingerprint(self) -> str:
        return ssh.fingerprint(self.pkey)


def _generate(path: Path) -> None:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL: two commands starting at once never overwrite each other's key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)


def load(directory: Path | None = None, *, create: bool = False) -> InstallationKey:
    """The installation's key from ``directory`` (default :func:`key_dir`), made first when ``create``."""
    path = (directory or key_dir()) / KEY_NAME
    if not path.exists():
        if not create:
            raise ConfigError(f"{path}: no installation key; `fedkeeper hosts add` makes one")
        with contextlib.suppress(FileExistsError):  # another command made it first
            _generate(path)
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the installation key ({type(exc).__name__})") from None
    if mode & 0o077:
        raise ConfigError(f"{path}: mode {mode:o} lets others read the key; chmod 600 it")
    register_key_text(text)
    try:
        pkey = ssh.parse_private(text, str(path))
    except ssh.SshError as exc:
        raise ConfigError(str(exc)) from None
    key = InstallationKey(path, text, pkey)
    public = path.with_name(f"{KEY_NAME}.pub")
    if not public.exists():
        public.write_text(key.public_line + "\n", encoding="utf-8")
    return key
