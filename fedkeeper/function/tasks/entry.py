"""Platform entry adapters: each function folder's entry points are one line over these.

Deploy-time parameters ("bound": store URL, credentials) reach a function as OpenWhisk bound
parameters (merged into ``params`` by the platform) or, on GCF and Lambda, as the JSON
environment variable ``FEDKEEPER_BOUND``. Bound values win over invocation values, so a caller
can never redirect a function to another database.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from fedkeeper.function.catalog import FUNCTIONS
from fedkeeper.function.errors import FedkeeperError
from fedkeeper.function.redaction import redact

BOUND_ENV = "FEDKEEPER_BOUND"

# The platform's id of the running invocation (a context variable: GCF serves requests on threads).
activation_id: ContextVar[str | None] = ContextVar("activation_id", default=None)

# function name -> "module:callable"; each callable takes the merged params and returns a JSON object.
HANDLERS: dict[str, str] = {f.name: f.handler for f in FUNCTIONS}


class BadRequest(FedkeeperError):
    """The invocation's parameters are malformed (HTTP 400 where the platform has statuses)."""


def _handler(function: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    module_name, attr = HANDLERS[function].split(":")
    handler: Callable[[dict[str, Any]], dict[str, Any]] = getattr(importlib.import_module(module_name), attr)
    return handler


def bound_from_env() -> dict[str, Any]:
    raw = os.environ.get(BOUND_ENV, "")
    return json.loads(raw) if raw else {}


def run(
    function: str,
    params: Mapping[str, Any],
    bound: Mapping[str, Any] | None = None,
    invocation_id: str | None = None,
) -> dict[str, Any]:
    """Run ``function`` on ``params`` (+ ``bound``); errors become ``{"error": ...}``."""
    merged = {**params, **(bound or {})}
    activation_id.set(invocation_id)
    try:
        return _handler(function)(merged)
    except FedkeeperError as exc:
        return {**exc.details, "error": redact(f"{type(exc).__name__}: {exc}")}
    except Exception as exc:  # an unexpected crash still answers with a JSON error, as OpenWhisk expects
        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        return {"error": redact(f"{type(exc).__name__}: {exc}")}


def openwhisk_main(function: str, params: dict[str, Any]) -> dict[str, Any]:
    """OpenWhisk: bound parameters are already merged into ``params`` by the platform."""
    return run(function, params, invocation_id=os.environ.get("__OW_ACTIVATION_ID"))


def gcf_handler(function: str, request: Any) -> tuple[str, int, dict[str, str]]:
    """GCF HTTP function: JSON body in, JSON out; 400 for a malformed body, 500 for a failure."""
    headers = {"Content-Type": "application/json"}
    params = request.get_json(silent=True)
    if not isinstance(params, dict):
        return json.dumps({"error": "request body must be a JSON object"}), 400, headers
    execution = request.headers.get("Function-Execution-Id") if hasattr(request, "headers") else None
    result = run(function, params, bound_from_env(), execution)
    return json.dumps(result), (500 if "error" in result else 200), headers


def lambda_handler(function: str, event: Any, context: Any) -> dict[str, Any]:
    """Lambda: the event is the parameters object; an error result is raised so Lambda reports it."""
    if not isinstance(event, dict):
        raise BadRequest("event must be a JSON object")
    result = run(function, event, bound_from_env(), getattr(context, "aws_request_id", None))
    if "error" in result:
        raise RuntimeError(result["error"])
    return result
