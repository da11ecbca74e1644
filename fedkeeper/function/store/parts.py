"""A round's parts from parallel aggregator activations: one document and payload per part.

Sharded aggregation (``shards.py``, a part per range of arrays) and hierarchical aggregation
(``partials.py``, a part per group of clients) both store what each activation made under
``(session, round, part)`` until the activation that joins them writes the round's weights and
deletes them. An attempt that runs again finds its part stored and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fedkeeper.function.errors import StoreError
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.mongo import SessionBound, store_errors, utcnow


@store_errors
class RoundParts(SessionBound):
    """Documents keyed ``(session, round, <part>)``, each with its arrays as a checksummed blob."""

    part: ClassVar[str]  # the key's third field: "shard", "group"

    def _key(self, round_number: int, part: int) -> dict[str, Any]:
        return {"session": self.session_id, "round": round_number, self.part: part}

    def _insert(
        self, round_number: int, part: int, arrays: Sequence[np.ndarray], fields: dict[str, Any]
    ) -> int:
        """Store a part's ``arrays`` and ``fields``; its payload's bytes, 0 when one is stored already."""
        key = self._key(round_number, part)
        if self._col.find_one(key, {"_id": 1}) is not None:
            return 0
        payload = wire.encode(arrays)
        ref = self._blobs.put(payload, **key)
        doc = {
            **key,
            "blob": ref,
            "checksum": wire.checksum(arrays),
            "payload_bytes": len(payload),
            **fields,
            "created_at": utcnow(),
        }
        # a concurrent attempt of the same part may have stored the same values first
        return len(payload) if self._insert_once(doc, ref) else 0

    def has(self, round_number: int, part: int) -> bool:
        return self._col.find_one(self._key(round_number, part), {"_id": 1}) is not None

    def _find(self, round_number: int, part: int) -> tuple[dict[str, Any], list[np.ndarray]]:
        """A part's document and its arrays, checked against their checksum."""
        doc = self._col.find_one(self._key(round_number, part))
        if doc is None:
            raise StoreError(
                f"session {self.session_id}: round {round_number} has no result of {self.part} {part}"
            )
        arrays = wire.decode(self._blobs.get(doc["blob"]))
        if wire.checksum(arrays) != doc["checksum"]:
            raise StoreError(
                f"session {self.session_id}: round {round_number} {self.part} {part} fails its checksum"
            )
        return doc, arrays

    def payload_bytes(self, round_number: int) -> dict[int, int]:
        """Each stored part's payload size."""
        docs = self._col.find(
            {"session": self.session_id, "round": round_number}, {self.part: 1, "payload_bytes": 1}
        )
        return {int(d[self.part]): int(d.get("payload_bytes") or 0) for d in docs}

    def delete(self, round_number: int) -> int:
        """Drop the round's parts (once its weights are written); how many there were."""
        docs: list[dict[str, Any]] = list(
            self._col.find({"session": self.session_id, "round": round_number}, {"blob": 1})
        )
        for doc in docs:
            self._blobs.delete(doc["blob"])
        self._col.delete_many({"_id": {"$in": [doc["_id"] for doc in docs]}})
        return len(docs)
