"""fedkeeper's database: the connection, the indexes, and a handle per session.

All state is in MongoDB, one module per concern: the session's document (``sessions.py``), its
global weights (``global_weights.py``), clients' updates (``updates.py``), data partitions
(``partitions.py``), rounds (``rounds.py``) and the strategy's state (``state.py``).
:meth:`Store.for_session` binds them to one session, so no method takes a session id. Every write is idempotent on its natural key (unique
indexes), so a revived activation or a resumed keeper can repeat any step without counting
anything twice.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.database import Database

from fedkeeper.function.errors import StoreError
from fedkeeper.function.store.blobs import BlobStore
from fedkeeper.function.store.evaluations import Evaluations
from fedkeeper.function.store.global_weights import GlobalWeights
from fedkeeper.function.store.membership import MembershipRecord
from fedkeeper.function.store.mongo import shared_client, store_errors
from fedkeeper.function.store.partials import Partials
from fedkeeper.function.store.partitions import Partitions
from fedkeeper.function.store.rounds import Rounds
from fedkeeper.function.store.sessions import SessionRecord
from fedkeeper.function.store.shards import AggregationShards
from fedkeeper.function.store.state import StrategyStates
from fedkeeper.function.store.updates import Updates

# collection -> indexes; one for every query the keeper and the functions make.
INDEXES: dict[str, list[IndexModel]] = {
    "sessions": [
        IndexModel([("created_at", DESCENDING)]),
        IndexModel([("phase", ASCENDING), ("created_at", DESCENDING)]),
    ],
    "rounds": [IndexModel([("session", ASCENDING), ("round", ASCENDING)], unique=True)],
    "weights": [IndexModel([("session", ASCENDING), ("round", ASCENDING)], unique=True)],
    "updates": [
        IndexModel([("session", ASCENDING), ("round", ASCENDING), ("client", ASCENDING)], unique=True),
        # a client's latest top-k residual (round <)
        IndexModel([("session", ASCENDING), ("client", ASCENDING), ("round", ASCENDING)]),
        # async mode: a version's buffer, and the unclaimed updates
        IndexModel([("session", ASCENDING), ("consumed_by", ASCENDING), ("created_at", ASCENDING)]),
    ],
    "evaluations": [
        IndexModel([("session", ASCENDING), ("round", ASCENDING), ("client", ASCENDING)], unique=True),
    ],
    "partitions": [IndexModel([("session", ASCENDING), ("client", ASCENDING)], unique=True)],
    "aggregation_shards": [
        IndexModel([("session", ASCENDING), ("round", ASCENDING), ("shard", ASCENDING)], unique=True)
    ],
    "partial_aggregates": [
        IndexModel([("session", ASCENDING), ("round", ASCENDING), ("group", ASCENDING)], unique=True)
    ],
    # strategy state: exact (round) and latest-at-or-before (round <=) look-ups
    "strategy_state": [
        IndexModel([("session", ASCENDING), ("client", ASCENDING), ("round", ASCENDING)], unique=True)
    ],
    "activations": [
        IndexModel(
            [
                ("session", ASCENDING),
                ("round", ASCENDING),
                ("function", ASCENDING),
                ("client", ASCENDING),
                ("attempt", ASCENDING),
            ],
            unique=True,
        ),
        IndexModel([("session", ASCENDING), ("round", ASCENDING), ("status", ASCENDING)]),
        IndexModel([("session", ASCENDING), ("round", ASCENDING), ("submitted_at", ASCENDING)]),
        IndexModel([("activation_id", ASCENDING)]),
    ],
}


@store_errors
class Store:
    """The connection to fedkeeper's database.

    Parameters
    ----------
    url, database
        Where the state lives (``mongodb://`` URL, database name).
    """

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.db: Database = shared_client(url)[database]
        self.blobs = BlobStore(self.db)

    @classmethod
    def from_bound(cls, params: dict[str, Any]) -> Store:
        """The store a function was bound to at deploy time (``params["store"]``)."""
        bound = params.get("store")
        if not isinstance(bound, dict) or "url" not in bound:
            raise StoreError("function has no store binding; redeploy with `main.py -d`")
        return cls(bound["url"], bound.get("database", "fedkeeper"))

    def for_session(self, session_id: str) -> SessionStore:
        """Everything of one session, each concern bound to it."""
        return SessionStore(self, session_id)

    def collection(self, name: str) -> Collection:
        return self.db[name]

    def ensure_indexes(self) -> None:
        for name, indexes in INDEXES.items():
            self.db[name].create_indexes(indexes)

    def ping(self) -> None:
        self.db.client.admin.command("ping")

    def sessions(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest sessions' documents, newest first."""
        return list(self.db.sessions.find().sort("created_at", DESCENDING).limit(limit))


class SessionStore:
    """One session's state, by concern: ``record`` (its document), ``membership``, ``weights``, ``updates``,
    ``evaluations``, ``partitions``, ``rounds``, ``strategy``, ``shards`` and ``partials``. Nothing
    here takes a session id."""

    def __init__(self, store: Store, session_id: str) -> None:
        self.id = session_id
        self.store = store
        parts = (store.db, store.blobs, store.url, session_id)
        self.record = SessionRecord(*parts)
        self.membership = MembershipRecord(*parts)
        self.weights = GlobalWeights(*parts)
        self.updates = Updates(*parts)
        self.evaluations = Evaluations(*parts)
        self.partitions = Partitions(*parts)
        self.rounds = Rounds(*parts)
        self.strategy = StrategyStates(*parts)
        self.shards = AggregationShards(*parts)
        self.partials = Partials(*parts)
