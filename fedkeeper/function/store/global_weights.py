"""A session's global weights, one set per round (round r's are what round r trains from)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedkeeper.function.errors import StoreError
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.mongo import SessionBound, store_errors, utcnow


@store_errors
class GlobalWeights(SessionBound):
    """The ``weights`` collection, unique on ``(session, round)``."""

    collection = "weights"

    def put(self, round_number: int, weights: Sequence[np.ndarray]) -> bool:
        """Store the global weights of a round; ``False`` when they were already there."""
        if self.has(round_number):
            return False
        key = {"session": self.session_id, "round": round_number}
        ref = self._blobs.put(wire.encode(weights), session=self.session_id, round=round_number)
        return self._insert_once(
            {
                **key,
                "blob": ref,
                "checksum": wire.checksum(weights),
                "shapes": [list(w.shape) for w in weights],
                "dtypes": [w.dtype.name for w in weights],
                "created_at": utcnow(),
            },
            ref,
        )

    def get(self, round_number: int) -> wire.Weights:
        doc = self._col.find_one({"session": self.session_id, "round": round_number})
        if doc is None:
            raise StoreError(f"session {self.session_id}: no global weights for round {round_number}")
        weights = wire.decode(self._blobs.get(doc["blob"]))
        if wire.checksum(weights) != doc["checksum"]:
            raise StoreError(f"session {self.session_id}: round {round_number} weights fail their checksum")
        return weights

    def payload_bytes(self, round_number: int) -> int | None:
        """The stored size of a round's weights: what each reader of them moves (None: not stored)."""
        doc = self._col.find_one({"session": self.session_id, "round": round_number}, {"blob.size": 1})
        return int(doc["blob"]["size"]) if doc is not None else None

    def has(self, round_number: int) -> bool:
        key = {"session": self.session_id, "round": round_number}
        return self._col.find_one(key, {"_id": 1}) is not None
