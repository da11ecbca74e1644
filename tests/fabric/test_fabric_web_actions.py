"""Web actions: web-export, require-whisk-auth, extensions, HTTP context parameters."""

from __future__ import annotations

import requests

from .conftest import FabricClient
from .snippets import ECHO

HTTP_REPLY = """
def main(params):
    return {"statusCode": 201, "headers": {"X-Made-By": "action"}, "body": {"method": params["__ow_method"]}}
"""


def web(fabric: FabricClient, name: str, ext: str = ".json") -> str:
    return f"{fabric.url}/api/v1/web/guest/default/{name}{ext}"


def test_only_web_exported_actions_answer(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO)
    response = requests.post(web(fabric, name), json={}, timeout=10)
    assert response.status_code == 404
    assert response.json()["error"] == "The requested resource does not exist."


def test_web_action_needs_no_basic_auth_and_gets_http_context(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO, annotations={"web-export": True}, parameters={"bound": 1})
    response = requests.post(web(fabric, name), params={"q": "1"}, json={"b": 2}, timeout=10)
    assert response.status_code == 200
    assert response.headers["x-openwhisk-activation-id"]
    params = response.json()["params"]
    assert params["q"] == "1" and params["b"] == 2 and params["bound"] == 1
    assert params["__ow_method"] == "post"
    assert params["__ow_path"] == ""
    assert "authorization" not in params["__ow_headers"]
    # The activation is recorded in the owner's namespace.
    record = fabric.wait_record(response.headers["x-openwhisk-activation-id"])
    assert record["subject"] == "guest"


def test_require_whisk_auth_secret_is_checked(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO, annotations={"web-export": True, "require-whisk-auth": "s3cret"})
    url = web(fabric, name)
    assert requests.post(url, json={}, timeout=10).status_code == 401
    wrong = requests.post(url, json={}, headers={"X-Require-Whisk-Auth": "guess"}, timeout=10)
    assert wrong.status_code == 401
    assert (
        wrong.json()["error"]
        == "The resource requires authentication, which was not supplied with the request"
    )
    right = requests.post(url, json={"x": 1}, headers={"X-Require-Whisk-Auth": "s3cret"}, timeout=10)
    assert right.status_code == 200 and right.json()["params"]["x"] == 1


def test_require_whisk_auth_true_asks_for_the_namespace_key(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO, annotations={"web-export": True, "require-whisk-auth": True})
    url = web(fabric, name)
    assert requests.post(url, json={}, timeout=10).status_code == 401
    assert fabric.session.post(url, json={}, timeout=10).status_code == 200


def test_http_extension_uses_status_headers_and_body(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, HTTP_REPLY, annotations={"web-export": True})
    response = requests.put(web(fabric, name, ""), timeout=10)
    assert response.status_code == 201
    assert response.headers["X-Made-By"] == "action"
    assert response.json() == {"method": "put"}


def test_reserved_parameters_are_refused(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO, annotations={"web-export": True})
    response = requests.post(web(fabric, name), json={"__ow_method": "get"}, timeout=10)
    assert response.status_code == 400
