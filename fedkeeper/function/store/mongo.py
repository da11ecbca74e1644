"""pymongo plumbing every store module shares: one client per URL, the error translation, the
base of the per-concern stores."""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import pymongo
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from fedkeeper.function.errors import STORE, StoreError, StoreUnavailable
from fedkeeper.function.redaction import redact
from fedkeeper.function.store.blobs import BlobStore


def utcnow() -> datetime:
    return datetime.now(UTC)


_clients: dict[str, pymongo.MongoClient] = {}
_clients_lock = threading.Lock()


def shared_client(url: str) -> pymongo.MongoClient:
    """One client per URL per process: warm function workers reuse their connection pool."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000, tz_aware=True)
            _clients[url] = client
        return client


@contextmanager
def translated_errors(url: str) -> Iterator[None]:
    """pymongo's errors as one-line fedkeeper errors that never show the URL's password.

    A lost connection (refused, no server selected, network timeout, reconnecting) is an outage:
    :class:`StoreUnavailable`; anything else MongoDB refuses is a :class:`StoreError`.
    """
    try:
        yield
    except ConnectionFailure as exc:
        detail = str(exc).split(", Timeout:", 1)[0].splitlines()[0][:200]  # drop the topology dump
        raise StoreUnavailable(
            STORE, redact(f"MongoDB at {url} is unreachable ({type(exc).__name__}: {detail})")
        ) from None
    except PyMongoError as exc:
        raise StoreError(redact(f"MongoDB at {url}: {type(exc).__name__}: {exc}")) from None


C = TypeVar("C", bound=type)


def store_errors(cls: C) -> C:
    """Wrap every public method of ``cls`` (which has a ``url``) in :func:`translated_errors`.

    One place, so no query the keeper or a function makes can escape as a pymongo traceback.
    """

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def generator(self: Any, *args: Any, **kwargs: Any) -> Any:
                with translated_errors(self.url):
                    yield from method(self, *args, **kwargs)

            return generator

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with translated_errors(self.url):
                return method(self, *args, **kwargs)

        return call

    for name, value in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(value):
            setattr(cls, name, wrap(value))
    return cls


class SessionBound:
    """One concern of one session: its documents in one collection (each subclass names it).

    Subclasses are decorated with :func:`store_errors`; their methods never take the session id.
    """

    collection: ClassVar[str]

    def __init__(self, db: Database, blobs: BlobStore, url: str, session_id: str) -> None:
        self.url = url  # named in the error when MongoDB is down
        self.session_id = session_id
        self._col: Collection = db[self.collection]
        self._blobs = blobs

    def _insert_once(self, doc: dict[str, Any], *blobs: dict[str, Any] | None) -> bool:
        """Insert ``doc``; ``False`` when its unique key is taken, with the ``blobs`` written for it
        deleted.

        Attempts of one activation (or racing aggregators) may write the same document: the first
        copy counts and the others leave nothing behind.
        """
        try:
            self._col.insert_one(doc)
        except DuplicateKeyError:
            for ref in blobs:
                if ref is not None:
                    self._blobs.delete(ref)
            return False
        return True


@store_errors
class ClientAnswers(SessionBound):
    """Documents keyed ``(session, round, client)``: one answer per client and round."""

    def has(self, round_number: int, client: int) -> bool:
        key = {"session": self.session_id, "round": round_number, "client": client}
        return self._col.find_one(key, {"_id": 1}) is not None

    def clients(self, round_number: int, among: AbstractSet[int] | None = None) -> set[int]:
        """Clients whose answer for the round is stored (only those ``among``, when given: a
        poll asks about the clients it still waits for, not again about every answer so far)."""
        query: dict[str, Any] = {"session": self.session_id, "round": round_number}
        if among is not None:
            if not among:
                return set()
            query["client"] = {"$in": sorted(among)}
        return {int(doc["client"]) for doc in self._col.find(query, {"client": 1, "_id": 0})}
