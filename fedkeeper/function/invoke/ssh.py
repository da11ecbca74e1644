"""SSH to a registered host: its host key pinned, the installation's key, paramiko (no ``ssh`` binary).

Remote commands are argument lists joined with :func:`shlex.join`, never text pasted into a
shell line. A connection's socket carries ``TCP_USER_TIMEOUT`` and the transport sends keepalives,
so a link that goes silent is noticed within ``dead_link_s`` instead of a TCP retransmission
timeout of many minutes.

Errors name the host (``user@address:port``) and what went wrong; key material never appears in them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shlex
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paramiko

from fedkeeper.function.errors import ProviderError
from fedkeeper.function.tasks import frames

_POLL_S = 0.2
_STDERR_KEPT = 4096  # the tail of a command's stderr kept for error messages
_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


class SshError(ProviderError):
    """A host could not be reached, refused us, or was lost mid-command."""


class HostUnreachable(SshError):
    """No TCP connection could be made (refused, no route, connect time-out): nothing ran."""


class HostKeyRefused(SshError):
    """The host's key is not the one pinned for it (or, at first contact, not the one expected)."""


class AuthRefused(SshError):
    """The host refused our credentials."""


class LinkLost(SshError):
    """The connection broke, or went silent past ``dead_link_s``, before the command answered."""


class CommandTimeout(SshError):
    """The command did not answer within its time."""


# --------------------------------------------------------------------------- keys
def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key (as ``ssh-keygen -lf`` prints it)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def public_line(key: paramiko.PKey) -> str:
    """The key as an OpenSSH public key line without comment (``ssh-ed25519 AAAA...``)."""
    return f"{key.get_name()} {key.get_base64()}"


def parse_public(line: str, where: str) -> paramiko.PKey:
    """An OpenSSH public key line (``type base64 [comment]``) as a key; SshError naming ``where``."""
    parts = line.split()
    if len(parts) < 2:
        raise SshError(f"{where}: not an OpenSSH public key line")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except (ValueError, paramiko.SSHException, paramiko.pkey.UnknownKeyType):
        raise SshError(f"{where}: cannot read the {parts[0]} public key") from None


def parse_private(text: str, where: str) -> paramiko.PKey:
    """An unencrypted OpenSSH/PEM private key; the error names ``where``, never the key."""
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    raise SshError(f"{where}: not an unencrypted ed25519, ecdsa or rsa private key")


