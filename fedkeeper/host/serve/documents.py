"""The read model: every document ``fedkeeper serve`` and ``fedkeeper status --json`` show, from the store.

A session's status follows Sedna's federated-learning job (``phase``, ``conditions``, ``startTime``,
``completionTime``, ``active``, ``succeeded``, ``failed``) with what Sedna's aggregation worker
reports beside it (``currentRound``, ``aggregations``, the nodes taking part with their sample
sizes). Each method makes a fixed number of queries whatever the session's size (MongoDB groups
and counts; nothing loops over documents here), and activations come a page at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING

from fedkeeper.function.catalog import PLATFORMS
from fedkeeper.function.config import Config
from fedkeeper.function.errors import FedkeeperError
from fedkeeper.function.invoke.base import Capabilities
from fedkeeper.function.redaction import redact, redact_value
from fedkeeper.function.store.db import Store, store_errors
from fedkeeper.function.store.membership import Membership
from fedkeeper.function.store.statuses import RoundStatus
from fedkeeper.host.hosts.registry import COLLECTION as HOSTS
from fedkeeper.host.ledger import SERVER, LedgerStatus
from fedkeeper.host.plan import Plan
from fedkeeper.host.serve.sources import Reading

API_VERSION = "fedkeeper/v1"
KIND = "FederatedLearningSession"
PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
SUCCESS = LedgerStatus.SUCCESS.value
SUBMITTED = LedgerStatus.SUBMITTED.value
AGGREGATED = RoundStatus.AGGREGATED.value
ERROR_CHARS = 300
# Histogram buckets (upper bounds, seconds) of activation and round durations.
ACTIVATION_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ROUND_BUCKETS_S = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class NoSuchSession(FedkeeperError):
    """The store holds no session by that id."""


def iso(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a ``Z``, as Kubernetes writes times (None stays None)."""
    if value is None:
        return None
    if value.tzinfo is None:  # pymongo without tz_aware: the store writes UTC
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(value: Any) -> float | None:
    """A JSON-safe number: NaN and infinities (no JSON for them) become None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class Page:
    """Which activations to list: ``limit`` of them from ``offset``, optionally filtered."""

    offset: int = 0
    limit: int = PAGE_SIZE
    round: int | None = None
    status: str | None = None
    platform: str | None = None
    function: str | None = None

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"offset must be 0 or more (got {self.offset})")
        if not 0 < self.limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be 1..{MAX_PAGE_SIZE} (got {self.limit})")

    def query(self, session: str) -> dict[str, Any]:
        query: dict[str, Any] = {"session": session}
        for key in ("round", "status", "platform", "function"):
            value = getattr(self, key)
            if value is not None:
                query[key] = value
        return query


@dataclass(frozen=True)
class Histogram:
    """Observations of one series: how many, their sum, and cumulative counts per bucket bound."""

    labels: dict[str, str]
    count: int
    total: float
    buckets: list[tuple[float, int]]


@dataclass(frozen=True)
class Telemetry:
    """What ``/metrics`` shows, read at scrape time: every figure grouped in MongoDB."""

    phases: dict[str, int]  # every session, by phase
    sessions: list[dict[str, Any]]  # the newest ones, as :meth:`StatusReader.sessions` lists them
    activations: list[dict[str, Any]]  # by session, platform, cluster, function, status: count, retries
    activation_seconds: list[Histogram]  # by session, platform, function
    round_seconds: list[Histogram]  # by session
    round_totals: dict[str, dict[str, int]]  # session -> retries, failed_clients (the keeper's own)


@store_errors
class StatusReader:
    """Builds the API's documents from a store.

    Parameters
    ----------
    store
        The sessions' store.
    config
        Names the clusters (``clusters``); sessions come from the store alone.
    """

    def __init__(self, store: Store, config: Config | None = None) -> None:
        self.store = store
        self.db = store.db
        self.url = store.url  # named in the error when MongoDB is down
        self.config = config

    # ------------------------------------------------------------------ sessions
    def sessions(self, limit: int = 20) -> list[dict[str, Any]]:
        """The ``limit`` newest sessions, each with its latest accuracy and loss (two queries)."""
        docs = list(self.db.sessions.find({}, _SESSION_FIELDS).sort("created_at", DESCENDING).limit(limit))
        latest = self._latest_metrics([d["_id"] for d in docs])
        return [_session_summary(doc, latest.get(doc["_id"], {})) for doc in docs]

    def session(self, session_id: str) -> dict[str, Any]:
        """One session's status document (five queries)."""
        doc = self.db.sessions.find_one({"_id": session_id})
        if doc is None:
            raise NoSuchSession(f"no session {session_id!r} in database {self.db.name}")
        latest = self._latest_metrics([session_id]).get(session_id, {})
        sizes = self.store.for_session(session_id).partitions.sizes()
        per_client = {g["_id"]: g for g in self.db.activations.aggregate(_per_client(session_id))}
        by_where = list(self.db.activations.aggregate(_per_platform(session_id)))
        last_activity = max((g["last_submitted"] for g in per_client.values()), default=None)
        per_client.pop(SERVER, None)  # the managing functions' attempts: not a node
        scenario = doc.get("scenario") or {}
        server_config = scenario.get("server_config") or {}
        counters = doc.get("counters") or {}
        nodes = [
            _node(placement, sizes.get(int(placement["client"])), per_client.get(int(placement["client"])))
            for placement in doc.get("clients") or []
        ]
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": doc["_id"], "creationTimestamp": iso(doc.get("created_at"))},
            "spec": {
                "maxRounds": server_config.get("max_rounds"),
                "targetAccuracy": server_config.get("target_accuracy"),
                "clientsPerRound": server_config.get("num_clients_per_round"),
                "strategy": _strategy_name(server_config.get("strategy")),
                "mode": server_config.get("mode", "sync"),  # sessions from before modes are sync
                "serverCluster": server_config.get("cluster"),
                "dataset": (scenario.get("training_test_data") or {}).get("dataset"),
                "model": (scenario.get("model_params") or {}).get("model"),
                "totalClients": len(nodes),
            },
            "status": {
                "phase": doc.get("phase"),
                "conditions": _conditions(doc.get("conditions") or [], last_activity),
                "startTime": iso(doc.get("start_time")),
                "completionTime": iso(doc.get("completion_time")),
                "active": int(counters.get("active", 0)),
                "succeeded": int(counters.get("succeeded", 0)),
                "failed": int(counters.get("failed", 0)),
                "currentRound": int(doc.get("round", 0)),
                "aggregations": latest.get("aggregations", 0),
                "accuracy": latest.get("accuracy"),
                "loss": latest.get("loss"),
                "federatedAccuracy": latest.get("federated_accuracy"),
                "retries": sum(g["retries"] for g in by_where),
                "lastActivityTime": iso(last_activity),
                "nodes": nodes,
                "activations": sorted(
                    (_activation_count(g) for g in by_where),
                    key=lambda c: (c["platform"], c["cluster"], str(c["via"]), c["status"]),
                ),
                # Absent until costs are recorded; shown as the store has them.
                "cost": redact_value(_jsonable(doc["cost"])) if doc.get("cost") is not None else None,
                "membership": _membership(doc.get("membership")),
            },
        }

    def rounds(self, session_id: str) -> list[dict[str, Any]]:
        """Every round of a session, oldest first, with its metrics (two queries)."""
        self._require(session_id)
        cursor = self.db.rounds.find({"session": session_id}, {"_id": 0}).sort("round", ASCENDING)
        return [_round(doc) for doc in cursor]

    def activations(self, session_id: str, page: Page) -> dict[str, Any]:
        """One page of a session's activations, in the ledger's order (three queries)."""
        self._require(session_id)
        query = page.query(session_id)
        total = self.db.activations.count_documents(query)
        cursor = (
            self.db.activations.find(query, {"_id": 0})
            .sort([("round", ASCENDING), ("submitted_at", ASCENDING), ("_id", ASCENDING)])
            .skip(page.offset)
            .limit(page.limit)
        )
        items = [_activation(doc) for doc in cursor]
        following = page.offset + len(items)
        return {
            "items": items,
            "total": total,
            "offset": page.offset,
            "limit": page.limit,
            "nextOffset": following if following < total else None,
        }

    # ------------------------------------------------------------------ hosts and clusters
    def hosts(self) -> list[dict[str, Any]]:
        """The host registry (:mod:`fedkeeper.host.hosts.registry`), credentials masked; empty when none is kept."""
        if HOSTS not in self.db.list_collection_names(filter={"name": HOSTS}):
            return []
        docs = []
        for doc in self.db[HOSTS].find().sort("_id", ASCENDING):
            doc["_id"] = str(doc["_id"])
            docs.append(redact_value(_jsonable(doc)))
        return docs

    def clusters(self, readings: Sequence[Reading] = ()) -> list[dict[str, Any]]:
        """Every configured cluster: its platform, what it can do, its clients, its last activity (one
        query) and what its Prometheus servers answered (``readings``). No setting of the cluster is
        shown, so no credential can be."""
        if self.config is None:
            return []
        config = self.config
        plan = Plan.build(config) if config.scenarios.federated_learning is not None else None
        placements = plan.clients_per_cluster() if plan is not None else {}
        server = plan.server if plan is not None else None
        activity = {_split(g["_id"]): g for g in self.db.activations.aggregate(_per_cluster())}
        out = []
        for platform in PLATFORMS:
            for name in config.providers.clusters(platform.name):
                seen = activity.get((platform.name, name), {})
                out.append(
                    {
                        "platform": platform.name,
                        "title": platform.title,
                        "name": name,
                        "capabilities": _capabilities(platform.capabilities),
                        "clients": placements.get((platform.name, name), 0),
                        "runsManagingFunctions": (platform.name, name) == server,
                        "activations": int(seen.get("count", 0)),
                        "failed": int(seen.get("failed", 0)),
                        "lastActivityTime": iso(seen.get("last_submitted")),
                        "lastStatus": seen.get("last_status"),
                        "prometheus": [
                            r.as_doc() for r in readings if (r.platform, r.cluster) == (platform.name, name)
                        ],
                    }
                )
        return out

    # ------------------------------------------------------------------ metrics
    def telemetry(self, limit: int) -> Telemetry:
        """The figures ``/metrics`` shows for the ``limit`` newest sessions (six queries)."""
        phases = {
            str(g["_id"]): int(g["count"])
            for g in self.db.sessions.aggregate([{"$group": {"_id": "$phase", "count": {"$sum": 1}}}])
        }
        sessions = self.sessions(limit)
        ids = [s["name"] for s in sessions]
        activations = [
            {**_ran_on(g["_id"]), "count": int(g["count"]), "retries": int(g["retries"])}
            for g in self.db.activations.aggregate(
                [
                    {"$match": {"session": {"$in": ids}}},
                    {
                        "$group": {
                            "_id": {
                                "session": "$session",
                                "where": RAN_ON,
                                "function": "$function",
                                "status": "$status",
                            },
                            "count": {"$sum": 1},
                            "retries": {"$sum": _RETRY},
                        }
                    },
                ]
            )
        ]
        durations = self.db.activations.aggregate(
            _histogram(
                {"session": {"$in": ids}},
                {"session": "$session", "where": RAN_ON, "function": "$function"},
                "duration_ms",
                [b * 1000 for b in ACTIVATION_BUCKETS_S],
            )
        )
        activation_seconds = [_histogram_of(g, ACTIVATION_BUCKETS_S, scale=1000) for g in durations]
        rounds = list(
            self.db.rounds.aggregate(
                _histogram(
                    {"session": {"$in": ids}, "status": AGGREGATED},
                    {"session": "$session"},
                    "metrics.duration_s",
                    list(ROUND_BUCKETS_S),
                    extra={
                        "retries": {"$sum": "$metrics.retries"},
                        "failed_clients": {"$sum": "$metrics.failed_clients"},
                    },
                )
            )
        )
        return Telemetry(
            phases=phases,
            sessions=sessions,
            activations=activations,
            activation_seconds=activation_seconds,
            round_seconds=[_histogram_of(g, ROUND_BUCKETS_S) for g in rounds],
            round_totals={
                g["_id"]["session"]: {
                    "retries": int(g["retries"]),
                    "failed_clients": int(g["failed_clients"]),
                }
                for g in rounds
            },
        )

    # ------------------------------------------------------------------ helpers
    def _require(self, session_id: str) -> None:
        if self.db.sessions.find_one({"_id": session_id}, {"_id": 1}) is None:
            raise NoSuchSession(f"no session {session_id!r} in database {self.db.name}")

    def _latest_metrics(self, session_ids: list[str]) -> dict[str, dict[str, float | int | None]]:
        """Each session's rounds aggregated, and the latest one's accuracy, loss and federated
        accuracy (one query)."""
        if not session_ids:
            return {}
        pipeline: list[dict[str, Any]] = [
            {"$match": {"session": {"$in": session_ids}, "status": AGGREGATED}},
            {"$sort": {"round": ASCENDING}},
            {
                "$group": {
                    "_id": "$session",
                    "aggregations": {"$sum": 1},
                    "accuracy": {"$last": "$metrics.accuracy"},
                    "loss": {"$last": "$metrics.loss"},
                    "federated_accuracy": {"$last": "$metrics.federated_accuracy"},
                }
            },
        ]
        return {
            g["_id"]: {
                "aggregations": int(g["aggregations"]),
                "accuracy": _number(g["accuracy"]),
                "loss": _number(g["loss"]),
                "federated_accuracy": _number(g["federated_accuracy"]),
            }
            for g in self.db.rounds.aggregate(pipeline)
        }


