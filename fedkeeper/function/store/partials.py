"""Hierarchical aggregation's partials: one per ``(session, round, group)``, until combined.

With ``server_config.topology: hierarchical`` each group's local aggregator reduces its clients'
updates to a :class:`Partial` (their example-weighted sum in float64, the examples, the verdicts)
and stores it here; the global aggregator combines the round's partials into the next weights
and deletes them.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from fedkeeper.function.errors import StoreError
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.mongo import SessionBound, store_errors, utcnow
from fedkeeper.function.strategies.hierarchy import Partial


@store_errors
class Partials(SessionBound):
    """The ``partial_aggregates`` collection, unique on ``(session, round, group)``."""

    collection = "partial_aggregates"

    def put(self, round_number: int, group: int, partial: Partial) -> int:
        """Store a group's partial; its payload's bytes (0 when an earlier attempt already did)."""
        key = {"session": self.session_id, "round": round_number, "group": group}
        if self._col.find_one(key, {"_id": 1}) is not None:
            return 0
        payload = wire.encode(partial.sums)
        ref = self._blobs.put(payload, **key)
        try:
            self._col.insert_one(
                {
                    **key,
                    "blob": ref,
                    "checksum": wire.checksum(partial.sums),
                    "payload_bytes": len(payload),
                    "examples": float(partial.examples),
                    "accepted": [int(c) for c in partial.accepted],
                    "rejected": {str(c): reason for c, reason in partial.rejected.items()},
                    "created_at": utcnow(),
                }
            )
        except DuplicateKeyError:  # a concurrent attempt of the same group stored the same sums
            self._blobs.delete(ref)
            return 0
        return len(payload)

    def has(self, round_number: int, group: int) -> bool:
        key = {"session": self.session_id, "round": round_number, "group": group}
        return self._col.find_one(key, {"_id": 1}) is not None

    def get(self, round_number: int, group: int) -> Partial:
        doc = self._col.find_one({"session": self.session_id, "round": round_number, "group": group})
        if doc is None:
            raise StoreError(
                f"session {self.session_id}: round {round_number} has no partial of group {group}"
            )
        sums = wire.decode(self._blobs.get(doc["blob"]))
        if wire.checksum(sums) != doc["checksum"]:
            raise StoreError(
                f"session {self.session_id}: round {round_number} group {group}'s partial fails its checksum"
            )
        return Partial(
            sums,
            float(doc["examples"]),
            [int(c) for c in doc["accepted"]],
            {int(c): str(reason) for c, reason in doc["rejected"].items()},
        )

    def payload_bytes(self, round_number: int) -> dict[int, int]:
        """Each stored partial's payload size, by group."""
        docs = self._col.find(
            {"session": self.session_id, "round": round_number}, {"group": 1, "payload_bytes": 1}
        )
        return {int(d["group"]): int(d.get("payload_bytes") or 0) for d in docs}

    def delete(self, round_number: int) -> int:
        """Drop the round's partials (once its weights are written); how many there were."""
        docs: list[dict[str, Any]] = list(
            self._col.find({"session": self.session_id, "round": round_number}, {"blob": 1})
        )
        for doc in docs:
            self._blobs.delete(doc["blob"])
        self._col.delete_many({"_id": {"$in": [doc["_id"] for doc in docs]}})
        return len(docs)
