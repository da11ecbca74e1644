"""Invocations and activation records: statuses, shapes, logs, parameters, listing."""

from __future__ import annotations

import re
import time

from fedkeeper.function.config import GUEST_AUTH

from .conftest import FabricClient, annotation
from .snippets import APP_ERROR, BAD_SYNTAX, ECHO, EXITS, NOT_A_DICT, RAISES, SLEEP

ACTIVATION_ID = re.compile(r"^[0-9a-f]{32}$")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (stdout|stderr): ")


def test_non_blocking_invoke_answers_202_and_the_record_appears_later(
    fabric: FabricClient, name: str
) -> None:
    fabric.deploy(name, SLEEP)
    response = fabric.invoke(name, {"seconds": 0.6})
    assert response.status_code == 202
    activation_id = response.json()["activationId"]
    assert ACTIVATION_ID.match(activation_id)
    assert response.headers["x-openwhisk-activation-id"] == activation_id
    early = fabric.activation(activation_id)
    assert early.status_code == 404
    assert early.json()["error"] == "The requested resource does not exist."
    record = fabric.wait_record(activation_id)
    assert record["response"]["result"]["slept"] == 0.6


def test_blocking_success_record_has_openwhisk_shape(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO, parameters={"bound": "b"})
    response = fabric.invoke(name, {"x": 1}, blocking=True)
    assert response.status_code == 200
    record = response.json()
    assert response.headers["x-openwhisk-activation-id"] == record["activationId"]
    assert {
        "namespace",
        "name",
        "version",
        "subject",
        "activationId",
        "start",
        "end",
        "duration",
        "statusCode",
        "response",
        "logs",
        "annotations",
        "publish",
    } <= record.keys()
    assert (record["namespace"], record["name"], record["version"], record["subject"]) == (
        "guest",
        name,
        "0.0.1",
        "guest",
    )
    assert record["response"]["status"] == "success"
    assert record["response"]["statusCode"] == 0 and record["response"]["success"] is True
    assert record["statusCode"] == 0
    assert record["duration"] == record["end"] - record["start"] >= 0
    assert annotation(record, "path") == f"guest/{name}"
    assert annotation(record, "kind") == "python:3"
    assert annotation(record, "timeout") is False
    assert annotation(record, "limits") == {"concurrency": 1, "logs": 10, "memory": 256, "timeout": 60000}
    assert isinstance(annotation(record, "waitTime"), int)
    result = record["response"]["result"]
    assert result["params"] == {"bound": "b", "x": 1}
    assert result["activation_id"] == record["activationId"]
    assert result["action_name"] == f"/guest/{name}"
    assert result["namespace"] == "guest"
    assert int(result["deadline"]) > record["start"]
    assert result["api_host"] == fabric.url
    assert result["api_key"] is None  # only with the provide-api-key annotation
    assert len(record["logs"]) == 2 and all(LOG_LINE.match(line) for line in record["logs"])
    assert record["logs"][0].endswith("stdout: echo stdout ['bound', 'x']")
    assert record["logs"][1].endswith("stderr: echo stderr")


def test_result_true_returns_only_the_result(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO)
    response = fabric.invoke(name, {"y": 2}, blocking=True, result=True)
    assert response.status_code == 200
    assert response.json()["params"] == {"y": 2}


def test_activation_result_and_logs_subresources(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO)
    record = fabric.run(name)
    base = fabric.ns(f"activations/{record['activationId']}")
    result = fabric.session.get(base + "/result", timeout=5).json()
    assert result["status"] == "success" and result["success"] is True
    assert result["result"] == record["response"]["result"]
    logs = fabric.session.get(base + "/logs", timeout=5).json()
    assert logs == {"logs": record["logs"]}
    assert fabric.session.get(fabric.ns("activations/not-an-id"), timeout=5).status_code == 400


def test_invocation_params_override_bound_ones_unless_final(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO, parameters={"db": "bound", "other": 1})
    assert fabric.run(name, {"db": "caller"})["response"]["result"]["params"]["db"] == "caller"
    fabric.deploy(name, ECHO, parameters={"db": "bound"}, annotations={"final": True})
    assert fabric.run(name, {"db": "caller"})["response"]["result"]["params"]["db"] == "bound"


def test_api_key_is_given_only_with_provide_api_key(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO, annotations={"provide-api-key": True})
    assert fabric.run(name)["response"]["result"]["api_key"] == GUEST_AUTH


