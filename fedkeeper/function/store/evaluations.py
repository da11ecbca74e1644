"""Clients' federated evaluations: at most one per ``(session, round, client)``, however often it runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING

from fedkeeper.function.store.mongo import ClientAnswers, store_errors, utcnow


@store_errors
class Evaluations(ClientAnswers):
    """The ``evaluations`` collection, unique on ``(session, round, client)``.

    Round ``r``'s evaluation is of the global weights round ``r`` aggregated (round ``r + 1``'s).
    """

    collection = "evaluations"

    def put(
        self,
        round_number: int,
        client: int,
        num_examples: int,
        loss: float,
        accuracy: float,
        activation_id: str | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Store a client's evaluation; ``False`` (and nothing written) when one is already there."""
        return self._insert_once(
            {
                "session": self.session_id,
                "round": round_number,
                "client": client,
                "num_examples": int(num_examples),
                "loss": float(loss),
                "accuracy": float(accuracy),
                "activation_id": activation_id,
                "attempt": attempt,
                "created_at": utcnow(),
            }
        )

    def results(self, round_number: int, clients: Sequence[int]) -> list[dict[str, Any]]:
        """The stored evaluations of ``clients``, by client."""
        cursor = self._col.find(
            {"session": self.session_id, "round": round_number, "client": {"$in": list(clients)}},
            {"_id": 0},
        ).sort("client", ASCENDING)
        return list(cursor)