# --------------------------------------------------------------------------- pipelines
_SESSION_FIELDS = {
    "phase": 1,
    "round": 1,
    "created_at": 1,
    "start_time": 1,
    "completion_time": 1,
    "counters": 1,
    "scenario.server_config.max_rounds": 1,
    "scenario.server_config.target_accuracy": 1,
    "cost": 1,
}


def _failed(field: str = "$status") -> dict[str, Any]:
    """1 for a settled attempt that did not succeed, else 0 (a MongoDB expression)."""
    return {"$cond": [{"$and": [{"$ne": [field, SUCCESS]}, {"$ne": [field, SUBMITTED]}]}, 1, 0]}


_RETRY = {"$cond": [{"$gt": ["$attempt", 1]}, 1, 0]}
# Where an activation's work ran, as "platform/cluster": a client reached through the invoker ran
# on its target, so its attempts count there (and the invoker's cluster is where it was invoked).
INVOKED = {"$concat": ["$platform", "/", "$cluster"]}
RAN_ON = {"$ifNull": ["$target", INVOKED]}


def _split(where: str) -> tuple[str, str]:
    platform, _, cluster = str(where).partition("/")
    return platform, cluster


def _ran_on(key: dict[str, Any]) -> dict[str, Any]:
    """A group key with ``where`` ("platform/cluster") as ``platform`` and ``cluster``."""
    out = {k: v for k, v in key.items() if k != "where"}
    if "where" in key:
        out["platform"], out["cluster"] = _split(key["where"])
    return out


