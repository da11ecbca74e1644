"""A session's own document: phase and conditions, next round, counters, init and budget marks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fedkeeper.function.errors import StoreError
from fedkeeper.function.redaction import redact
from fedkeeper.function.store.mongo import SessionBound, store_errors, utcnow
from fedkeeper.function.store.statuses import Phase


def new_condition(kind: str, reason: str, message: str, now: datetime | None = None) -> dict[str, Any]:
    """A Kubernetes-style condition as the session document keeps it."""
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": redact(message),
        "lastTransitionTime": now or utcnow(),
    }


@store_errors
class SessionRecord(SessionBound):
    """The ``sessions`` document of one session (``_id`` is the session id)."""

    collection = "sessions"

    def create(self, doc: dict[str, Any]) -> None:
        now = utcnow()
        self._col.insert_one(
            {
                "phase": Phase.PENDING,
                "round": 0,
                "conditions": [],
                "counters": {"active": 0, "succeeded": 0, "failed": 0},
                "created_at": now,
                "start_time": now,
                "completion_time": None,
                "initialised_at": None,
                **doc,
                "_id": self.session_id,
            }
        )

    def get(self) -> dict[str, Any]:
        doc = self._col.find_one({"_id": self.session_id})
        if doc is None:
            raise StoreError(f"no session {self.session_id!r} in database {self._col.database.name}")
        return dict(doc)

    def set_phase(self, phase: Phase, reason: str, message: str = "") -> None:
        """Move the session to ``phase`` and record why, as a Kubernetes-style condition."""
        phase = Phase(phase)
        now = utcnow()
        update: dict[str, Any] = {"phase": phase}
        if phase.completed:
            update["completion_time"] = now
        condition = new_condition(phase, reason, message, now)
        self._col.update_one({"_id": self.session_id}, {"$set": update, "$push": {"conditions": condition}})

    def set_cost(self, total: float, last_round: float, currency: str) -> None:
        """The session's cost so far and its latest round's, as the status shows them."""
        cost = {"total": total, "round": last_round, "currency": currency}
        self._col.update_one({"_id": self.session_id}, {"$set": {"cost": cost}})

    def restart_budgets(self) -> datetime:
        """Give every client a fresh retry budget from now (a ``Failed`` session being resumed)."""
        now = utcnow()
        self._col.update_one({"_id": self.session_id}, {"$set": {"budget_since": now}})
        return now

    def advance_round(self, next_round: int) -> None:
        """Record that rounds before ``next_round`` are done (never moves backwards)."""
        self._col.update_one(
            {"_id": self.session_id, "round": {"$lt": next_round}}, {"$set": {"round": next_round}}
        )

    def count(self, **deltas: int) -> None:
        self._col.update_one(
            {"_id": self.session_id}, {"$inc": {f"counters.{k}": v for k, v in deltas.items()}}
        )

    def mark_initialised(self) -> None:
        """Record that round-0 weights and every partition are written (idempotent)."""
        self._col.update_one(
            {"_id": self.session_id, "initialised_at": None}, {"$set": {"initialised_at": utcnow()}}
        )

    def initialised(self) -> bool:
        """Whether ``fl_server_init`` finished: weights alone may be left by an init that died."""
        return self.get().get("initialised_at") is not None
