"""``fedkeeper serve``'s JSON API over a recorded session: Sedna's status shape, paging, the token."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import requests
from openapi_spec_validator import validate

from fedkeeper.function.config import parse_config
from fedkeeper.function.store.db import Store
from fedkeeper.host.hosts.registry import COLLECTION as HOSTS
from fedkeeper.host.serve.process import ServeProcess

from .conftest import SIZES, TOKEN, Served, assert_matches, record_session, serve_config, write_config

SESSION_PATH = "/api/v1/sessions/{session}"


def test_the_openapi_description_is_valid_and_served(served: Served, description: dict[str, Any]) -> None:
    validate(description)
    answer = served.get("/api/v1/openapi.json")
    assert answer.status_code == 200 and answer.json() == description
    assert set(served.get("/api/v1").json()["paths"]) == set(description["paths"])


def test_a_sessions_status_has_sednas_shape_with_rounds_aggregations_and_nodes_sample_sizes(
    served: Served, description: dict[str, Any]
) -> None:
    answer = served.get(f"/api/v1/sessions/{served.session}")
    assert answer.status_code == 200
    doc = answer.json()
    assert_matches(description, SESSION_PATH, "get", 200, doc)
    status = doc["status"]
    assert (doc["kind"], doc["metadata"]["name"], status["phase"]) == (
        "FederatedLearningSession",
        served.session,
        "Running",
    )
    # Sedna's counters: activations still running, succeeded and failed (one timed out)
    assert (status["active"], status["succeeded"], status["failed"]) == (1, 7, 1)
    assert (status["currentRound"], status["aggregations"], status["accuracy"]) == (1, 1, 0.5)
    assert status["federatedAccuracy"] == 0.48
    assert status["startTime"] and status["completionTime"] is None and status["retries"] == 1
    (condition,) = status["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Running",
        "True",
        "RoundsStarted",
    )
    assert condition["lastProbeTime"] >= condition["lastTransitionTime"]
    assert condition["lastProbeTime"] == status["lastActivityTime"]
    nodes = {n["name"]: n for n in status["nodes"]}
    assert [nodes[f"client-{c}"]["sampleSize"] for c in range(4)] == SIZES
    assert [nodes[f"client-{c}"]["state"] for c in range(4)] == [
        "Running",
        "Succeeded",
        "Succeeded",
        "Succeeded",
    ]
    assert (nodes["client-3"]["platform"], nodes["client-3"]["attempts"], nodes["client-3"]["failed"]) == (
        "google",
        2,
        1,
    )
    gcf = [c for c in status["activations"] if c["platform"] == "google"]
    assert {(c["status"], c["count"], c["via"]) for c in gcf} == {
        ("success", 1, "openwhisk/local"),
        ("timed out", 1, "openwhisk/local"),
    }
    assert status["cost"] is None  # this fixture's session was never priced by a keeper


def test_status_json_prints_the_same_document_as_the_api(served: Served) -> None:
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedkeeper",
            "status",
            served.session,
            "--json",
            "-c",
            str(served.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout) == served.get(f"/api/v1/sessions/{served.session}").json()


def test_sessions_and_rounds_list_what_the_store_holds(served: Served, description: dict[str, Any]) -> None:
    sessions = served.get("/api/v1/sessions").json()
    assert_matches(description, "/api/v1/sessions", "get", 200, sessions)
    assert [(s["name"], s["aggregations"], s["accuracy"]) for s in sessions] == [(served.session, 1, 0.5)]
    rounds = served.get(f"/api/v1/sessions/{served.session}/rounds").json()
    assert_matches(description, SESSION_PATH + "/rounds", "get", 200, rounds)
    assert [(r["round"], r["status"], r["accuracy"], r["retries"]) for r in rounds] == [
        (0, "aggregated", 0.5, 1),
        (1, "open", None, None),
    ]
    assert rounds[0]["durationSeconds"] == 12.5 and rounds[0]["updates"] == 4
    assert [
        (r["federatedAccuracy"], r["federatedLoss"], r["evaluatedClients"], r["failedEvaluations"])
        for r in rounds
    ] == [
        (0.48, 1.3, 2, 1),
        (None, None, None, None),
    ]
    assert [s["federatedAccuracy"] for s in sessions] == [0.48]
    assert (rounds[0]["cost"], rounds[0]["cumulativeCost"], rounds[0]["bytes"]["client_to_store"]) == (
        0.25,
        0.25,
        4096,
    )
    assert (rounds[1]["cost"], rounds[1]["bytes"]) == (None, None)  # not aggregated, not priced


def test_activations_come_in_pages_that_add_up_to_the_ledger_in_its_order(
    served: Served, description: dict[str, Any]
) -> None:
    path = f"/api/v1/sessions/{served.session}/activations"
    seen: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = served.get(path, params={"limit": 4, "offset": offset}).json()
        assert_matches(description, SESSION_PATH + "/activations", "get", 200, page)
        assert len(page["items"]) <= 4
        seen += page["items"]
        offset = page["nextOffset"]
    assert (
        len(seen) == page["total"] == served.store.db.activations.count_documents({"session": served.session})
    )
    assert [(a["round"], a["submittedAt"]) for a in seen] == sorted(
        (a["round"], a["submittedAt"]) for a in seen
    )
    timed_out = served.get(path, params={"status": "timed out"}).json()
    assert [(a["client"], a["attempt"], a["target"]) for a in timed_out["items"]] == [(3, 1, "google/gcf")]
    assert served.get(path, params={"round": 1, "function": "fl_client"}).json()["total"] == 2


def test_bad_paging_is_a_400_naming_the_value_and_a_missing_session_a_404(served: Served) -> None:
    path = f"/api/v1/sessions/{served.session}/activations"
    assert served.get(path, params={"limit": 0}).json() == {"error": "limit must be 1..500 (got 0)"}
    answer = served.get(path, params={"offset": "x"})
    assert answer.status_code == 400 and answer.json()["error"] == "offset: expected a whole number (got 'x')"
    missing = served.get("/api/v1/sessions/s-nope")
    assert missing.status_code == 404 and "no session 's-nope'" in missing.json()["error"]
    assert served.get("/api/v1/sessions/s-nope/rounds").status_code == 404


def test_hosts_list_the_registry_when_there_is_one_with_credentials_masked(
    served: Served, description: dict[str, Any]
) -> None:
    assert served.get("/api/v1/hosts").json() == []  # no registry kept: an empty list
    served.store.db[HOSTS].insert_one({"_id": "edge-1", "status": "up", "password": "hunter2-hunter2"})
    try:
        hosts = served.get("/api/v1/hosts").json()
    finally:
        served.store.db[HOSTS].drop()
    assert_matches(description, "/api/v1/hosts", "get", 200, hosts)
    assert hosts == [{"_id": "edge-1", "status": "up", "password": "***"}]


def test_clusters_show_platform_clients_and_activity_and_never_a_setting(
    served: Served, description: dict[str, Any]
) -> None:
    answer = served.get("/api/v1/clusters")
    clusters = {c["name"]: c for c in answer.json()}
    assert_matches(description, "/api/v1/clusters", "get", 200, answer.json())
    assert (clusters["local"]["clients"], clusters["local"]["runsManagingFunctions"]) == (3, True)
    assert (clusters["gcf"]["clients"], clusters["gcf"]["activations"], clusters["gcf"]["failed"]) == (
        1,
        2,
        1,
    )
    assert clusters["gcf"]["capabilities"]["async_invoke"] is False
    assert "private_key" not in answer.text and "23bc46b1" not in answer.text


def test_removing_a_session_needs_the_token_and_a_running_one_needs_force(
    served: Served, description: dict[str, Any]
) -> None:
    config = parse_config(serve_config("mongodb://unused", "unused"))
    record_session(served.store, config, "s-doomed")
    path = f"{served.url}/api/v1/sessions/s-doomed"
    assert requests.delete(path, timeout=30).status_code == 401
    wrong = requests.delete(path, headers={"Authorization": f"Bearer {TOKEN[:-1]}x"}, timeout=30)
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    busy = requests.delete(path, headers=auth, timeout=30)
    assert busy.status_code == 409 and "Running" in busy.json()["error"]
    assert served.get("/api/v1/sessions/s-doomed").status_code == 200  # nothing removed so far
    removed = requests.delete(path, headers=auth, params={"force": "true"}, timeout=30)
    assert removed.status_code == 200
    assert_matches(description, SESSION_PATH, "delete", 200, removed.json())
    assert removed.json() == {
        "rounds": 2,
        "weights": 0,
        "updates": 0,
        "evaluations": 0,
        "partitions": 4,
        "activations": 9,
        "sessions": 1,
    }
    assert served.get("/api/v1/sessions/s-doomed").status_code == 404
    assert served.get(f"/api/v1/sessions/{served.session}").status_code == 200  # the other one stays
    assert TOKEN not in served.server.logs()


def test_a_server_without_a_token_changes_nothing(mongo_url: str, tmp_path: Path) -> None:
    database = f"fk_serve_{uuid.uuid4().hex[:8]}"
    path = write_config(tmp_path / "config.yaml", serve_config(mongo_url, database))
    store = Store(mongo_url, database)
    record_session(store, parse_config(serve_config(mongo_url, database)), "s-kept")
    try:
        with ServeProcess(path) as server:
            answer = requests.delete(
                f"{server.url}/api/v1/sessions/s-kept",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
            assert answer.status_code == 403 and "FEDKEEPER_API_TOKEN" in answer.json()["error"]
            assert requests.get(f"{server.url}/api/v1/sessions/s-kept", timeout=30).status_code == 200
    finally:
        store.db.client.drop_database(database)
