"""Clients' federated evaluations: at most one per ``(session, round, client)``, however often it runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from fedkeeper.function.store.mongo import SessionBound, store_errors, utcnow


@store_errors
class Evaluations(SessionBound):
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
        try:
            self._col.insert_one(
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
        except DuplicateKeyError:
            return False
        return True

    def has(self, round_number: int, client: int) -> bool:
        key = {"session": self.session_id, "round": round_number, "client": client}
        return self._col.find_one(key, {"_id": 1}) is not None

    def clients(self, round_number: int) -> set[int]:
        """Clients whose evaluation of the round is stored."""
        cursor = self._col.find({"session": self.session_id, "round": round_number}, {"client": 1})
        return {int(doc["client"]) for doc in cursor}

    def results(self, round_number: int, clients: Sequence[int]) -> list[dict[str, Any]]:
        """The stored evaluations of ``clients``, by client."""
        cursor = self._col.find(
            {"session": self.session_id, "round": round_number, "client": {"$in": list(clients)}},
            {"_id": 0},
        ).sort("client", ASCENDING)
        return list(cursor)
