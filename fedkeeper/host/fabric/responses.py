"""OpenWhisk's response conventions: JSON bodies, ``{"error", "code"}`` errors, transaction ids."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from fedkeeper.host.fabric.invoker import new_id

TXID = "fedkeeper.host.fabric.txid"
NOT_FOUND = "The requested resource does not exist."
MALFORMED = "The request content was malformed:\n{detail}"
ACTIVATION_ID_HEADER = "x-openwhisk-activation-id"


def txid(request: web.Request) -> str:
    """The request's transaction id (OpenWhisk echoes it as ``code`` and ``x-request-id``)."""
    value = request.get(TXID)
    if value is None:
        value = request[TXID] = new_id()
    return str(value)


def json_response(
    request: web.Request, body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    out = {"x-request-id": txid(request), **(headers or {})}
    return web.Response(
        status=status, body=json.dumps(body).encode("utf-8"), content_type="application/json", headers=out
    )


def error_response(
    request: web.Request, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response(request, {"error": message, "code": txid(request)}, status, headers)


def not_found(request: web.Request) -> web.Response:
    return error_response(request, 404, NOT_FOUND)


def malformed(request: web.Request, detail: str) -> web.Response:
    return error_response(request, 400, MALFORMED.format(detail=detail))


def too_large_message(length: int, allowed: int) -> str:
    """OpenWhisk's 413 message for an activation entity past the limit (Messages.entityTooBig)."""
    return f"Request larger than allowed: {length} > {allowed} bytes."
