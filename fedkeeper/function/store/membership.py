"""A session's membership: which client slots take part, as the CLI asks and as the keeper plans.

Kept in the session's document under ``membership``, so every change is one atomic update:

- ``requested``: the slots the operator wants in (``fedkeeper clients add|remove`` writes it);
- ``active``: the slots the keeper's rounds sample from (only the keeper writes it, at a round boundary);
- ``set_aside``: joined slots a revert took out; ``left``: slots that left. Neither comes back;
- ``window``: the change being validated (:class:`Window`), None when none is;
- ``fleets``: per edge cluster, the keeper's binding of its devices to client slots (:class:`DeviceBinding`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fedkeeper.function.store.mongo import SessionBound, store_errors
from fedkeeper.function.store.sessions import new_condition
from fedkeeper.function.store.statuses import Reconfiguration


@dataclass(frozen=True)
class Window:
    """Membership change number ``change``, under validation: the plan before it and its figures.

    ``round`` is the first round run with the new members; the verdict comes once ``rounds`` rounds
    from it are aggregated. ``before``: accuracy gained and cost over the same number of rounds
    before the change (None: too few rounds to compare with). Costs are per round, expected.
    """

    change: int
    round: int
    rounds: int
    previous: tuple[int, ...]
    joined: tuple[int, ...]
    left: tuple[int, ...]
    cost_before: float
    cost_after: float
    before: dict[str, Any] | None = None

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in doc.items()}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Window:
        return cls(
            change=int(doc["change"]),
            round=int(doc["round"]),
            rounds=int(doc["rounds"]),
            previous=tuple(int(c) for c in doc["previous"]),
            joined=tuple(int(c) for c in doc["joined"]),
            left=tuple(int(c) for c in doc["left"]),
            cost_before=float(doc["cost_before"]),
            cost_after=float(doc["cost_after"]),
            before=doc.get("before"),
        )


@dataclass(frozen=True)
class Membership:
    """The ``membership`` field of a session's document (see the module's docstring)."""

    requested: tuple[int, ...]
    active: tuple[int, ...]
    set_aside: tuple[int, ...] = ()
    left: tuple[int, ...] = ()
    window: Window | None = None
    events: int = 0

    @property
    def used(self) -> set[int]:
        """Every slot that is or was in the session: none of them can join again."""
        return {*self.requested, *self.active, *self.set_aside, *self.left}

    @property
    def pending(self) -> bool:
        """Whether the operator asked for a change the keeper has not planned yet."""
        return set(self.requested) != set(self.active)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Membership:
        window = doc.get("window")
        return cls(
            requested=tuple(sorted(int(c) for c in doc.get("requested", []))),
            active=tuple(sorted(int(c) for c in doc.get("active", []))),
            set_aside=tuple(sorted(int(c) for c in doc.get("set_aside", []))),
            left=tuple(sorted(int(c) for c in doc.get("left", []))),
            window=Window.from_doc(window) if window else None,
            events=int(doc.get("events", 0)),
        )


@dataclass(frozen=True)
class DeviceBinding:
    """An edge cluster's devices as the keeper last saw them (at fleet ``generation``), each bound
    to the client slot it serves; None for a device that came with no slot free."""

    cluster: str
    generation: int
    slots: dict[int, int | None]

    def to_doc(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "generation": self.generation,
            "devices": [[d, s] for d, s in sorted(self.slots.items())],
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> DeviceBinding:
        slots = {int(d): None if s is None else int(s) for d, s in doc["devices"]}
        return cls(str(doc["cluster"]), int(doc["generation"]), slots)


@store_errors
class MembershipRecord(SessionBound):
    """The ``membership`` field of one session's document."""

    collection = "sessions"

    def _filter(self, **extra: Any) -> dict[str, Any]:
        return {"_id": self.session_id, **extra}

    def ensure(self, active: Sequence[int]) -> Membership:
        """The session's membership; first written with ``active`` as both requested and active."""
        first: dict[str, Any] = {"requested": list(active), "active": list(active), "set_aside": []}
        first |= {"left": [], "window": None, "events": 0}
        self._col.update_one(self._filter(membership={"$exists": False}), {"$set": {"membership": first}})
        return self.get()

    def get(self) -> Membership:
        doc = self._col.find_one(self._filter(), {"membership": 1}) or {}
        return Membership.from_doc(doc.get("membership") or {})

    def request_join(self, clients: Sequence[int]) -> bool:
        """Ask for ``clients`` to join; False when one of them was taken meanwhile (nothing written)."""
        taken = {"$nin": list(clients)}
        guard = {f"membership.{part}": taken for part in ("requested", "active", "set_aside", "left")}
        done = self._col.update_one(
            self._filter(membership={"$exists": True}, **guard),
            {"$push": {"membership.requested": {"$each": list(clients)}}},
        )
        return done.modified_count == 1

    def request_leave(self, clients: Sequence[int]) -> bool:
        """Ask for ``clients`` to leave; False when one of them is not requested any more."""
        done = self._col.update_one(
            self._filter(**{"membership.requested": {"$all": list(clients)}}),
            {"$pull": {"membership.requested": {"$in": list(clients)}}},
        )
        return done.modified_count == 1

    def open_window(self, active: Sequence[int], window: Window, reason: str, message: str) -> bool:
        """Plan ``active`` and start validating ``window``, with its condition; once per event."""
        done = self._col.update_one(
            self._filter(**{"membership.events": window.change - 1}),
            {
                "$set": {"membership.active": list(active), "membership.window": window.to_doc()},
                "$inc": {"membership.events": 1},
                "$push": {
                    "membership.left": {"$each": list(window.left)},
                    "conditions": new_condition(Reconfiguration.CHANGED, reason, message),
                },
            },
        )
        return done.modified_count == 1

    def close_window(self, window: Window, reason: str, message: str, revert: bool) -> bool:
        """End ``window`` with its verdict's condition; ``revert`` sets its joined clients aside."""
        kind = Reconfiguration.REVERTED if revert else Reconfiguration.KEPT
        update: dict[str, Any] = {
            "$set": {"membership.window": None},
            "$push": {"conditions": new_condition(kind, reason, message)},
        }
        if revert and window.joined:
            update["$pull"] = {
                "membership.active": {"$in": list(window.joined)},
                "membership.requested": {"$in": list(window.joined)},
            }
            update["$push"]["membership.set_aside"] = {"$each": list(window.joined)}
        done = self._col.update_one(self._filter(**{"membership.window.change": window.change}), update)
        return done.modified_count == 1

    def _fleets(self) -> list[dict[str, Any]]:
        doc = self._col.find_one(self._filter(), {"membership.fleets": 1}) or {}
        return list((doc.get("membership") or {}).get("fleets") or [])

    def binding(self, cluster: str) -> DeviceBinding | None:
        """The devices of edge cluster ``cluster`` as last seen; None before the keeper first looked."""
        found = [DeviceBinding.from_doc(d) for d in self._fleets() if d.get("cluster") == cluster]
        return found[0] if found else None

    def bind(self, binding: DeviceBinding) -> None:
        """Record ``binding`` for its cluster (only the keeper writes it)."""
        others = [d for d in self._fleets() if d.get("cluster") != binding.cluster]
        self._col.update_one(self._filter(), {"$set": {"membership.fleets": [*others, binding.to_doc()]}})
