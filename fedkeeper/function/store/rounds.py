"""A session's rounds: the selection (written once), the closing set (frozen once), the metrics.

Federated evaluation of a round's new weights is a second phase of the same document, under
``evaluate``: its own selection, status and closing set, written and frozen the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, ReturnDocument

from fedkeeper.function.errors import StoreError
from fedkeeper.function.store.mongo import SessionBound, store_errors, utcnow
from fedkeeper.function.store.statuses import RoundStatus, Task

EVALUATE = "evaluate"  # the field holding a round's evaluation phase


@store_errors
class Rounds(SessionBound):
    """The ``rounds`` collection, unique on ``(session, round)``."""

    collection = "rounds"

    def open(
        self, round_number: int, selected: Sequence[int], fit: Mapping[int, dict[str, Any]] | None = None
    ) -> list[int]:
        """Record the round's selection and each client's instructions (``fit``) once; a resumed
        keeper gets the original selection back."""
        doc = self._col.find_one_and_update(
            {"session": self.session_id, "round": round_number},
            {
                "$setOnInsert": {
                    "selected": [int(c) for c in selected],
                    "fit": {str(int(c)): dict(config) for c, config in (fit or {}).items()},
                    "status": RoundStatus.OPEN,
                    "started_at": utcnow(),
                }
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None  # upsert with AFTER always returns the document
        return [int(c) for c in doc["selected"]]

    def open_evaluate(self, round_number: int, selected: Sequence[int]) -> list[int]:
        """Record which clients evaluate the round's new weights, once; a resumed keeper gets the
        original selection back."""
        self._col.update_one(
            {"session": self.session_id, "round": round_number, EVALUATE: {"$exists": False}},
            {
                "$set": {
                    EVALUATE: {
                        "selected": [int(c) for c in selected],
                        "status": RoundStatus.OPEN,
                        "started_at": utcnow(),
                    }
                }
            },
        )
        return [int(c) for c in self.phase(round_number, Task.EVALUATE)["selected"]]

    def phase(self, round_number: int, task: Task) -> dict[str, Any]:
        """The round's document for ``task``: the round itself (fit), or its evaluation phase with
        the round's number."""
        doc = self.get(round_number)
        if task is Task.FIT:
            return doc
        if EVALUATE not in doc:
            raise StoreError(f"session {self.session_id}: round {round_number}'s evaluation was never opened")
        return {"round": round_number, **doc[EVALUATE]}

    def close(
        self,
        round_number: int,
        included: Sequence[int],
        failed: Sequence[int] = (),
        late: Sequence[int] = (),
        task: Task = Task.FIT,
    ) -> list[int]:
        """Freeze the set of updates the round aggregates (or of evaluations, for ``EVALUATE``),
        with who failed and who was late (first close wins); the included clients."""
        at = "" if task is Task.FIT else f"{EVALUATE}."
        self._col.update_one(
            {"session": self.session_id, "round": round_number, f"{at}status": RoundStatus.OPEN},
            {
                "$set": {
                    f"{at}status": RoundStatus.CLOSED,
                    f"{at}included": sorted(int(c) for c in included),
                    f"{at}failed": sorted(int(c) for c in failed),
                    f"{at}late": sorted(int(c) for c in late),
                    f"{at}closed_at": utcnow(),
                }
            },
        )
        return [int(c) for c in self.phase(round_number, task)["included"]]

    def set_groups(self, round_number: int, groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Record the round's groups of clients (topology hierarchical) once; the stored ones."""
        self._col.update_one(
            {"session": self.session_id, "round": round_number, "groups": {"$exists": False}},
            {"$set": {"groups": [dict(g) for g in groups]}},
        )
        return list(self.get(round_number)["groups"])

    def late_clients(self, before: int) -> list[tuple[int, int]]:
        """``(round, client)`` of every client left late by a round before ``before``."""
        cursor = self._col.find(
            {"session": self.session_id, "round": {"$lt": before}, "late.0": {"$exists": True}},
            {"round": 1, "late": 1},
        )
        return [(int(doc["round"]), int(c)) for doc in cursor for c in doc["late"]]

    def fold(self, round_number: int, late: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """semi_async: freeze the late updates (``(round, client)``) the round aggregates (first
        write wins); the frozen ones."""
        self._col.update_one(
            {"session": self.session_id, "round": round_number, "folded": {"$exists": False}},
            {"$set": {"folded": [{"round": int(r), "client": int(c)} for r, c in late]}},
        )
        return folded(self.get(round_number))

    def finish(self, round_number: int, metrics: dict[str, Any]) -> None:
        self._col.update_one(
            {"session": self.session_id, "round": round_number},
            {"$set": {"status": RoundStatus.AGGREGATED, "metrics": metrics, "aggregated_at": utcnow()}},
        )

    def add_metrics(self, round_number: int, metrics: dict[str, Any]) -> None:
        """Add the keeper's own figures (retries, failed clients, duration) to a round's metrics."""
        self._col.update_one(
            {"session": self.session_id, "round": round_number},
            {"$set": {f"metrics.{k}": v for k, v in metrics.items()}},
        )

    def instructions(self, round_number: int, client: int) -> dict[str, Any] | None:
        """What the keeper told ``client`` for the round (None: the round is not open, or predates them)."""
        doc = self._col.find_one(
            {"session": self.session_id, "round": round_number}, {f"fit.{int(client)}": 1}
        )
        found = ((doc or {}).get("fit") or {}).get(str(int(client)))
        return dict(found) if found is not None else None

    def opened(self, round_number: int) -> bool:
        return self._col.count_documents({"session": self.session_id, "round": round_number}, limit=1) > 0

    def get(self, round_number: int) -> dict[str, Any]:
        doc = self._col.find_one({"session": self.session_id, "round": round_number})
        if doc is None:
            raise StoreError(f"session {self.session_id}: round {round_number} was never opened")
        return dict(doc)

    def metric_sum(self, name: str) -> float:
        """The sum of a numeric metric over the session's rounds (those without it count 0)."""
        found = list(
            self._col.aggregate(
                [
                    {"$match": {"session": self.session_id}},
                    {"$group": {"_id": None, "sum": {"$sum": f"$metrics.{name}"}}},
                ]
            )
        )
        return float(found[0]["sum"]) if found else 0.0

    def all(self) -> list[dict[str, Any]]:
        return list(self._col.find({"session": self.session_id}).sort("round", ASCENDING))


def folded(doc: dict[str, Any]) -> list[tuple[int, int]]:
    """The late updates (``(round, client)``) a round's document says it aggregates (semi_async)."""
    return [(int(f["round"]), int(f["client"])) for f in doc.get("folded") or ()]
