"""Reaching a host from the keeper: first contact (pin its key, install ours), later logins, ping.

First contact accepts the host key only when it matches a fingerprint the user checked out of
band; the key is then pinned in the registry, and every later login refuses any other. The
installation's public key is installed once, logging in with a password or an existing key.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import stat
import time
from dataclasses import dataclass

import paramiko

from fedkeeper.function.invoke import ssh
from fedkeeper.host.hosts.keys import InstallationKey
from fedkeeper.host.hosts.registry import Host

CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FirstContact:
    """What first contact learnt: the host key to pin and the machine."""

    host_key: str
    host_key_fingerprint: str
    arch: str


def first_contact(
    endpoint: ssh.Endpoint,
    key: InstallationKey,
    *,
    expected_fingerprint: str | None,
    password: str | None = None,
    identity: paramiko.PKey | None = None,
) -> FirstContact:
    """Check the host's key against ``expected_fingerprint``, log in (our key if already installed,
    else ``identity`` or ``password``), install our public key, and prove it works."""
    pkey = identity or key.pkey
    client, presented = ssh.connect(
        endpoint,
        host_key=None,
        expected_fingerprint=expected_fingerprint,
        pkey=pkey,
        password=password,
        connect_timeout_s=CONNECT_TIMEOUT_S,
    )
    with client:
        install_public_key(client, key.public_line)
        arch = ssh.run(client, endpoint.where, ["uname", "-m"], timeout_s=COMMAND_TIMEOUT_S)
    # Log in again as every later call will: the pinned key, our key and nothing else.
    with login(endpoint, ssh.public_line(presented), key):
        pass
    return FirstContact(
        host_key=ssh.public_line(presented),
        host_key_fingerprint=ssh.fingerprint(presented),
        arch=arch.stdout.decode(errors="replace").strip(),
    )


def install_public_key(client: paramiko.SSHClient, line: str) -> bool:
    """Append ``line`` to ``~/.ssh/authorized_keys`` unless it is there; False when it was."""
    sftp = client.open_sftp()
    with sftp:
        with contextlib.suppress(OSError):  # it exists (else the open below fails with its own error)
            sftp.mkdir(".ssh", 0o700)
        path = ".ssh/authorized_keys"
        try:
            with sftp.open(path, "r") as existing:
                present = existing.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            present = []
        key = " ".join(line.split()[:2])
        if any(" ".join(entry.split()[:2]) == key for entry in present):
            return False
        with sftp.open(path, "a") as out:
            out.write(("" if not present or not present[-1] else "\n") + line + "\n")
        sftp.chmod(path, 0o600)
    return True


def login(endpoint: ssh.Endpoint, host_key: str, key: InstallationKey) -> paramiko.SSHClient:
    """A connection with the pinned ``host_key`` and the installation's key."""
    client, _ = ssh.connect(
        endpoint,
        host_key=ssh.parse_public(host_key, f"{endpoint.where}: pinned host key"),
        pkey=key.pkey,
        connect_timeout_s=CONNECT_TIMEOUT_S,
    )
    return client


def login_host(host: Host, key: InstallationKey) -> paramiko.SSHClient:
    return login(host.endpoint, host.host_key, key)


def ping(host: Host, key: InstallationKey) -> float:
    """Log in and run ``true``; the round trip in milliseconds (SshError when it fails)."""
    started = time.monotonic()
    with login_host(host, key) as client:
        output = ssh.run(client, host.endpoint.where, ["true"], timeout_s=COMMAND_TIMEOUT_S)
    if output.exit_status != 0:
        raise ssh.SshError(f"{host.endpoint.where}: `true` exited {output.exit_status}")
    return (time.monotonic() - started) * 1000


def makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    """``mkdir -p`` over SFTP (relative paths are under the login's home)."""
    current = "/" if path.startswith("/") else ""
    for part in [p for p in path.split("/") if p]:
        current = posixpath.join(current, part) if current else part
        try:
            if stat.S_ISDIR(sftp.stat(current).st_mode or 0):
                continue
        except FileNotFoundError:
            pass
        try:
            sftp.mkdir(current, 0o755)
        except OSError as exc:
            if exc.errno not in (None, errno.EEXIST):
                raise