# --------------------------------------------------------------------------- connections
@dataclass(frozen=True)
class Endpoint:
    """Where a host's sshd listens, and whom we log in as."""

    address: str
    port: int
    user: str

    @property
    def where(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_name(self) -> str:
        """The host's name in a known_hosts table (``[address]:port`` off port 22)."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


class _Expect(paramiko.MissingHostKeyPolicy):
    """First contact: accept the host's key only when it matches the fingerprint the user checked."""

    def __init__(self, endpoint: Endpoint, expected: str | None) -> None:
        self.endpoint = endpoint
        self.expected = expected
        self.seen: paramiko.PKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.seen = key
        offered = fingerprint(key)
        if self.expected is None:
            raise HostKeyRefused(
                f"{self.endpoint.where}: first contact, host key {key.get_name()} {offered} is not confirmed; "
                f"check it on the host (ssh-keygen -lf /etc/ssh/ssh_host_{_short(key)}_key.pub) and give "
                f"--host-key-fingerprint {offered}"
            )
        if offered != self.expected:
            raise HostKeyRefused(
                f"{self.endpoint.where}: host key {offered} is not the expected {self.expected}; refused"
            )


def _short(key: paramiko.PKey) -> str:
    name = key.get_name()
    return "ed25519" if "ed25519" in name else "ecdsa" if "ecdsa" in name else "rsa"


def _socket(endpoint: Endpoint, connect_timeout_s: float, dead_link_s: float) -> socket.socket:
    try:
        sock = socket.create_connection((endpoint.address, endpoint.port), timeout=connect_timeout_s)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise HostUnreachable(f"{endpoint.where}: cannot connect ({reason})") from None
    # Unacknowledged data (our keepalives included) past this long breaks the connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(dead_link_s * 1000))
    return sock


def connect(
    endpoint: Endpoint,
    *,
    host_key: paramiko.PKey | None,
    expected_fingerprint: str | None = None,
    pkey: paramiko.PKey | None = None,
    password: str | None = None,
    connect_timeout_s: float = 10.0,
    dead_link_s: float = 15.0,
) -> tuple[paramiko.SSHClient, paramiko.PKey]:
    """Log in to ``endpoint``; returns the client and the host key it presented.

    With ``host_key`` (pinned) any other key is refused. Without it (first contact) the key must
    match ``expected_fingerprint``; no key is ever accepted unchecked.
    """
    client = paramiko.SSHClient()
    policy = _Expect(endpoint, expected_fingerprint)
    if host_key is not None:
        client.get_host_keys().add(endpoint.known_name, host_key.get_name(), host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(policy)
    sock = _socket(endpoint, connect_timeout_s, dead_link_s)
    try:
        client.connect(
            endpoint.address,
            endpoint.port,
            username=endpoint.user,
            pkey=pkey,
            password=password,
            sock=sock,
            timeout=connect_timeout_s,
            banner_timeout=connect_timeout_s,
            auth_timeout=connect_timeout_s,
            look_for_keys=False,
            allow_agent=False,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRefused(
            f"{endpoint.where}: host key changed: pinned {fingerprint(exc.expected_key)}, offered "
            f"{fingerprint(exc.key)}; refused. If the host was reinstalled, check its new key and "
            "register it again (fedkeeper hosts remove, then hosts add)"
        ) from None
    except HostKeyRefused:
        client.close()
        raise
    except paramiko.AuthenticationException:
        client.close()
        raise AuthRefused(f"{endpoint.where}: authentication refused") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise LinkLost(f"{endpoint.where}: SSH handshake failed ({type(exc).__name__})") from None
    transport = client.get_transport()
    assert transport is not None  # connected
    transport.set_keepalive(max(1, int(dead_link_s / 3)))
    presented = transport.get_remote_server_key()
    return client, presented


# --------------------------------------------------------------------------- commands
@dataclass
class Output:
    """What a remote command wrote, and how it ended."""

    stdout: bytes
    stderr: bytes
    exit_status: int

    @property
    def stderr_tail(self) -> str:
        lines = self.stderr.decode("utf-8", "replace").strip().splitlines()
        return lines[-1][:300] if lines else ""


def run(
    client: paramiko.SSHClient,
    where: str,
    argv: Sequence[str],
    *,
    stdin: bytes = b"",
    timeout_s: float,
    stdout_limit: int = 1024 * 1024,
) -> Output:
    """Run ``argv`` on the host (joined with :func:`shlex.join`), feeding ``stdin``; wait for it to end."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise LinkLost(f"{where}: not connected")
    deadline = time.monotonic() + timeout_s
    try:
        channel = transport.open_session(timeout=timeout_s)
        channel.settimeout(timeout_s)
        channel.exec_command(shlex.join(argv))
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
    except TimeoutError:
        raise CommandTimeout(f"{where}: {argv[0]} took no input within {timeout_s:g} s") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise LinkLost(f"{where}: lost the connection starting {argv[0]} ({type(exc).__name__})") from None
    stdout, stderr = bytearray(), bytearray()
    channel.settimeout(_POLL_S)
    try:
        while True:
            while channel.recv_stderr_ready():
                stderr += channel.recv_stderr(65536)
                del stderr[:-_STDERR_KEPT]
            try:
                chunk = channel.recv(65536)
            except TimeoutError:
                chunk = None
            if chunk == b"":
                break  # the command closed its stdout
            if chunk:
                stdout += chunk
                if len(stdout) > stdout_limit:
                    raise SshError(f"{where}: {argv[0]} wrote more than {stdout_limit} bytes")
            if not transport.is_active():
                break
            if time.monotonic() > deadline:
                raise CommandTimeout(f"{where}: {argv[0]} did not answer within {timeout_s:g} s")
        while time.monotonic() < deadline and transport.is_active() and not channel.exit_status_ready():
            time.sleep(_POLL_S / 4)
        while channel.recv_stderr_ready():
            stderr += channel.recv_stderr(65536)
        # -1: the channel closed with no exit status (a lost connection, or a command killed by a signal).
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
    finally:
        channel.close()
    if status == -1:
        raise LinkLost(
            f"{where}: lost the connection while {argv[0]} ran (no exit status, {len(stdout)} bytes answered)"
        )
    return Output(bytes(stdout), bytes(stderr[-_STDERR_KEPT:]), status)


def call(
    client: paramiko.SSHClient,
    where: str,
    argv: Sequence[str],
    request: dict[str, Any],
    *,
    timeout_s: float,
    reply_limit: int,
) -> dict[str, Any]:
    """Send ``request`` as a frame to ``argv``'s stdin and read its one reply frame from stdout."""
    output = run(
        client,
        where,
        argv,
        stdin=frames.encode(request),
        timeout_s=timeout_s,
        stdout_limit=reply_limit + 64,
    )
    if not output.stdout:
        detail = output.stderr_tail or f"exit status {output.exit_status}"
        raise SshError(f"{where}: {argv[0]} answered nothing: {detail}")
    head, _, body = output.stdout.partition(b"\n")
    try:
        length = frames.parse_header(head + b"\n", reply_limit)
        if len(body) != length:
            raise frames.FrameError(f"reply cut short: {len(body)} of {length} bytes")
        return frames.decode(body)
    except frames.FrameError as exc:
        raise SshError(f"{where}: {argv[0]}: {exc}") from None
