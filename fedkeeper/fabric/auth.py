"""Basic authentication with OpenWhisk ``uuid:key`` pairs, each owning one namespace."""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from fedkeeper.config import GUEST_AUTH

GUEST_NAMESPACE = "guest"
MISSING = "The resource requires authentication, which was not supplied with the request"
INVALID = "The supplied authentication is invalid"


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


@dataclass(frozen=True)
class KeyRing:
    """The keys a fabric accepts."""

    identities: tuple[Identity, ...]

    @classmethod
    def build(cls, extra: list[str] | tuple[str, ...] = (), guest: bool = True) -> KeyRing:
        identities: list[Identity] = []
        if guest:
            identities.append(Identity(GUEST_NAMESPACE, GUEST_NAMESPACE, GUEST_AUTH))
        for spec in extra:
            key, namespace = parse_key_spec(spec)
            identities.append(Identity(namespace, namespace, key))
        if not identities:
            raise ValueError("the fabric needs at least one auth key (the guest key is disabled)")
        return cls(tuple(identities))

    def authenticate(self, header: str | None) -> Identity:
        """The identity of an ``Authorization: Basic ...`` header, or AuthError."""
        if not header:
            raise AuthError(MISSING)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            raise AuthError(MISSING)
        try:
            presented = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(INVALID) from None
        for identity in self.identities:
            if hmac.compare_digest(presented.encode(), identity.key.encode()):
                return identity
        raise AuthError(INVALID)

    def owner(self, namespace: str) -> Identity | None:
        """The identity owning ``namespace`` (web actions run on the owner's behalf)."""
        return next((i for i in self.identities if i.namespace == namespace), None)