def test_error_result_is_application_error_with_502(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, APP_ERROR)
    response = fabric.invoke(name, {"message": "no"}, blocking=True)
    assert response.status_code == 502
    record = response.json()
    assert record["response"] == {
        "status": "application error",
        "statusCode": 1,
        "success": False,
        "result": {"error": "no"},
    }
    assert record["statusCode"] == 1
    only_result = fabric.invoke(name, {"message": "no"}, blocking=True, result=True)
    assert only_result.status_code == 502 and only_result.json() == {"error": "no"}


def test_exception_in_main_is_an_application_error_with_traceback_in_logs(
    fabric: FabricClient, name: str
) -> None:
    fabric.deploy(name, RAISES)
    record = fabric.run(name)
    assert record["response"]["status"] == "application error"
    assert record["response"]["result"] == {"error": "boom"}
    assert any("ValueError: boom" in line for line in record["logs"])


def test_non_dictionary_result_is_a_developer_error(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, NOT_A_DICT)
    response = fabric.invoke(name, blocking=True)
    assert response.status_code == 502
    record = response.json()
    assert record["response"]["status"] == "action developer error"
    assert record["response"]["statusCode"] == 2
    assert record["response"]["result"] == {"error": "The action did not return a dictionary."}


def test_worker_that_exits_mid_run_is_a_developer_error(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, EXITS)
    record = fabric.run(name)
    assert record["response"]["status"] == "action developer error"
    assert record["response"]["result"] == {
        "error": "The action did not produce a valid response and exited unexpectedly."
    }
    assert any("about to die" in line for line in record["logs"])
    # The dead worker is gone: the next activation starts a new one.
    assert annotation(fabric.run(name), "initTime") is not None


def test_init_failure_is_a_developer_error(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, BAD_SYNTAX)
    record = fabric.run(name)
    assert record["response"]["status"] == "action developer error"
    assert "SyntaxError" in record["response"]["result"]["error"]
    assert annotation(record, "initTime") is not None


def test_malformed_invocation_bodies_are_400(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO)
    url = fabric.ns(f"actions/{name}")
    for body in (b"[1, 2]", b"{nope"):
        response = fabric.session.post(
            url, data=body, headers={"Content-Type": "application/json"}, timeout=5
        )
        assert response.status_code == 400
        assert response.json()["error"].startswith("The request content was malformed:")


def test_activation_list_filters_pages_and_docs(fabric: FabricClient, name: str) -> None:
    other = name + "-other"
    fabric.deploy(name, ECHO)
    fabric.deploy(other, ECHO)
    before = int(time.time() * 1000)
    ids = [fabric.run(name, {"i": i})["activationId"] for i in range(5)]
    fabric.run(other)
    listed = fabric.session.get(
        fabric.ns("activations"), params={"name": name, "docs": "true"}, timeout=5
    ).json()
    assert [r["activationId"] for r in listed] == list(reversed(ids))  # newest first
    assert all("response" in r and "logs" in r for r in listed)
    summary = fabric.session.get(fabric.ns("activations"), params={"name": name}, timeout=5).json()
    assert all("response" not in r and "logs" not in r and "statusCode" in r for r in summary)

    page = fabric.session.get(
        fabric.ns("activations"), params={"name": name, "limit": 2, "skip": 2}, timeout=5
    )
    assert [r["activationId"] for r in page.json()] == list(reversed(ids))[2:4]

    records = {r["activationId"]: r for r in listed}
    third = records[ids[2]]["start"]
    since = fabric.session.get(
        fabric.ns("activations"), params={"name": name, "since": third}, timeout=5
    ).json()
    assert {r["activationId"] for r in since} >= set(ids[2:])
    assert all(r["start"] >= third for r in since)
    upto = fabric.session.get(
        fabric.ns("activations"), params={"name": name, "upto": third}, timeout=5
    ).json()
    assert all(r["start"] <= third for r in upto) and ids[0] in {r["activationId"] for r in upto}
    everything = fabric.session.get(fabric.ns("activations"), params={"since": before, "limit": 0}, timeout=5)
    assert {r["name"] for r in everything.json()} >= {name, other}
    count = fabric.session.get(fabric.ns("activations"), params={"name": name, "count": "true"}, timeout=5)
    assert count.json() == {"activations": 5}
    assert fabric.session.get(fabric.ns("activations"), params={"limit": 500}, timeout=5).status_code == 400
    assert (
        fabric.session.get(fabric.ns("activations"), params={"since": "soon"}, timeout=5).status_code == 400
    )
