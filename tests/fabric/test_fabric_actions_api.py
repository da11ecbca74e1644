"""The actions REST API: shapes, status codes, auth, versions, listing."""

from __future__ import annotations

import base64
import io
import re
import zipfile

import requests

from .conftest import FabricClient
from .snippets import ECHO

TXID = re.compile(r"^[0-9a-f]{32}$")


def test_requests_without_valid_basic_auth_get_401(fabric: FabricClient) -> None:
    missing = requests.get(fabric.ns("actions"), timeout=5)
    wrong = requests.get(
        fabric.ns("actions"), auth=("23bc46b1-71f6-4ed5-8c54-816aa4f8c502", "nope"), timeout=5
    )
    assert missing.status_code == wrong.status_code == 401
    assert (
        missing.json()["error"]
        == "The resource requires authentication, which was not supplied with the request"
    )
    assert wrong.json()["error"] == "The supplied authentication is invalid"
    assert TXID.match(wrong.json()["code"])
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")


def test_another_namespace_is_forbidden(fabric: FabricClient) -> None:
    response = fabric.session.get(f"{fabric.url}/api/v1/namespaces/someone/actions", timeout=5)
    assert response.status_code == 403


def test_missing_action_is_404_with_openwhisk_body(fabric: FabricClient, name: str) -> None:
    for response in (
        fabric.session.get(fabric.ns(f"actions/{name}"), timeout=5),
        fabric.session.delete(fabric.ns(f"actions/{name}"), timeout=5),
        fabric.invoke(name),
    ):
        assert response.status_code == 404
        body = response.json()
        assert body["error"] == "The requested resource does not exist."
        assert TXID.match(body["code"])
        assert response.headers["x-request-id"] == body["code"]


def test_create_returns_the_action_and_conflicts_without_overwrite(fabric: FabricClient, name: str) -> None:
    first = fabric.put_action(name, ECHO, overwrite=False, parameters={"bound": 1})
    assert first.status_code == 200
    action = first.json()
    assert action["namespace"] == "guest"
    assert action["name"] == name
    assert action["version"] == "0.0.1"
    assert action["publish"] is False
    assert action["exec"] == {"kind": "python:3", "code": ECHO, "binary": False, "main": "main"}
    assert action["parameters"] == [{"key": "bound", "value": 1}]
    assert action["limits"] == {"timeout": 60000, "memory": 256, "logs": 10, "concurrency": 1}
    assert isinstance(action["updated"], int)

    again = fabric.put_action(name, ECHO, overwrite=False)
    assert again.status_code == 409
    assert again.json()["error"] == "resource already exists"


def test_update_bumps_the_version_and_keeps_what_it_leaves_out(fabric: FabricClient, name: str) -> None:
    created = fabric.deploy(name, ECHO, parameters={"a": 1}, limits={"timeout": 5000})
    response = fabric.session.put(
        fabric.ns(f"actions/{name}"),
        params={"overwrite": "true"},
        json={"limits": {"memory": 512}},
        timeout=10,
    )
    assert response.status_code == 200
    updated = response.json()
    assert updated["version"] == "0.0.2"
    assert updated["updated"] > created["updated"]
    assert updated["exec"]["code"] == ECHO
    assert updated["parameters"] == [{"key": "a", "value": 1}]
    assert updated["limits"]["timeout"] == 5000 and updated["limits"]["memory"] == 512


def test_get_without_code_and_delete_returns_the_action(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO)
    got = fabric.session.get(fabric.ns(f"actions/{name}"), params={"code": "false"}, timeout=5).json()
    assert "code" not in got["exec"]
    deleted = fabric.session.delete(fabric.ns(f"actions/{name}"), timeout=5)
    assert deleted.status_code == 200 and deleted.json()["name"] == name
    assert fabric.session.get(fabric.ns(f"actions/{name}"), timeout=5).status_code == 404


def test_bad_bodies_are_400(fabric: FabricClient, name: str) -> None:
    url = fabric.ns(f"actions/{name}")
    cases = [
        b"not json",
        b'{"exec": {"kind": "python:3"}}',
        b'{"exec": {"kind": "nodejs:20", "code": "x"}}',
        b'{"exec": {"kind": "python:3", "code": "x"}, "limits": {"timeout": 10}}',
        b'{"exec": {"kind": "python:3", "code": "x"}, "limits": {"memory": 100000}}',
        b'{"exec": {"kind": "python:3", "code": "x"}, "parameters": {"a": 1}}',
        b'{"parameters": []}',
    ]
    for body in cases:
        response = fabric.session.put(url, data=body, headers={"Content-Type": "application/json"}, timeout=5)
        assert response.status_code == 400, body
        assert response.json()["error"].startswith("The request content was malformed:"), body
    assert fabric.put_action("bad/name", ECHO).status_code in (400, 404)
    assert fabric.session.get(url, timeout=5).status_code == 404  # nothing half-written


def test_zip_code_is_detected_as_binary_like_openwhisk(fabric: FabricClient, name: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("__main__.py", "def main(p):\n    return {'zipped': True}\n")
    code = base64.b64encode(buffer.getvalue()).decode()
    action = fabric.deploy(name, code)  # no "binary" flag, as the npm client sends it
    assert action["exec"]["binary"] is True
    assert fabric.run(name)["response"]["result"] == {"zipped": True}


def test_blackbox_actions_with_code_run_as_python(fabric: FabricClient, name: str) -> None:
    body = {"exec": {"kind": "blackbox", "image": "openwhisk/python3action", "code": ECHO}}
    response = fabric.session.put(fabric.ns(f"actions/{name}"), json=body, timeout=5)
    assert response.status_code == 200
    assert response.json()["exec"]["image"] == "openwhisk/python3action"
    assert fabric.run(name)["response"]["status"] == "success"


def test_blackbox_actions_without_code_are_whisk_errors(fabric: FabricClient, name: str) -> None:
    body = {"exec": {"kind": "blackbox", "image": "example/never-pulled"}}
    assert fabric.session.put(fabric.ns(f"actions/{name}"), json=body, timeout=5).status_code == 200
    response = fabric.invoke(name, blocking=True)
    assert response.status_code == 500
    record = response.json()
    assert record["response"]["status"] == "whisk internal error"
    assert record["response"]["result"] == {"error": "Failed to pull container image 'example/never-pulled'."}


def test_list_actions_pages_newest_first(fabric: FabricClient, name: str) -> None:
    names = [f"{name}-{i}" for i in range(3)]
    for each in names:
        fabric.deploy(each, ECHO)
    listed = fabric.session.get(fabric.ns("actions"), params={"limit": 200}, timeout=5).json()
    ours = [a["name"] for a in listed if a["name"].startswith(name)]
    assert ours == list(reversed(names))
    assert all("code" not in a["exec"] for a in listed)
    first = fabric.session.get(fabric.ns("actions"), params={"limit": 1}, timeout=5).json()
    second = fabric.session.get(fabric.ns("actions"), params={"limit": 1, "skip": 1}, timeout=5).json()
    assert len(first) == len(second) == 1 and first[0]["name"] != second[0]["name"]
    too_many = fabric.session.get(fabric.ns("actions"), params={"limit": 201}, timeout=5)
    assert too_many.status_code == 400
    assert too_many.json()["error"] == "The value '201' is not in the range of 0 to 200 for actions."


def test_unsupported_method_is_405_with_a_json_error(fabric: FabricClient, name: str) -> None:
    response = fabric.session.patch(fabric.ns(f"actions/{name}"), timeout=5)
    assert response.status_code == 405
    assert response.json()["error"] == "Method Not Allowed"
    assert "PUT" in response.headers["Allow"]
