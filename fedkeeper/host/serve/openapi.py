"""The OpenAPI 3.1 description of ``fedkeeper serve``'s API, served at ``/api/v1/openapi.json``.

The tests validate the description itself and every response the server gives against it.
"""

from __future__ import annotations

from typing import Any

from fedkeeper.function.store.statuses import Phase, Reconfiguration, RoundStatus, Task
from fedkeeper.host.serve.documents import API_VERSION, KIND, MAX_PAGE_SIZE, PAGE_SIZE
from fedkeeper.host.serve.sources import QUERIES


def _nullable(kind: str, **more: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **more}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or list(properties)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


TIME = _nullable("string", format="date-time")
PHASE = {"type": "string", "enum": [p.value for p in Phase]}
COUNT = {"type": "integer", "minimum": 0}
NUMBER = _nullable("number")
CLIENTS = {"type": "array", "items": COUNT}
COST = {"description": "Absent (null) until costs are recorded; as the store holds it otherwise."}

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string"}}),
    "Condition": _object(
        {
            "type": {"type": "string", "enum": [p.value for p in Phase] + [r.value for r in Reconfiguration]},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "lastProbeTime": TIME,
            "lastTransitionTime": TIME,
            "reason": {"type": "string"},
            "message": {"type": "string"},
        }
    ),
    "Node": _object(
        {
            "name": {"type": "string"},
            "client": COUNT,
            "platform": {"type": "string"},
            "cluster": {"type": "string"},
            "sampleSize": _nullable("integer", minimum=0, description="the client's partition size"),
            "state": {"type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed"]},
            "attempts": COUNT,
            "succeeded": COUNT,
            "failed": COUNT,
            "lastRound": _nullable("integer"),
            "lastActivityTime": TIME,
        }
    ),
    "ActivationCount": _object(
        {
            "platform": {"type": "string", "description": "where the work ran (a client's own platform)"},
            "cluster": {"type": "string"},
            "via": _nullable("string", description="platform/cluster of the invoker that called the client"),
            "status": {"type": "string"},
            "count": COUNT,
            "retries": COUNT,
        }
    ),
    "SessionSummary": _object(
        {
            "name": {"type": "string"},
            "phase": {"type": "string"},
            "creationTimestamp": TIME,
            "startTime": TIME,
            "completionTime": TIME,
            "currentRound": COUNT,
            "maxRounds": _nullable("integer"),
            "aggregations": COUNT,
            "accuracy": NUMBER,
            "loss": NUMBER,
            "federatedAccuracy": _nullable(
                "number", description="the latest aggregated round's; null until it is evaluated"
            ),
            "active": {"type": "integer"},
            "succeeded": COUNT,
            "failed": COUNT,
            "cost": COST,
        }
    ),
    "SessionStatus": _object(
        {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": KIND},
            "metadata": _object({"name": {"type": "string"}, "creationTimestamp": TIME}),
            "spec": _object(
                {
                    "maxRounds": _nullable("integer"),
                    "targetAccuracy": NUMBER,
                    "clientsPerRound": _nullable("integer"),
                    "strategy": _nullable("string"),
                    "mode": {"enum": ["sync", "async", "semi_async"]},
                    "serverCluster": _nullable("string"),
                    "dataset": _nullable("string"),
                    "model": _nullable("string"),
                    "totalClients": COUNT,
                }
            ),
            "status": _object(
                {
                    "phase": PHASE,
                    "conditions": {"type": "array", "items": _ref("Condition")},
                    "startTime": TIME,
                    "completionTime": TIME,
                    "active": {"type": "integer", "description": "activations still running"},
                    "succeeded": COUNT,
                    "failed": COUNT,
                    "currentRound": {**COUNT, "description": "the round being run (rounds done so far)"},
                    "aggregations": {**COUNT, "description": "rounds aggregated"},
                    "accuracy": NUMBER,
                    "loss": NUMBER,
                    "federatedAccuracy": _nullable(
                        "number", description="the latest aggregated round's; null until it is evaluated"
                    ),
                    "retries": COUNT,
                    "lastActivityTime": TIME,
                    "nodes": {"type": "array", "items": _ref("Node")},
                    "activations": {"type": "array", "items": _ref("ActivationCount")},
                    "cost": COST,
                    "membership": {
                        **_object(
                            {
                                "active": CLIENTS,
                                "requested": {**CLIENTS, "description": "what `fedkeeper clients` asked for"},
                                "setAside": {**CLIENTS, "description": "joined clients a revert took out"},
                                "left": CLIENTS,
                                "changes": COUNT,
                                "validating": {
                                    **_object(
                                        {
                                            "change": COUNT,
                                            "fromRound": COUNT,
                                            "rounds": COUNT,
                                            "joined": CLIENTS,
                                            "left": CLIENTS,
                                            "costBefore": {"type": "number"},
                                            "costAfter": {"type": "number"},
                                        }
                                    ),
                                    "type": ["object", "null"],
                                    "description": "the change being validated; expected costs are per round",
                                },
                            }
                        ),
                        "type": ["object", "null"],
                        "description": "null until the session's first round",
                    },
                }
            ),
        }
    ),
    "Round": _object(
        {
            "round": COUNT,
            "status": {"type": "string", "enum": [s.value for s in RoundStatus]},
            "selected": {"type": "array", "items": COUNT},
            "included": _nullable("array", items=COUNT),
            "startedAt": TIME,
            "closedAt": TIME,
            "aggregatedAt": TIME,
            "accuracy": NUMBER,
            "loss": NUMBER,
            "trainAccuracy": NUMBER,
            "trainLoss": NUMBER,
            "updates": _nullable("integer", minimum=0),
            "rejected": _nullable("integer", minimum=0),
            "retries": _nullable("integer", minimum=0),
            "failedClients": _nullable("integer", minimum=0),
            "durationSeconds": NUMBER,
            "federatedAccuracy": _nullable(
                "number", description="federated evaluation: example-weighted mean of the clients' accuracy"
            ),
            "federatedLoss": _nullable(
                "number", description="federated evaluation: Flower's weighted_loss_avg"
            ),
            "evaluatedClients": _nullable("integer", minimum=0),
            "failedEvaluations": _nullable("integer", minimum=0),
            "cost": NUMBER,
            "cumulativeCost": NUMBER,
            "bytes": {
                "type": ["object", "null"],
                "description": "bytes moved per link (client_to_store, ...); null until the round is priced",
                "additionalProperties": {"type": "integer", "minimum": 0},
            },
        }
    ),
    "Activation": _object(
        {
            "round": COUNT,
            "function": {"type": "string"},
            "task": {"type": "string", "enum": [t.value for t in Task]},
            "client": _nullable("integer", minimum=0, description="null for the managing functions"),
            "attempt": {"type": "integer", "minimum": 1},
            "platform": {"type": "string"},
            "cluster": {"type": "string"},
            "activationId": _nullable("string"),
            "target": _nullable("string"),
            "targetActivationId": _nullable("string"),
            "status": {"type": "string"},
            "error": _nullable("string"),
            "submittedAt": TIME,
            "startMs": _nullable("integer"),
            "endMs": _nullable("integer"),
            "durationMs": _nullable("integer"),
        }
    ),
    "ActivationPage": _object(
        {
            "items": {"type": "array", "items": _ref("Activation")},
            "total": COUNT,
            "offset": COUNT,
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
            "nextOffset": _nullable("integer", minimum=0),
        }
    ),
    "Host": {
        "type": "object",
        "description": "A host registry entry, as the registry keeps it (credentials masked)",
        "properties": {"_id": {"type": "string"}},
        "required": ["_id"],
    },
    "PrometheusReading": _object(
        {
            "source": {"type": "string", "enum": sorted(QUERIES)},
            "url": {"type": "string"},
            "up": {"type": "boolean"},
            "error": _nullable("string"),
            "values": {
                "type": "object",
                "description": "query name -> series label (instance, action, or '') -> value",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        }
    ),
    "Cluster": _object(
        {
            "platform": {"type": "string"},
            "title": {"type": "string"},
            "name": {"type": "string"},
            "capabilities": {"type": "object"},
            "clients": COUNT,
            "runsManagingFunctions": {"type": "boolean"},
            "activations": COUNT,
            "failed": COUNT,
            "lastActivityTime": TIME,
            "lastStatus": _nullable("string"),
            "prometheus": {"type": "array", "items": _ref("PrometheusReading")},
        }
    ),
    "Removed": {
        "type": "object",
        "description": "documents removed, by collection",
        "additionalProperties": COUNT,
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERROR_404 = _json(_ref("Error"), "no such session")
ERROR_503 = _json(_ref("Error"), "the store does not answer")
SESSION = {"name": "session", "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def document() -> dict[str, Any]:
    """The OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fedkeeper serve",
            "version": API_VERSION,
            "description": (
                "Sessions, rounds, activations, hosts and clusters of a fedkeeper store. Reading needs "
                "no token; a request that changes state needs `Authorization: Bearer TOKEN` "
                "(FEDKEEPER_API_TOKEN or serve.token), and none is accepted while no token is set."
            ),
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/api/v1/sessions": {
                "get": {
                    "summary": "The newest sessions",
                    "operationId": "listSessions",
                    "parameters": [
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "how many (20)")
                    ],
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("SessionSummary")}, "newest first"),
                        "503": ERROR_503,
                    },
                }
            },
            "/api/v1/sessions/{session}": {
                "parameters": [SESSION],
                "get": {
                    "summary": "One session's status (Sedna's federated-learning job status, with nodes)",
                    "operationId": "getSession",
                    "responses": {
                        "200": _json(_ref("SessionStatus"), "the status document"),
                        "404": ERROR_404,
                        "503": ERROR_503,
                    },
                },
                "delete": {
                    "summary": "Remove a session and everything it stored",
                    "operationId": "removeSession",
                    "security": [{"token": []}],
                    "parameters": [
                        _query("force", {"type": "boolean"}, "remove a Pending or Running session too")
                    ],
                    "responses": {
                        "200": _json(_ref("Removed"), "removed"),
                        "401": _json(_ref("Error"), "no or a wrong token"),
                        "403": _json(_ref("Error"), "the server has no token: it changes nothing"),
                        "404": ERROR_404,
                        "409": _json(_ref("Error"), "Pending or Running, and force not given"),
                        "503": ERROR_503,
                    },
                },
            },
            "/api/v1/sessions/{session}/rounds": {
                "parameters": [SESSION],
                "get": {
                    "summary": "The session's rounds, oldest first",
                    "operationId": "listRounds",
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("Round")}, "rounds"),
                        "404": ERROR_404,
                        "503": ERROR_503,
                    },
                },
            },
            "/api/v1/sessions/{session}/activations": {
                "parameters": [SESSION],
                "get": {
                    "summary": "The session's activations, a page at a time, in the ledger's order",
                    "operationId": "listActivations",
                    "parameters": [
                        _query("offset", {"type": "integer", "minimum": 0}, "skip this many (0)"),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                            f"page size ({PAGE_SIZE})",
                        ),
                        _query("round", {"type": "integer", "minimum": 0}, "only this round"),
                        _query("status", {"type": "string"}, "only this status (success, timed out, ...)"),
                        _query("platform", {"type": "string"}, "only activations that ran on this platform"),
                        _query("function", {"type": "string"}, "only this function"),
                    ],
                    "responses": {
                        "200": _json(_ref("ActivationPage"), "one page"),
                        "400": _json(_ref("Error"), "a bad paging or filter value"),
                        "404": ERROR_404,
                        "503": ERROR_503,
                    },
                },
            },
            "/api/v1/hosts": {
                "get": {
                    "summary": "The hosts registry (empty when none is kept)",
                    "operationId": "listHosts",
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("Host")}, "the registered hosts"),
                        "503": ERROR_503,
                    },
                }
            },
            "/api/v1/clusters": {
                "get": {
                    "summary": "The configured clusters, their activity and their Prometheus servers",
                    "operationId": "listClusters",
                    "responses": {
                        "200": _json({"type": "array", "items": _ref("Cluster")}, "clusters"),
                        "503": ERROR_503,
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This description",
                    "operationId": "getOpenApi",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format 0.0.4)",
                    "operationId": "getMetrics",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
