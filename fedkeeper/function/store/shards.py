"""Sharded aggregation's partial results: one per ``(session, round, shard)``, until assembled.

With ``server_config.aggregation_shards: M`` each of M aggregator activations aggregates one
contiguous range of the model's arrays and stores its slice of the next weights and of the
strategy's state here; the final activation concatenates the M slices, writes the round's
weights and deletes the slices.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.mongo import store_errors
from fedkeeper.function.store.parts import RoundParts
from fedkeeper.function.strategies.state import StrategyState


@dataclass(frozen=True, eq=False)
class ShardResult:
    """One shard's slice of the next weights and state, and the round's verdicts on the updates."""

    weights: wire.Weights
    state: StrategyState
    accepted: list[int]
    rejected: dict[int, str]


@store_errors
class AggregationShards(RoundParts):
    """The ``aggregation_shards`` collection, unique on ``(session, round, shard)``."""

    collection = "aggregation_shards"
    part = "shard"

    def put(self, round_number: int, shard: int, result: ShardResult) -> bool:
        """Store a shard's result; ``False`` when an earlier attempt already did."""
        fields = {
            "num_weights": len(result.weights),
            "layout": [[name, count] for name, count in result.state.layout()],
            "metrics": dict(result.state.metrics),
            "accepted": [int(c) for c in result.accepted],
            "rejected": {str(c): reason for c, reason in result.rejected.items()},
        }
        return self._insert(round_number, shard, list(result.weights) + result.state.flat(), fields) > 0

    def get(self, round_number: int, shard: int) -> ShardResult:
        doc, arrays = self._find(round_number, shard)
        split = int(doc["num_weights"])
        layout = [(str(name), int(count)) for name, count in doc["layout"]]
        return ShardResult(
            arrays[:split],
            StrategyState.from_flat(layout, arrays[split:], doc.get("metrics") or {}),
            [int(c) for c in doc["accepted"]],
            {int(c): str(reason) for c, reason in doc["rejected"].items()},
        )
