"""What the API may change (with its token): removing a session no keeper runs, and all it stored."""

from __future__ import annotations

from fedkeeper.function.errors import FedkeeperError
from fedkeeper.function.store.db import Store, store_errors
from fedkeeper.function.store.statuses import Phase
from fedkeeper.host.serve.documents import NoSuchSession

SESSION_COLLECTIONS = ("rounds", "weights", "updates", "evaluations", "partitions", "activations")
BLOB_COLLECTIONS = ("weights", "updates")
ACTIVE_PHASES = (Phase.PENDING.value, Phase.RUNNING.value)


class SessionBusy(FedkeeperError):
    """A keeper may still be running the session."""


@store_errors
class Changes:
    """State changes the API offers."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.url = store.url  # named in the error when MongoDB is down

    def remove_session(self, session_id: str, force: bool = False) -> dict[str, int]:
        """Remove a session and everything it stored; how many documents went, by collection.

        A ``Pending`` or ``Running`` session is refused unless ``force`` (its keeper may have died:
        then nothing runs it). The session's own document goes last, so a removal cut short can
        be repeated.
        """
        db = self.store.db
        doc = db.sessions.find_one({"_id": session_id}, {"phase": 1})
        if doc is None:
            raise NoSuchSession(f"no session {session_id!r} in database {db.name}")
        if doc.get("phase") in ACTIVE_PHASES and not force:
            raise SessionBusy(
                f"session {session_id} is {doc['phase']}: a keeper may still run it; wait for it to end, "
                "or pass force=true once no keeper runs it"
            )
        for name in BLOB_COLLECTIONS:  # weights past the inline limit live in GridFS
            for held in db[name].find({"session": session_id, "blob.gridfs": {"$exists": True}}, {"blob": 1}):
                self.store.blobs.delete(held["blob"])
        # top-k residuals, beside their updates
        for held in db.updates.find(
            {"session": session_id, "residual.gridfs": {"$exists": True}}, {"residual": 1}
        ):
            self.store.blobs.delete(held["residual"])
        removed = {
            name: db[name].delete_many({"session": session_id}).deleted_count for name in SESSION_COLLECTIONS
        }
        removed["sessions"] = db.sessions.delete_one({"_id": session_id}).deleted_count
        return removed
