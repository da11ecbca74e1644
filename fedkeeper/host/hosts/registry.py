"""The host registry: every remote host this installation deploys clients to, in MongoDB.

One document per host, keyed by its FL identifier, with its SSH address, the host key pinned at
first contact, what it runs on, and the dependency state its last deploy recorded. Reads
(:meth:`HostRegistry.get`, :meth:`HostRegistry.find`, :meth:`HostRegistry.count`) filter by
address, contact, FL identifier and labels, in pages of at most :data:`MAX_PAGE`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from fedkeeper.function.errors import ConfigError
from fedkeeper.function.invoke.ssh import Endpoint
from fedkeeper.function.settings import BoundHost
from fedkeeper.function.store.db import Store
from fedkeeper.function.store.mongo import store_errors, utcnow

COLLECTION = "host_registry"
MAX_PAGE = 100
VENV_MODES = ("pip", "system")  # pip-install the requirements, or reuse the host interpreter's packages

_INDEXES = [
    IndexModel([("fl_id", ASCENDING)], unique=True),
    IndexModel([("address", ASCENDING), ("port", ASCENDING)], unique=True),
    IndexModel([("contact", ASCENDING)]),
]


@dataclass(frozen=True)
class Host:
    """One registered host.

    Attributes
    ----------
    fl_id
        Its FL identifier: unique, and the order in which a cluster's clients are spread over hosts.
    address, port, user
        Where its sshd listens and whom we log in as.
    host_key, host_key_fingerprint
        The host key pinned at first contact (an OpenSSH public key line) and its ``SHA256:`` form.
    arch
        Its machine (``uname -m``), e.g. ``aarch64`` for a Raspberry Pi 4.
    labels, contact
        Free-form labels (``room=lab``) that clusters select hosts by, and whom to call about it.
    root, python, venv
        Where the client runtime goes, the interpreter its venv is made from, and how that venv
        gets its packages (:data:`VENV_MODES`).
    deps
        What the last deploy installed: runtime digest, interpreter, package versions.
    """

    fl_id: str
    address: str
    port: int
    user: str
    host_key: str
    host_key_fingerprint: str
    arch: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    contact: str = ""
    root: str = ".fedkeeper-client"
    python: str = "python3"
    venv: str = "pip"
    deps: dict[str, Any] = field(default_factory=dict)
    added_at: datetime | None = None
    deployed_at: datetime | None = None
    last_ping: dict[str, Any] | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.address, self.port, self.user)

    def bound(self) -> BoundHost:
        """What the invoker needs to reach it."""
        return BoundHost(
            fl_id=self.fl_id,
            address=self.address,
            port=self.port,
            user=self.user,
            host_key=self.host_key,
            root=self.root,
        )

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Host:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass(frozen=True)
class HostQuery:
    """Which hosts: every given field must match (labels: each one)."""

    address: str | None = None
    contact: str | None = None
    fl_id: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def filter(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            name: value
            for name in ("address", "contact", "fl_id")
            if (value := getattr(self, name)) is not None
        }
        found.update({f"labels.{key}": value for key, value in self.labels.items()})
        return found


@store_errors
class HostRegistry:
    """The registry in ``store``'s database (collection ``host_registry``)."""

    def __init__(self, store: Store) -> None:
        self.url = store.url
        self.collection = store.db[COLLECTION]

    def ensure_indexes(self) -> None:
        self.collection.create_indexes(_INDEXES)

    # ------------------------------------------------------------------ reads
    def get(self, fl_id: str) -> Host | None:
        doc = self.collection.find_one({"_id": fl_id})
        return Host.from_doc(doc) if doc else None

    def require(self, fl_id: str) -> Host:
        host = self.get(fl_id)
        if host is None:
            raise ConfigError(f"no host {fl_id!r} in the host registry (fedkeeper hosts list)")
        return host

    def find(self, query: HostQuery | None = None, limit: int = MAX_PAGE, skip: int = 0) -> list[Host]:
        """One page of hosts matching ``query``, by FL identifier; ``limit`` is 1..100."""
        if not 1 <= limit <= MAX_PAGE:
            raise ConfigError(f"limit: {limit} is outside 1..{MAX_PAGE}")
        if skip < 0:
            raise ConfigError(f"skip: {skip} is negative")
        cursor = self.collection.find((query or HostQuery()).filter())
        return [Host.from_doc(doc) for doc in cursor.sort("fl_id", ASCENDING).skip(skip).limit(limit)]

    def all(self, query: HostQuery | None = None) -> Iterator[Host]:
        """Every matching host, page by page."""
        skip = 0
        while page := self.find(query, MAX_PAGE, skip):
            yield from page
            skip += len(page)

    def count(self, query: HostQuery | None = None) -> int:
        return int(self.collection.count_documents((query or HostQuery()).filter()))

    # ------------------------------------------------------------------ writes
    def add(self, host: Host) -> Host:
        """Register ``host``; a ConfigError when its FL identifier or address is taken."""
        if host.venv not in VENV_MODES:
            raise ConfigError(f"venv: {host.venv!r} is not one of {', '.join(VENV_MODES)}")
        doc = {**asdict(host), "_id": host.fl_id, "added_at": utcnow()}
        try:
            self.collection.insert_one(doc)
        except DuplicateKeyError:
            taken = self.collection.find_one(
                {"$or": [{"_id": host.fl_id}, {"address": host.address, "port": host.port}]}
            )
            other = taken["fl_id"] if taken else host.fl_id
            raise ConfigError(
                f"host {host.fl_id!r} ({host.endpoint.where}): already registered as {other!r}"
            ) from None
        return Host.from_doc(doc)

    def remove(self, fl_id: str) -> bool:
        return bool(self.collection.delete_one({"_id": fl_id}).deleted_count)

    def record_deploy(self, fl_id: str, deps: dict[str, Any]) -> None:
        """The dependency state a deploy left on the host."""
        self.collection.update_one({"_id": fl_id}, {"$set": {"deps": deps, "deployed_at": utcnow()}})

    def record_ping(self, fl_id: str, ok: bool, latency_ms: float | None, error: str | None) -> None:
        ping = {"at": utcnow(), "ok": ok, "latency_ms": latency_ms, "error": error}
        self.collection.update_one({"_id": fl_id}, {"$set": {"last_ping": ping}})
