"""Web actions: ``/api/v1/web/{namespace}/default/{name}[.json|.http|.html|.text]``.

Only actions annotated ``web-export: true`` answer; no Basic auth is needed unless the action is
annotated ``require-whisk-auth``: ``true`` asks for the namespace's own Basic auth, any other
value must equal the request header ``X-Require-Whisk-Auth``. Query and JSON body fields become
parameters, with ``__ow_method``, ``__ow_headers`` and ``__ow_path`` (a non-JSON body arrives as
``__ow_body``), as in OpenWhisk.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from fedkeeper.host.fabric.auth import AuthError, Identity
from fedkeeper.host.fabric.invoker import TooManyRequests
from fedkeeper.host.fabric.records import Activation, Status
from fedkeeper.host.fabric.responses import (
    ACTIVATION_ID_HEADER,
    error_response,
    json_response,
    not_found,
    txid,
)

if TYPE_CHECKING:
    from fedkeeper.host.fabric.controller import Controller, Handler

EXTENSIONS = ("json", "http", "html", "text", "svg")
AUTH_HEADER = "X-Require-Whisk-Auth"
NOT_AUTHORIZED = "The resource requires authentication, which was not supplied with the request"
NOT_READY = "Response not yet ready."
PROCESSING_ERROR = "There was an error processing your request."
RESERVED = "Request defines parameters that are not allowed (e.g., reserved properties)."


def split_extension(name: str) -> tuple[str, str]:
    """``hello.json`` -> (``hello``, ``json``); the default extension is ``http``."""
    stem, dot, ext = name.rpartition(".")
    if dot and ext in EXTENSIONS:
        return stem, ext
    return name, "http"


def _authorized(controller: Controller, required: Any, request: web.Request, namespace: str) -> bool:
    if required is None or required is False:
        return True
    if required is True:
        try:
            return controller.keys.authenticate(request.headers.get("Authorization")).namespace == namespace
        except AuthError:
            return False
    return request.headers.get(AUTH_HEADER) == str(required)


def _http_response(request: web.Request, result: Any, headers: dict[str, str]) -> web.Response:
    """OpenWhisk's ``.http`` reading of a result: ``statusCode``, ``headers``, ``body``."""
    if not isinstance(result, dict):
        return error_response(request, 400, "Response is not valid 'message/http'.", headers)
    out_headers = {**headers, **{str(k): str(v) for k, v in (result.get("headers") or {}).items()}}
    body = result.get("body")
    status = int(result.get("statusCode") or (200 if body is not None else 204))
    if body is None:
        return web.Response(status=status, headers=out_headers)
    if isinstance(body, dict | list):
        out_headers.setdefault("Content-Type", "application/json")
        return web.Response(status=status, body=json.dumps(body).encode("utf-8"), headers=out_headers)
    out_headers.setdefault("Content-Type", "text/html")
    return web.Response(status=status, text=str(body), headers=out_headers)


def _respond(request: web.Request, record: Activation, extension: str) -> web.Response:
    headers = {ACTIVATION_ID_HEADER: record.activation_id}
    if record.status is Status.SUCCESS:
        projected: Any = record.result
    elif record.status is Status.APPLICATION_ERROR:
        projected = record.result.get("error")
    else:
        return error_response(request, 400, PROCESSING_ERROR, headers)
    if extension == "json":
        if not isinstance(projected, dict):
            return error_response(request, 400, "Response is not valid 'application/json'.", headers)
        status = 200 if record.status is Status.SUCCESS else 400
        return json_response(request, projected, status, headers)
    if extension == "http":
        if record.status is Status.APPLICATION_ERROR and not isinstance(projected, dict):
            return error_response(request, 400, str(projected), headers)
        return _http_response(request, projected, headers)
    field = "text" if extension == "text" else extension
    value = projected.get(field) if isinstance(projected, dict) else None
    if not isinstance(value, str):
        return error_response(
            request, 400, f"Response did not include requested property '{field}'.", headers
        )
    content_type = {"html": "text/html", "svg": "image/svg+xml", "text": "text/plain"}[extension]
    return web.Response(text=value, content_type=content_type, headers=headers)


def web_action(controller: Controller) -> Handler:
    """The handler of every web action route."""

    async def handle(request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        name, extension = split_extension(request.match_info["name"])
        if request.match_info["package"] != "default":
            return not_found(request)
        action = controller.store.get(namespace, name)
        if action is None or not action.web_exported:
            return not_found(request)
        if not _authorized(controller, action.annotation("require-whisk-auth"), request, namespace):
            return error_response(request, 401, NOT_AUTHORIZED)
        params: dict[str, Any] = dict(request.query)
        body = await controller.read_body(request)
        decoded: Any = None
        if body:
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                params.update(decoded)
            else:
                decoded = None
        if any(key.startswith("__ow_") for key in params):
            return error_response(request, 400, RESERVED)
        if body and decoded is None:
            params["__ow_body"] = body.decode("utf-8", "replace")
        tail = request.match_info.get("path", "")
        params.update(
            __ow_method=request.method.lower(),
            __ow_headers={k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"},
            __ow_path=f"/{tail}" if tail else "",
        )
        owner = controller.keys.owner(namespace) or Identity(namespace, namespace, "")
        try:
            activation_id, future = controller.invoker.start(
                action, action.merge_params(params), owner, txid(request)
            )
        except TooManyRequests as exc:
            return error_response(request, 429, str(exc))
        record = await controller.wait(future)
        if record is None:
            return error_response(request, 202, NOT_READY, {ACTIVATION_ID_HEADER: activation_id})
        return _respond(request, record, extension)

    return handle
