"""Hierarchical aggregation's partials: one per ``(session, round, group)``, until combined.

With ``server_config.topology: hierarchical`` each group's local aggregator reduces its clients'
updates to a :class:`~fedkeeper.function.strategies.hierarchy.Partial` (their example-weighted sum
in float64, the examples, the verdicts) and stores it here; the global aggregator combines the
round's partials into the next weights and deletes them.
"""

from __future__ import annotations

from fedkeeper.function.store.mongo import store_errors
from fedkeeper.function.store.parts import RoundParts
from fedkeeper.function.strategies.hierarchy import Partial


@store_errors
class Partials(RoundParts):
    """The ``partial_aggregates`` collection, unique on ``(session, round, group)``."""

    collection = "partial_aggregates"
    part = "group"

    def put(self, round_number: int, group: int, partial: Partial) -> int:
        """Store a group's partial; its payload's bytes (0 when an earlier attempt already did)."""
        fields = {
            "examples": float(partial.examples),
            "accepted": [int(c) for c in partial.accepted],
            "rejected": {str(c): reason for c, reason in partial.rejected.items()},
        }
        return self._insert(round_number, group, partial.sums, fields)

    def get(self, round_number: int, group: int) -> Partial:
        doc, sums = self._find(round_number, group)
        return Partial(
            sums,
            float(doc["examples"]),
            [int(c) for c in doc["accepted"]],
            {int(c): str(reason) for c, reason in doc["rejected"].items()},
        )
