"""Retention: the model-sized payloads of old rounds are deleted once newer rounds are aggregated.

Each round stores one update per client and the next global weights: a full-MNIST CNN with 25
clients per round adds ~165 MB a round. :func:`prune` keeps the payloads of the last ``keep``
aggregated rounds (their updates, the global weights they started from, and the newest global
weights) and deletes the older ones, GridFS files included, so a session holds at most
``keep * (clients per round + 1) + 1`` models however many rounds it runs. An update's bookkeeping
(client, status, examples, local loss and accuracy, activation) stays: a round's record and its
audit trail need no weights. ``server_config.keep_updates: all`` keeps everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedkeeper.function.store.db import SessionStore
from fedkeeper.function.store.mongo import translated_errors, utcnow


@dataclass(frozen=True)
class Pruned:
    """How many update payloads and global weights one :func:`prune` deleted."""

    updates: int
    weights: int


def prune(session: SessionStore, aggregated: int, keep: int | Literal["all"]) -> Pruned:
    """Once round ``aggregated`` is aggregated, delete the payloads of rounds up to ``aggregated - keep``.

    Idempotent, and safe to repeat after a crash: a blob is deleted before the reference to it, so
    a repeat finds what is left (deleting a GridFS file that is gone does nothing).
    """
    if keep == "all" or aggregated - keep < 0:
        return Pruned(0, 0)
    db, blobs = session.store.db, session.store.blobs
    old = {"session": session.id, "round": {"$lte": aggregated - keep}}
    with translated_errors(session.store.url):
        updates = list(db.updates.find({**old, "blob": {"$ne": None}}, {"blob": 1}))
        for doc in updates:
            blobs.delete(doc["blob"])
        if updates:
            db.updates.update_many(
                {"_id": {"$in": [doc["_id"] for doc in updates]}},
                {"$set": {"blob": None, "pruned_at": utcnow()}},
            )
        weights = list(db.weights.find(old, {"blob": 1}))
        for doc in weights:
            blobs.delete(doc["blob"])
        if weights:
            db.weights.delete_many({"_id": {"$in": [doc["_id"] for doc in weights]}})
    return Pruned(len(updates), len(weights))
