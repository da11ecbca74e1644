"""Each client's history, for the selection policies that read it: one document per session.

After every round closes, the round's ledger entries are folded into each selected client's
:class:`~fedkeeper.function.strategies.selection.ClientStats` (successes, failures, lateness,
run times, cold starts, the round it was last selected for) and the session's
``client_history`` document is written once. Selecting the next round reads it once. So the
history costs two reads and one write per round, whatever the number of clients or rounds.

The document records the last round folded in (``folded``) and is written only if that is older,
so a keeper that resumes a round it already folded does not count it twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from pymongo.errors import DuplicateKeyError

from fedkeeper.function.catalog import CLIENT_FUNCTION, INVOKER_FUNCTION
from fedkeeper.function.store.db import SessionStore
from fedkeeper.function.store.mongo import store_errors
from fedkeeper.function.strategies.selection import NO_HISTORY, ClientStats
from fedkeeper.host.ledger import LedgerEntry, LedgerStatus
from fedkeeper.host.rounds import ClosedRound

FAILED = {
    LedgerStatus.APPLICATION_ERROR,
    LedgerStatus.DEVELOPER_ERROR,
    LedgerStatus.INTERNAL_ERROR,
    LedgerStatus.NOT_STARTED,
}


@dataclass(frozen=True)
class History:
    """The clients' stats as of round ``folded`` (-1: no round folded yet)."""

    folded: int = -1
    clients: Mapping[int, ClientStats] = field(default_factory=dict)


def fold(history: History, closed: ClosedRound, entries: Iterable[LedgerEntry], deadline_s: float) -> History:
    """``history`` with round ``closed`` folded in from its ledger ``entries``.

    A timed run counts its duration (and its initialisation, on a cold start); a late client counts
    the deadline as a lower bound of its run time; an attempt lost to an outage counts nothing.
    """
    stats = dict(history.clients)
    for entry in entries:
        if entry.function not in (CLIENT_FUNCTION, INVOKER_FUNCTION) or entry.client not in closed.selected:
            continue
        s = stats.get(entry.client, NO_HISTORY)
        if entry.status in (LedgerStatus.SUCCESS, LedgerStatus.RECORD_LOST):
            s = replace(s, successes=s.successes + 1)
            if entry.duration_ms is not None:
                init_s = entry.init_ms / 1000 if entry.init_ms is not None else None
                s = s.ran(entry.duration_ms / 1000, init_s)
        elif entry.status in FAILED or (
            entry.status == LedgerStatus.TIMED_OUT and entry.client not in closed.late
        ):
            s = replace(s, failures=s.failures + 1)
        stats[entry.client] = s
    for client in closed.late:
        s = stats.get(client, NO_HISTORY).ran(deadline_s)
        stats[client] = replace(s, lates=s.lates + 1)
    for client in closed.selected:
        stats[client] = replace(stats.get(client, NO_HISTORY), last_selected=closed.number)
    return History(closed.number, stats)


@store_errors
class ClientHistory:
    """The ``client_history`` document of one session (``_id`` is the session id)."""

    def __init__(self, session: SessionStore) -> None:
        self._col = session.store.collection("client_history")
        self._id = session.id
        self.url = session.store.url  # named in the error when MongoDB is down

    def read(self) -> History:
        """The history as of the last round folded in (one query)."""
        doc = self._col.find_one({"_id": self._id})
        if doc is None:
            return History()
        clients = {int(c): ClientStats.from_doc(s) for c, s in doc["clients"].items()}
        return History(int(doc["folded"]), clients)

    def write(self, history: History) -> bool:
        """Store ``history`` unless a round as late is already folded in (one write); whether it was."""
        doc = {
            "folded": history.folded,
            "clients": {str(c): s.to_doc() for c, s in history.clients.items()},
        }
        try:
            result = self._col.update_one(
                {"_id": self._id, "folded": {"$lt": history.folded}}, {"$set": doc}, upsert=True
            )
        except DuplicateKeyError:  # the document is there with this round folded in already
            return False
        return bool(result.modified_count or result.upserted_id is not None)
