"""Sharded aggregation's partial results: one per ``(session, round, shard)``, until assembled.

With ``server_config.aggregation_shards: M`` each of M aggregator activations aggregates one
contiguous range of the model's arrays and stores its slice of the next weights and of the
strategy's state here; the final activation concatenates the M slices, writes the round's
weights and deletes the slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedkeeper.function.errors import StoreError
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.mongo import SessionBound, store_errors, utcnow
from fedkeeper.function.strategies.state import StrategyState


@dataclass(frozen=True, eq=False)
class ShardResult:
    """One shard's slice of the next weights and state, and the round's verdicts on the updates."""

    weights: wire.Weights
    state: StrategyState
    accepted: list[int]
    rejected: dict[int, str]


@store_errors
class AggregationShards(SessionBound):
    """The ``aggregation_shards`` collection, unique on ``(session, round, shard)``."""

    collection = "aggregation_shards"

    def put(self, round_number: int, shard: int, result: ShardResult) -> bool:
        """Store a shard's result; ``False`` when an earlier attempt already did."""
        key = {"session": self.session_id, "round": round_number, "shard": shard}
        if self._col.find_one(key, {"_id": 1}) is not None:
            return False
        arrays = list(result.weights) + result.state.flat()
        ref = self._blobs.put(wire.encode(arrays), **key)
        return self._insert_once(
            {
                **key,
                "blob": ref,
                "checksum": wire.checksum(arrays),
                "num_weights": len(result.weights),
                "layout": [[name, count] for name, count in result.state.layout()],
                "metrics": dict(result.state.metrics),
                "accepted": [int(c) for c in result.accepted],
                "rejected": {str(c): reason for c, reason in result.rejected.items()},
                "created_at": utcnow(),
            },
            ref,
        )

    def has(self, round_number: int, shard: int) -> bool:
        key = {"session": self.session_id, "round": round_number, "shard": shard}
        return self._col.find_one(key, {"_id": 1}) is not None

    def get(self, round_number: int, shard: int) -> ShardResult:
        doc = self._col.find_one({"session": self.session_id, "round": round_number, "shard": shard})
        if doc is None:
            raise StoreError(
                f"session {self.session_id}: round {round_number} has no result of shard {shard}"
            )
        arrays = wire.decode(self._blobs.get(doc["blob"]))
        if wire.checksum(arrays) != doc["checksum"]:
            raise StoreError(
                f"session {self.session_id}: round {round_number} shard {shard} fails its checksum"
            )
        split = int(doc["num_weights"])
        layout = [(str(name), int(count)) for name, count in doc["layout"]]
        return ShardResult(
            arrays[:split],
            StrategyState.from_flat(layout, arrays[split:], doc.get("metrics") or {}),
            [int(c) for c in doc["accepted"]],
            {int(c): str(reason) for c, reason in doc["rejected"].items()},
        )

    def delete(self, round_number: int) -> int:
        """Drop the round's shard results (once its weights are written); how many there were."""
        docs: list[dict[str, Any]] = list(
            self._col.find({"session": self.session_id, "round": round_number}, {"blob": 1})
        )
        for doc in docs:
            self._blobs.delete(doc["blob"])
        self._col.delete_many({"_id": {"$in": [doc["_id"] for doc in docs]}})
        return len(docs)
