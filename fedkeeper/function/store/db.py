"""All fedkeeper state in MongoDB: sessions, rounds, weights, updates, partitions.

Every write is idempotent on its natural key (unique indexes), so a revived activation or a
resumed keeper can repeat any step without counting anything twice.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import pymongo
from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError

from fedkeeper.function.errors import STORE, InvalidUpdate, StoreError, StoreUnavailable
from fedkeeper.function.redaction import redact
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.blobs import BlobStore

PHASES = ("Pending", "Running", "Succeeded", "Failed")

# collection -> indexes; one for every query the keeper and the functions make.
INDEXES: dict[str, list[IndexModel]] = {
    "sessions": [
        IndexModel([("created_at", DESCENDING)]),
        IndexModel([("phase", ASCENDING), ("created_at", DESCENDING)]),
    ],
    "rounds": [IndexModel([("session", ASCENDING), ("round", ASCENDING)], unique=True)],
    "weights": [IndexModel([("session", ASCENDING), ("round", ASCENDING)], unique=True)],
    "updates": [
        IndexModel([("session", ASCENDING), ("round", ASCENDING), ("client", ASCENDING)], unique=True),
    ],
    "partitions": [IndexModel([("session", ASCENDING), ("client", ASCENDING)], unique=True)],
    # fedkeeper.function.store.state: exact (round) and latest-at-or-before (round <=) look-ups
    "strategy_state": [
        IndexModel([("session", ASCENDING), ("client", ASCENDING), ("round", ASCENDING)], unique=True)
    ],
    "activations": [
        IndexModel(
            [
                ("session", ASCENDING),
                ("round", ASCENDING),
                ("function", ASCENDING),
                ("client", ASCENDING),
                ("attempt", ASCENDING),
            ],
            unique=True,
        ),
        IndexModel([("session", ASCENDING), ("round", ASCENDING), ("status", ASCENDING)]),
        IndexModel([("session", ASCENDING), ("round", ASCENDING), ("submitted_at", ASCENDING)]),
        IndexModel([("activation_id", ASCENDING)]),
    ],
}


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredUpdate:
    client: int
    num_examples: int
    weights: wire.Weights
    loss: float
    accuracy: float


@dataclass(frozen=True)
class UnreadableUpdate:
    """A stored update that cannot be decoded or fails its checksum."""

    client: int
    reason: str


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


@store_errors
class Store:
    """fedkeeper's database.

    Parameters
    ----------
    url, database
        Where the state lives (``mongodb://`` URL, database name).
    """

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.db: Database = shared_client(url)[database]
        self.blobs = BlobStore(self.db)

    @classmethod
    def from_bound(cls, params: dict[str, Any]) -> Store:
        """The store a function was bound to at deploy time (``params["store"]``)."""
        bound = params.get("store")
        if not isinstance(bound, dict) or "url" not in bound:
            raise StoreError("function has no store binding; redeploy with `main.py -d`")
        return cls(bound["url"], bound.get("database", "fedkeeper"))

    def collection(self, name: str) -> Collection:
        return self.db[name]

    def ensure_indexes(self) -> None:
        for name, indexes in INDEXES.items():
            self.db[name].create_indexes(indexes)

    def ping(self) -> None:
        self.db.client.admin.command("ping")

    # ------------------------------------------------------------------ sessions
    def create_session(self, doc: dict[str, Any]) -> None:
        now = utcnow()
        doc = {
            "phase": "Pending",
            "round": 0,
            "conditions": [],
            "counters": {"active": 0, "succeeded": 0, "failed": 0},
            "created_at": now,
            "start_time": now,
            "completion_time": None,
            "initialised_at": None,
            **doc,
        }
        self.db.sessions.insert_one(doc)

    def session(self, session_id: str) -> dict[str, Any]:
        doc = self.db.sessions.find_one({"_id": session_id})
        if doc is None:
            raise StoreError(f"no session {session_id!r} in database {self.db.name}")
        return dict(doc)

    def set_phase(self, session_id: str, phase: str, reason: str, message: str = "") -> None:
        """Move the session to ``phase`` and record why, as a Kubernetes-style condition."""
        assert phase in PHASES
        now = utcnow()
        update: dict[str, Any] = {"phase": phase}
        if phase in ("Succeeded", "Failed"):
            update["completion_time"] = now
        condition = {
            "type": phase,
            "status": "True",
            "reason": reason,
            "message": redact(message),
            "lastTransitionTime": now,
        }
        self.db.sessions.update_one({"_id": session_id}, {"$set": update, "$push": {"conditions": condition}})

    def restart_budgets(self, session_id: str) -> datetime:
        """Give every client a fresh retry budget from now (a ``Failed`` session being resumed)."""
        now = utcnow()
        self.db.sessions.update_one({"_id": session_id}, {"$set": {"budget_since": now}})
        return now

    def advance_round(self, session_id: str, next_round: int) -> None:
        """Record that rounds before ``next_round`` are done (never moves backwards)."""
        self.db.sessions.update_one(
            {"_id": session_id, "round": {"$lt": next_round}}, {"$set": {"round": next_round}}
        )

    def count(self, session_id: str, **deltas: int) -> None:
        self.db.sessions.update_one(
            {"_id": session_id}, {"$inc": {f"counters.{k}": v for k, v in deltas.items()}}
        )

    def mark_initialised(self, session_id: str) -> None:
        """Record that round-0 weights and every partition are written (idempotent)."""
        self.db.sessions.update_one(
            {"_id": session_id, "initialised_at": None}, {"$set": {"initialised_at": utcnow()}}
        )

    def initialised(self, session_id: str) -> bool:
        """Whether ``fl_server_init`` finished: weights alone may be left by an init that died."""
        return self.session(session_id).get("initialised_at") is not None

    def sessions(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self.db.sessions.find().sort("created_at", DESCENDING).limit(limit))

    # ------------------------------------------------------------------ weights
    def put_weights(self, session_id: str, round_number: int, weights: Sequence[np.ndarray]) -> bool:
        """Store the global weights of a round; ``False`` when they were already there."""
        if self.has_weights(session_id, round_number):
            return False
        key = {"session": session_id, "round": round_number}
        ref = self.blobs.put(wire.encode(weights), session=session_id, round=round_number)
        try:
            self.db.weights.insert_one(
                {
                    **key,
                    "blob": ref,
                    "checksum": wire.checksum(weights),
                    "shapes": [list(w.shape) for w in weights],
                    "dtypes": [w.dtype.name for w in weights],
                    "created_at": utcnow(),
                }
            )
        except DuplicateKeyError:  # a concurrent writer won the race; its copy counts
            self.blobs.delete(ref)
            return False
        return True

    def get_weights(self, session_id: str, round_number: int) -> wire.Weights:
        doc = self.db.weights.find_one({"session": session_id, "round": round_number})
        if doc is None:
            raise StoreError(f"session {session_id}: no global weights for round {round_number}")
        weights = wire.decode(self.blobs.get(doc["blob"]))
        if wire.checksum(weights) != doc["checksum"]:
            raise StoreError(f"session {session_id}: round {round_number} weights fail their checksum")
        return weights

    def has_weights(self, session_id: str, round_number: int) -> bool:
        return (
            self.db.weights.find_one({"session": session_id, "round": round_number}, {"_id": 1}) is not None
        )

    # ------------------------------------------------------------------ updates
    def put_update(
        self,
        session_id: str,
        round_number: int,
        client: int,
        weights: Sequence[np.ndarray],
        num_examples: int,
        loss: float,
        accuracy: float,
        activation_id: str | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Store a client's update; ``False`` (and nothing written) when one is already there."""
        if num_examples <= 0:
            raise InvalidUpdate(f"client {client}: num_examples must be positive, got {num_examples}")
        if self.has_update(session_id, round_number, client):
            return False
        key = {"session": session_id, "round": round_number, "client": client}
        ref = self.blobs.put(wire.encode(weights), session=session_id, round=round_number, client=client)
        try:
            self.db.updates.insert_one(
                {
                    **key,
                    "blob": ref,
                    "checksum": wire.checksum(weights),
                    "num_examples": int(num_examples),
                    "loss": float(loss),
                    "accuracy": float(accuracy),
                    "activation_id": activation_id,
                    "attempt": attempt,
                    "status": "received",
                    "created_at": utcnow(),
                }
            )
        except DuplicateKeyError:
            self.blobs.delete(ref)
            return False
        return True

    def reject_update(
        self,
        session_id: str,
        round_number: int,
        client: int,
        reason: str,
        activation_id: str | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Record that the client answered with an update that failed its checks (no weights kept).

        It counts as the client's answer (a retry would send the same), and the aggregator reports
        it among the round's rejected updates. ``False`` when an update was already there.
        """
        key = {"session": session_id, "round": round_number, "client": client}
        try:
            self.db.updates.insert_one(
                {
                    **key,
                    "blob": None,
                    "num_examples": 0,
                    "loss": float("nan"),
                    "accuracy": float("nan"),
                    "activation_id": activation_id,
                    "attempt": attempt,
                    "status": "rejected",
                    "reason": reason,
                    "created_at": utcnow(),
                }
            )
        except DuplicateKeyError:
            return False
        return True

    def has_update(self, session_id: str, round_number: int, client: int) -> bool:
        key = {"session": session_id, "round": round_number, "client": client}
        return self.db.updates.find_one(key, {"_id": 1}) is not None

    def update_clients(self, session_id: str, round_number: int) -> set[int]:
        """Clients whose update for the round is stored."""
        cursor = self.db.updates.find({"session": session_id, "round": round_number}, {"client": 1})
        return {int(doc["client"]) for doc in cursor}

    def iter_updates(
        self, session_id: str, round_number: int, clients: Sequence[int]
    ) -> Iterator[StoredUpdate | UnreadableUpdate]:
        """Updates one at a time (the aggregator streams them); a corrupt one yields why."""
        cursor = self.db.updates.find(
            {"session": session_id, "round": round_number, "client": {"$in": list(clients)}},
            batch_size=1,
        ).sort("client", ASCENDING)
        for doc in cursor:
            if doc.get("blob") is None:  # rejected when it was written
                yield UnreadableUpdate(int(doc["client"]), str(doc.get("reason") or "no weights stored"))
                continue
            try:
                weights = wire.decode(self.blobs.get(doc["blob"]))
                if wire.checksum(weights) != doc["checksum"]:
                    raise InvalidUpdate(f"client {doc['client']}: update fails its checksum")
            except InvalidUpdate as exc:
                yield UnreadableUpdate(int(doc["client"]), str(exc))
                continue
            yield StoredUpdate(
                int(doc["client"]), int(doc["num_examples"]), weights, doc["loss"], doc["accuracy"]
            )

    def update_marks(
        self, session_id: str, round_number: int, clients: Sequence[int]
    ) -> list[dict[str, Any]]:
        """Each update's bookkeeping (status, examples, local metrics), without its weights."""
        cursor = self.db.updates.find(
            {"session": session_id, "round": round_number, "client": {"$in": list(clients)}},
            {"blob": 0},
        ).sort("client", ASCENDING)
        return list(cursor)

    def mark_update(self, session_id: str, round_number: int, client: int, status: str, reason: str) -> None:
        self.db.updates.update_one(
            {"session": session_id, "round": round_number, "client": client},
            {"$set": {"status": status, "reason": reason}},
        )

    # ------------------------------------------------------------------ partitions
    def put_partitions(self, session_id: str, partitions: Sequence[np.ndarray]) -> None:
        docs = [
            {
                "session": session_id,
                "client": client,
                "indices": wire.encode([np.asarray(indices, dtype=np.int64)]),
                "size": len(indices),
            }
            for client, indices in enumerate(partitions)
        ]
        try:
            self.db.partitions.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:  # re-run of init: the existing ones stand
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    def get_partition(self, session_id: str, client: int) -> np.ndarray:
        doc = self.db.partitions.find_one({"session": session_id, "client": client})
        if doc is None:
            raise StoreError(f"session {session_id}: no data partition for client {client}")
        return wire.decode(bytes(doc["indices"]))[0]

    def partition_sizes(self, session_id: str) -> dict[int, int]:
        cursor = self.db.partitions.find({"session": session_id}, {"client": 1, "size": 1})
        return {int(d["client"]): int(d["size"]) for d in cursor}

    # ------------------------------------------------------------------ rounds
    def open_round(
        self,
        session_id: str,
        round_number: int,
        selected: Sequence[int],
        fit: Mapping[int, dict[str, Any]] | None = None,
    ) -> list[int]:
        """Record the round's selection and each client's instructions (``fit``) once; a resumed
        keeper gets the original selection back."""
        doc = self.db.rounds.find_one_and_update(
            {"session": session_id, "round": round_number},
            {
                "$setOnInsert": {
                    "selected": [int(c) for c in selected],
                    "fit": {str(int(c)): dict(config) for c, config in (fit or {}).items()},
                    "status": "open",
                    "started_at": utcnow(),
                }
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None  # upsert with AFTER always returns the document
        return [int(c) for c in doc["selected"]]

    def close_round(self, session_id: str, round_number: int, included: Sequence[int]) -> list[int]:
        """Freeze the set of updates the round aggregates (first close wins)."""
        self.db.rounds.update_one(
            {"session": session_id, "round": round_number, "status": "open"},
            {
                "$set": {
                    "status": "closed",
                    "included": sorted(int(c) for c in included),
                    "closed_at": utcnow(),
                }
            },
        )
        return [int(c) for c in self.round(session_id, round_number)["included"]]

    def finish_round(self, session_id: str, round_number: int, metrics: dict[str, Any]) -> None:
        self.db.rounds.update_one(
            {"session": session_id, "round": round_number},
            {"$set": {"status": "aggregated", "metrics": metrics, "aggregated_at": utcnow()}},
        )

    def add_round_metrics(self, session_id: str, round_number: int, metrics: dict[str, Any]) -> None:
        """Add the keeper's own figures (retries, failed clients, duration) to a round's metrics."""
        self.db.rounds.update_one(
            {"session": session_id, "round": round_number},
            {"$set": {f"metrics.{k}": v for k, v in metrics.items()}},
        )

    def fit_instructions(self, session_id: str, round_number: int, client: int) -> dict[str, Any] | None:
        """What the keeper told ``client`` for the round (None: the round is not open, or predates them)."""
        doc = self.db.rounds.find_one(
            {"session": session_id, "round": round_number}, {f"fit.{int(client)}": 1}
        )
        found = ((doc or {}).get("fit") or {}).get(str(int(client)))
        return dict(found) if found is not None else None

    def round(self, session_id: str, round_number: int) -> dict[str, Any]:
        doc = self.db.rounds.find_one({"session": session_id, "round": round_number})
        if doc is None:
            raise StoreError(f"session {session_id}: round {round_number} was never opened")
        return dict(doc)

    def rounds(self, session_id: str) -> list[dict[str, Any]]:
        return list(self.db.rounds.find({"session": session_id}).sort("round", ASCENDING))