def _activation_count(group: dict[str, Any]) -> dict[str, Any]:
    key = group["_id"]
    platform, cluster = _split(key["where"])
    return {
        "platform": platform,
        "cluster": cluster,
        "via": key["invoked"] if key["invoked"] != key["where"] else None,
        "status": key["status"],
        "count": int(group["count"]),
        "retries": int(group["retries"]),
    }


def _histogram(
    match: dict[str, Any],
    group: dict[str, Any],
    field: str,
    bounds: list[float],
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Count, sum and cumulative bucket counts of ``field`` per group, computed by MongoDB."""
    value = f"${field}"
    buckets = {f"le{i}": {"$sum": {"$cond": [{"$lte": [value, b]}, 1, 0]}} for i, b in enumerate(bounds)}
    return [
        {"$match": {**match, field: {"$ne": None}}},  # null would sort below every bound
        {"$group": {"_id": group, "count": {"$sum": 1}, "sum": {"$sum": value}, **buckets, **(extra or {})}},
    ]


def _histogram_of(group: dict[str, Any], bounds: tuple[float, ...], scale: float = 1.0) -> Histogram:
    return Histogram(
        labels={k: str(v) for k, v in _ran_on(group["_id"]).items()},
        count=int(group["count"]),
        total=float(group["sum"]) / scale,
        buckets=[(b, int(group[f"le{i}"])) for i, b in enumerate(bounds)],
    )


def _per_client(session_id: str) -> list[dict[str, Any]]:
    """Per client (and :data:`SERVER`): attempts, outcomes and its latest attempt."""
    return [
        {"$match": {"session": session_id}},
        {"$sort": {"submitted_at": ASCENDING}},
        {
            "$group": {
                "_id": "$client",
                "attempts": {"$sum": 1},
                "succeeded": {"$sum": {"$cond": [{"$eq": ["$status", SUCCESS]}, 1, 0]}},
                "failed": {"$sum": _failed()},
                "last_status": {"$last": "$status"},
                "last_round": {"$last": "$round"},
                "last_submitted": {"$last": "$submitted_at"},
            }
        },
    ]


def _per_platform(session_id: str) -> list[dict[str, Any]]:
    """Activations by where they ran (and were invoked) and how they ended, with retries among them."""
    return [
        {"$match": {"session": session_id}},
        {
            "$group": {
                "_id": {"where": RAN_ON, "invoked": INVOKED, "status": "$status"},
                "count": {"$sum": 1},
                "retries": {"$sum": _RETRY},
            }
        },
    ]


def _per_cluster() -> list[dict[str, Any]]:
    """Every session's activations by the cluster they ran on: counts and the latest one."""
    return [
        {"$sort": {"submitted_at": ASCENDING}},
        {
            "$group": {
                "_id": RAN_ON,
                "count": {"$sum": 1},
                "failed": {"$sum": _failed()},
                "last_status": {"$last": "$status"},
                "last_submitted": {"$last": "$submitted_at"},
            }
        },
    ]


# --------------------------------------------------------------------------- documents
def _session_summary(doc: dict[str, Any], latest: dict[str, Any]) -> dict[str, Any]:
    server_config = (doc.get("scenario") or {}).get("server_config") or {}
    counters = doc.get("counters") or {}
    return {
        "name": doc["_id"],
        "phase": doc.get("phase"),
        "creationTimestamp": iso(doc.get("created_at")),
        "startTime": iso(doc.get("start_time")),
        "completionTime": iso(doc.get("completion_time")),
        "currentRound": int(doc.get("round", 0)),
        "maxRounds": server_config.get("max_rounds"),
        "aggregations": latest.get("aggregations", 0),
        "accuracy": latest.get("accuracy"),
        "loss": latest.get("loss"),
        "federatedAccuracy": latest.get("federated_accuracy"),
        "active": int(counters.get("active", 0)),
        "succeeded": int(counters.get("succeeded", 0)),
        "failed": int(counters.get("failed", 0)),
        "cost": redact_value(_jsonable(doc["cost"])) if doc.get("cost") is not None else None,
    }


def _conditions(stored: list[dict[str, Any]], last_activity: datetime | None) -> list[dict[str, Any]]:
    """Sedna's conditions. ``lastProbeTime`` is when the condition was last seen to hold: for the
    latest one the keeper's latest activity, for earlier ones when the next replaced them."""
    out = []
    for i, c in enumerate(stored):
        changed = c.get("lastTransitionTime")
        if i + 1 < len(stored):
            probed = stored[i + 1].get("lastTransitionTime")
        else:
            probed = max((t for t in (changed, last_activity) if t is not None), default=None)
        out.append(
            {
                "type": c.get("type"),
                "status": c.get("status", "True"),
                "lastProbeTime": iso(probed),
                "lastTransitionTime": iso(changed),
                "reason": c.get("reason", ""),
                "message": redact(str(c.get("message", ""))),
            }
        )
    return out


def _membership(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """Which clients take part (``fedkeeper clients``); null for a session that never started rounds."""
    if stored is None:
        return None
    m = Membership.from_doc(stored)
    w = m.window
    return {
        "active": list(m.active),
        "requested": list(m.requested),
        "setAside": list(m.set_aside),
        "left": list(m.left),
        "changes": m.events,
        "validating": None
        if w is None
        else {
            "change": w.change,
            "fromRound": w.round,
            "rounds": w.rounds,
            "joined": list(w.joined),
            "left": list(w.left),
            "costBefore": w.cost_before,
            "costAfter": w.cost_after,
        },
    }


def _node_state(seen: dict[str, Any] | None) -> str:
    """A node's state from its latest attempt, in Sedna's words."""
    if seen is None:
        return "Pending"
    status = seen["last_status"]
    if status == SUBMITTED:
        return "Running"
    return "Succeeded" if status == SUCCESS else "Failed"


def _node(placement: dict[str, Any], size: int | None, seen: dict[str, Any] | None) -> dict[str, Any]:
    client = int(placement["client"])
    return {
        "name": f"client-{client}",
        "client": client,
        "platform": placement.get("platform"),
        "cluster": placement.get("cluster"),
        "sampleSize": size,
        "state": _node_state(seen),
        "attempts": int(seen["attempts"]) if seen else 0,
        "succeeded": int(seen["succeeded"]) if seen else 0,
        "failed": int(seen["failed"]) if seen else 0,
        "lastRound": seen["last_round"] if seen else None,
        "lastActivityTime": iso(seen["last_submitted"]) if seen else None,
    }


def _round(doc: dict[str, Any]) -> dict[str, Any]:
    metrics = doc.get("metrics") or {}
    return {
        "round": int(doc["round"]),
        "status": doc.get("status"),
        "selected": [int(c) for c in doc.get("selected") or []],
        "included": [int(c) for c in doc.get("included") or []] if "included" in doc else None,
        "startedAt": iso(doc.get("started_at")),
        "closedAt": iso(doc.get("closed_at")),
        "aggregatedAt": iso(doc.get("aggregated_at")),
        "accuracy": _number(metrics.get("accuracy")),
        "loss": _number(metrics.get("loss")),
        "trainAccuracy": _number(metrics.get("train_accuracy")),
        "trainLoss": _number(metrics.get("train_loss")),
        "updates": len(metrics.get("accepted") or []) if metrics else None,
        "rejected": len(metrics.get("rejected") or {}) if metrics else None,
        "retries": metrics.get("retries"),
        "failedClients": metrics.get("failed_clients"),
        "durationSeconds": _number(metrics.get("duration_s")),
        "federatedAccuracy": _number(metrics.get("federated_accuracy")),
        "federatedLoss": _number(metrics.get("federated_loss")),
        "evaluatedClients": metrics.get("evaluated_clients"),
        "failedEvaluations": metrics.get("failed_evaluations"),
        "cost": _number(metrics.get("cost")),
        "cumulativeCost": _number(metrics.get("cumulative_cost")),
        "bytes": {str(k): int(v) for k, v in metrics["bytes"].items()} if metrics.get("bytes") else None,
    }


def _activation(doc: dict[str, Any]) -> dict[str, Any]:
    client = doc.get("client")
    error = doc.get("error")
    return {
        "round": doc.get("round"),
        "function": doc.get("function"),
        "task": doc.get("task", "fit"),
        "client": None if client is None or client < 0 else client,
        "attempt": doc.get("attempt"),
        "platform": doc.get("platform"),
        "cluster": doc.get("cluster"),
        "activationId": doc.get("activation_id"),
        "target": doc.get("target"),
        "targetActivationId": doc.get("target_activation_id"),
        "status": doc.get("status"),
        "error": redact(str(error))[:ERROR_CHARS] if error else None,
        "submittedAt": iso(doc.get("submitted_at")),
        "startMs": doc.get("start_ms"),
        "endMs": doc.get("end_ms"),
        "durationMs": doc.get("duration_ms"),
    }


def _capabilities(caps: Capabilities) -> dict[str, Any]:
    return {k: v for k, v in asdict(caps).items() if isinstance(v, bool | int | float | str)}


def _jsonable(value: Any) -> Any:
    """Store values (datetimes, ObjectIds, bytes) as JSON ones."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str | int | float | bool) or value is None:
        return _number(value) if isinstance(value, float) else value
    return str(value)


def _strategy_name(strategy: Any) -> str | None:
    """``server_config.strategy`` is a name, or ``{name, <parameter>: ...}`` when it has parameters."""
    return strategy.get("name") if isinstance(strategy, dict) else strategy
