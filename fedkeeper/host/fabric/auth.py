"""Basic authentication with OpenWhisk ``uuid:key`` pairs, each owning one namespace."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from fedkeeper.function.config import GUEST_AUTH

GUEST_NAMESPACE = "guest"
MISSING = "The resource requires authentication, which was not supplied with the request"
INVALID = "The supplied authentication is invalid"
NOT_ADMIN = "The supplied authentication is not authorized to access the fabric's administration."
ADMIN_KEY_FILE = "admin.key"


@dataclass(frozen=True)
class Identity:
    """Who calls: the namespace their key owns, the subject, and the key (given to actions on request)."""

    namespace: str
    subject: str
    key: str


class AuthError(Exception):
    """401 with OpenWhisk's message."""


def parse_key_spec(spec: str) -> tuple[str, str]:
    """``uuid:key`` or ``uuid:key=namespace`` -> (key, namespace); the namespace defaults to guest."""
    key, _, namespace = spec.partition("=")
    user, _, secret = key.partition(":")
    if not user or not secret:
        # Never echo the value: it is a credential.
        raise ValueError("auth key must be 'uuid:key' or 'uuid:key=namespace'")
    return key, namespace or GUEST_NAMESPACE


def read_auth_file(path: Path) -> list[str]:
    """The ``uuid:key[=namespace]`` lines of ``path`` (blank lines and ``#`` comments skipped).

    The file must not be readable by group or others; errors name the file and line, never a key.
    """
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the auth file: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"{path}: the auth file must not be group or world readable (mode {mode & 0o777:04o})"
        )
    specs: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            parse_key_spec(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
        specs.append(line)
    return specs


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file only its owner can read (mode 0600 from creation on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def new_key() -> str:
    """A fresh ``uuid:key`` pair, shaped like OpenWhisk's."""
    return f"{uuid.uuid4()}:{secrets.token_urlsafe(48)}"


@dataclass(frozen=True)
class KeyRing:
    """The keys a fabric accepts, and the admin key (``/admin/*``) that no namespace key grants."""

    identities: tuple[Identity, ...]
    admin: str | None = None

    @classmethod
    def build(
        cls, extra: list[str] | tuple[str, ...] = (), guest: bool = True, admin: str | None = None
    ) -> KeyRing:
        identities: list[Identity] = []
        if guest:
            identities.append(Identity(GUEST_NAMESPACE, GUEST_NAMESPACE, GUEST_AUTH))
        for spec in extra:
            key, namespace = parse_key_spec(spec)
            identities.append(Identity(namespace, namespace, key))
        if not identities:
            raise ValueError("the fabric needs at least one auth key (the guest key is disabled)")
        return cls(tuple(identities), admin)

    def is_admin(self, header: str | None) -> bool:
        """True when the header presents the admin key (AuthError when it presents no valid key)."""
        presented = _presented(header)
        if self.admin is not None and hmac.compare_digest(presented.encode(), self.admin.encode()):
            return True
        self.authenticate(header)
        return False

    def authenticate(self, header: str | None) -> Identity:
        """The identity of an ``Authorization: Basic ...`` header, or AuthError."""
        presented = _presented(header)
        for identity in self.identities:
            if hmac.compare_digest(presented.encode(), identity.key.encode()):
                return identity
        raise AuthError(INVALID)

    def owner(self, namespace: str) -> Identity | None:
        """The identity owning ``namespace`` (web actions run on the owner's behalf)."""
        return next((i for i in self.identities if i.namespace == namespace), None)


def _presented(header: str | None) -> str:
    """The ``uuid:key`` of a Basic auth header, or AuthError."""
    if not header:
        raise AuthError(MISSING)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        raise AuthError(MISSING)
    try:
        return base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError(INVALID) from None
