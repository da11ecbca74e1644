"""Clients' updates: at most one per ``(session, round, client)``, however often a client runs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from fedkeeper.function.errors import InvalidUpdate
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.mongo import SessionBound, store_errors, utcnow
from fedkeeper.function.store.statuses import UpdateStatus


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


@store_errors
class Updates(SessionBound):
    """The ``updates`` collection, unique on ``(session, round, client)``."""

    collection = "updates"

    def put(
        self,
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
        if self.has(round_number, client):
            return False
        key = {"session": self.session_id, "round": round_number, "client": client}
        ref = self._blobs.put(
            wire.encode(weights), session=self.session_id, round=round_number, client=client
        )
        try:
            self._col.insert_one(
                {
                    **key,
                    "blob": ref,
                    "checksum": wire.checksum(weights),
                    "num_examples": int(num_examples),
                    "loss": float(loss),
                    "accuracy": float(accuracy),
                    "activation_id": activation_id,
                    "attempt": attempt,
                    "status": UpdateStatus.RECEIVED,
                    "created_at": utcnow(),
                }
            )
        except DuplicateKeyError:
            self._blobs.delete(ref)
            return False
        return True

    def reject(
        self,
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
        key = {"session": self.session_id, "round": round_number, "client": client}
        try:
            self._col.insert_one(
                {
                    **key,
                    "blob": None,
                    "num_examples": 0,
                    "loss": float("nan"),
                    "accuracy": float("nan"),
                    "activation_id": activation_id,
                    "attempt": attempt,
                    "status": UpdateStatus.REJECTED,
                    "reason": reason,
                    "created_at": utcnow(),
                }
            )
        except DuplicateKeyError:
            return False
        return True

    def has(self, round_number: int, client: int) -> bool:
        key = {"session": self.session_id, "round": round_number, "client": client}
        return self._col.find_one(key, {"_id": 1}) is not None

    def clients(self, round_number: int) -> set[int]:
        """Clients whose update for the round is stored."""
        cursor = self._col.find({"session": self.session_id, "round": round_number}, {"client": 1})
        return {int(doc["client"]) for doc in cursor}

    def stream(self, round_number: int, clients: Sequence[int]) -> Iterator[StoredUpdate | UnreadableUpdate]:
        """Updates one at a time (the aggregator streams them); a corrupt one yields why."""
        cursor = self._col.find(
            {"session": self.session_id, "round": round_number, "client": {"$in": list(clients)}},
            batch_size=1,
        ).sort("client", ASCENDING)
        for doc in cursor:
            if doc.get("blob") is None:  # rejected when it was written
                yield UnreadableUpdate(int(doc["client"]), str(doc.get("reason") or "no weights stored"))
                continue
            try:
                weights = wire.decode(self._blobs.get(doc["blob"]))
                if wire.checksum(weights) != doc["checksum"]:
                    raise InvalidUpdate(f"client {doc['client']}: update fails its checksum")
            except InvalidUpdate as exc:
                yield UnreadableUpdate(int(doc["client"]), str(exc))
                continue
            yield StoredUpdate(
                int(doc["client"]), int(doc["num_examples"]), weights, doc["loss"], doc["accuracy"]
            )

    def marks(self, round_number: int, clients: Sequence[int]) -> list[dict[str, Any]]:
        """Each update's bookkeeping (status, examples, local metrics), without its weights."""
        cursor = self._col.find(
            {"session": self.session_id, "round": round_number, "client": {"$in": list(clients)}},
            {"blob": 0},
        ).sort("client", ASCENDING)
        return list(cursor)

    def mark(self, round_number: int, client: int, status: UpdateStatus, reason: str) -> None:
        self._col.update_one(
            {"session": self.session_id, "round": round_number, "client": client},
            {"$set": {"status": UpdateStatus(status), "reason": reason}},
        )
