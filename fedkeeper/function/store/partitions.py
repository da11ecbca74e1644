"""Each client's data partition: the indices of its training examples, written once by init."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pymongo

from fedkeeper.function.errors import StoreError
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.mongo import SessionBound, store_errors


@store_errors
class Partitions(SessionBound):
    """The ``partitions`` collection, unique on ``(session, client)``."""

    collection = "partitions"

    def put(self, partitions: Sequence[np.ndarray]) -> None:
        docs = [
            {
                "session": self.session_id,
                "client": client,
                "indices": wire.encode([np.asarray(indices, dtype=np.int64)]),
                "size": len(indices),
            }
            for client, indices in enumerate(partitions)
        ]
        try:
            self._col.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:  # re-run of init: the existing ones stand
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    def get(self, client: int) -> np.ndarray:
        doc = self._col.find_one({"session": self.session_id, "client": client})
        if doc is None:
            raise StoreError(f"session {self.session_id}: no data partition for client {client}")
        return wire.decode(bytes(doc["indices"]))[0]

    def sizes(self) -> dict[int, int]:
        cursor = self._col.find({"session": self.session_id}, {"client": 1, "size": 1})
        return {int(d["client"]): int(d["size"]) for d in cursor}
