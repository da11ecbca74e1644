"""The controller: OpenWhisk's REST API (``/api/v1``) on aiohttp.

Routes, JSON shapes, status codes and headers follow Apache OpenWhisk's controller; the
subset is what fedkeeper, ``wsk`` and the npm ``openwhisk`` client use (see docs/fabric.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from fedkeeper.host.fabric.actions import ActionError, ActionStore, build_action, valid_name
from fedkeeper.host.fabric.auth import NOT_ADMIN, AuthError, Identity, KeyRing
from fedkeeper.host.fabric.faults import FaultPlan, FaultPlanError
from fedkeeper.host.fabric.invoker import Invoker, TooManyRequests
from fedkeeper.host.fabric.limits import MB, FabricLimits
from fedkeeper.host.fabric.pool import WorkerPool
from fedkeeper.host.fabric.records import Activation, RecordStore, Status
from fedkeeper.host.fabric.responses import (
    ACTIVATION_ID_HEADER,
    error_response,
    json_response,
    malformed,
    not_found,
    too_large_message,
    txid,
)

log = logging.getLogger("fedkeeper.host.fabric.controller")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IDENTITY = "fedkeeper.host.fabric.identity"
_ACTIVATION_ID = re.compile(r"^[0-9a-f]{32}$")
_LIST_MAX = 200
_LIST_DEFAULT = 30
_MAX_ENTITY_BYTES = 64 * MB  # action code (OpenWhisk allows 48 MB) plus its JSON envelope
_AUTHENTICATED = ("/api/v1/namespaces", "/admin/")
_ADMIN = "/admin/"
PROCESSING_ERROR = "There was an error processing your request."


class Rejection(Exception):
    """Ends a request with an OpenWhisk error response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def blocking_status(record: Activation) -> int:
    """OpenWhisk's status for a blocking invoke: 200, 502 (application/developer error), 500."""
    if record.status is Status.SUCCESS:
        return 200
    if record.status in (Status.APPLICATION_ERROR, Status.DEVELOPER_ERROR):
        return 502
    return 500


def _int_query(request: web.Request, name: str, collection: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise Rejection(400, f"The value '{raw}' is not an integer for {collection}.") from None


def _list_window(request: web.Request, collection: str) -> tuple[int, int]:
    """``limit`` (default 30, 0 = the maximum, at most 200) and ``skip`` as OpenWhisk checks them."""
    limit = _int_query(request, "limit", collection, _LIST_DEFAULT)
    skip = _int_query(request, "skip", collection, 0)
    assert limit is not None and skip is not None
    if limit < 0 or limit > _LIST_MAX:
        raise Rejection(400, f"The value '{limit}' is not in the range of 0 to {_LIST_MAX} for {collection}.")
    if skip < 0:
        raise Rejection(400, f"The value '{skip}' is not greater than or equal to 0 for {collection}.")
    return (limit or _LIST_MAX), skip


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() == "true"


class Controller:
    """The fabric's parts (actions, records, workers, invoker) behind the REST API."""

    def __init__(
        self,
        limits: FabricLimits,
        state_dir: Path | None,
        keys: KeyRing | None = None,
        faults: FaultPlan | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.limits = limits
        self.keys = keys or KeyRing.build()
        self.store = ActionStore(state_dir, limits)
        self.records = RecordStore(limits.max_records, limits.max_record_bytes)
        self.pool = WorkerPool(limits, worker_env)
        self.invoker = Invoker(limits, self.pool, self.records, faults)
        self.started = time.time()

    @property
    def api_host(self) -> str:
        return self.invoker.api_host

    @api_host.setter
    def api_host(self, value: str) -> None:
        self.invoker.api_host = value

    # ------------------------------------------------------------------ app
    def build_app(self) -> web.Application:
        from fedkeeper.host.fabric.web import web_action

        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=_MAX_ENTITY_BYTES)
        r = app.router
        r.add_get("/", self.info)
        r.add_get("/ping", self.ping)
        r.add_get("/api/v1", self.info)
        r.add_get("/api/v1/namespaces", self.list_namespaces)
        actions = "/api/v1/namespaces/{namespace}/actions"
        r.add_get(actions, self.list_actions)
        r.add_get(actions + "/{name}", self.get_action)
        r.add_put(actions + "/{name}", self.put_action)
        r.add_delete(actions + "/{name}", self.delete_action)
        r.add_post(actions + "/{name}", self.invoke_action)
        activations = "/api/v1/namespaces/{namespace}/activations"
        r.add_get(activations, self.list_activations)
        r.add_get(activations + "/{id}", self.get_activation)
        r.add_get(activations + "/{id}/result", self.get_activation_result)
        r.add_get(activations + "/{id}/logs", self.get_activation_logs)
        r.add_route("*", "/api/v1/web/{namespace}/{package}/{name}", web_action(self))
        r.add_route("*", "/api/v1/web/{namespace}/{package}/{name}/{path:.*}", web_action(self))
        r.add_get("/admin/v1/faults", self.get_faults)
        r.add_put("/admin/v1/faults", self.put_faults)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        count = await asyncio.to_thread(self.store.load)
        if count:
            log.info("loaded %d stored action(s)", count)
        await self.pool.start()

    async def _cleanup(self, app: web.Application) -> None:
        await self.invoker.close()
        await self.pool.close()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Rejection as exc:
            return error_response(request, exc.status, exc.message)
        except web.HTTPRequestEntityTooLarge as exc:
            return error_response(request, 413, exc.text or "Request entity too large")
        except web.HTTPNotFound:
            return not_found(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return error_response(request, exc.status, exc.reason, headers=allow)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(request, 500, PROCESSING_ERROR)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_AUTHENTICATED):
            header = request.headers.get("Authorization")
            try:
                if request.path.startswith(_ADMIN):
                    # Fabric-wide controls (the fault plan) belong to the operator, not to any tenant.
                    if not self.keys.is_admin(header):
                        return error_response(request, 403, NOT_ADMIN)
                else:
                    request[IDENTITY] = self.keys.authenticate(header)
            except AuthError as exc:
                return error_response(
                    request, 401, str(exc), headers={"WWW-Authenticate": 'Basic realm="whisk rest service"'}
                )
        return await handler(request)

    def _namespace(self, request: web.Request) -> tuple[Identity, str]:
        identity: Identity = request[IDENTITY]
        namespace = request.match_info["namespace"]
        if namespace in ("_", identity.namespace):
            return identity, identity.namespace
        raise Rejection(403, f"The supplied authentication is not authorized to access '{namespace}'.")

    # ------------------------------------------------------------------ meta
    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def info(self, request: web.Request) -> web.Response:
        return json_response(
            request,
            {
                "description": "fedkeeper's local OpenWhisk-compatible fabric",
                "api_paths": ["/api/v1"],
                "api_version": "1.0.0",
                "api_version_path": "v1",
                "runtimes": {"python": [{"kind": "python:3", "default": True}]},
                "limits": {
                    "actions_per_minute": None,
                    "concurrent_actions": self.limits.concurrent_invocations,
                    "max_action_duration": self.limits.max_timeout_ms,
                    "max_action_memory": self.limits.max_memory_mb * MB,
                    "max_action_logs": self.limits.max_logs_mb * MB,
                    "min_action_duration": self.limits.min_timeout_ms,
                    "min_action_memory": self.limits.min_memory_mb * MB,
                },
            },
        )

    async def list_namespaces(self, request: web.Request) -> web.Response:
        identity: Identity = request[IDENTITY]
        return json_response(request, [identity.namespace])

    # ------------------------------------------------------------------ actions
    async def list_actions(self, request: web.Request) -> web.Response:
        _, namespace = self._namespace(request)
        actions = self.store.list(namespace)
        if _flag(request, "count"):
            return json_response(request, {"actions": len(actions)})
        limit, skip = _list_window(request, "actions")
        return json_response(request, [a.summary() for a in actions[skip : skip + limit]])

    async def get_action(self, request: web.Request) -> web.Response:
        _, namespace = self._namespace(request)
        action = self.store.get(namespace, request.match_info["name"])
        if action is None:
            return not_found(request)
        return json_response(request, action.to_json(code=request.query.get("code", "true") != "false"))

    async def put_action(self, request: web.Request) -> web.Response:
        _, namespace = self._namespace(request)
        name = request.match_info["name"]
        if not valid_name(name):
            raise Rejection(400, "The name of the entity contains illegal characters.")
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError as exc:
            return malformed(request, f"the body is not JSON: {exc}")
        existing = self.store.get(namespace, name)
        if existing is not None and not _flag(request, "overwrite"):
            return error_response(request, 409, "resource already exists")
        try:
            action = build_action(namespace, name, body, self.limits, existing)
        except ActionError as exc:
            return malformed(request, str(exc))
        action = await asyncio.to_thread(self.store.put, action)
        if existing is not None:
            self.pool.retire(namespace, name)
        return json_response(request, action.to_json())

    async def delete_action(self, request: web.Request) -> web.Response:
        _, namespace = self._namespace(request)
        name = request.match_info["name"]
        action = await asyncio.to_thread(self.store.delete, namespace, name)
        if action is None:
            return not_found(request)
        self.pool.retire(namespace, name)
        return json_response(request, action.to_json())

    async def read_body(self, request: web.Request) -> bytes:
        """The raw request entity, within the activation entity limit (else 413)."""
        allowed = self.limits.max_param_bytes
        if request.content_length is not None and request.content_length > allowed:
            raise Rejection(413, too_large_message(request.content_length, allowed))
        chunks: list[bytes] = []
        length = 0
        while chunk := await request.content.read(1 << 20):
            length += len(chunk)
            if length <= allowed:
                chunks.append(chunk)
            # Past the limit (a chunked body) the rest is only counted, to report its true size.
        if length > allowed:
            raise Rejection(413, too_large_message(length, allowed))
        return b"".join(chunks)

    async def read_params(self, request: web.Request) -> dict[str, Any]:
        """The invocation's parameters: a JSON object (or nothing)."""
        raw = await self.read_body(request)
        if not raw.strip():
            return {}
        try:
            params = json.loads(raw)
        except ValueError as exc:
            raise Rejection(400, f"The request content was malformed:\n{exc}") from None
        if not isinstance(params, dict):
            raise Rejection(400, "The request content was malformed:\nthe parameters must be a JSON object")
        return params

    async def invoke_action(self, request: web.Request) -> web.Response:
        identity, namespace = self._namespace(request)
        action = self.store.get(namespace, request.match_info["name"])
        if action is None:
            return not_found(request)
        params = await self.read_params(request)
        try:
            activation_id, future = self.invoker.start(
                action, action.merge_params(params), identity, txid(request)
            )
        except TooManyRequests as exc:
            return error_response(request, 429, str(exc))
        headers = {ACTIVATION_ID_HEADER: activation_id}
        if not _flag(request, "blocking"):
            return json_response(request, {"activationId": activation_id}, 202, headers)
        record = await self.wait(future)
        if record is None:
            return json_response(request, {"activationId": activation_id}, 202, headers)
        body = record.result if _flag(request, "result") else record.to_json()
        return json_response(request, body, blocking_status(record), headers)

    async def wait(self, future: asyncio.Future[Activation | None]) -> Activation | None:
        """The record within the blocking wait, else None (also for a lost record)."""
        deadline = time.monotonic() + self.limits.blocking_wait_s
        try:
            async with asyncio.timeout(self.limits.blocking_wait_s):
                record = await asyncio.shield(future)
        except TimeoutError:
            return None
        if record is None:
            # The record is lost: like OpenWhisk polling its store in vain, wait out the time.
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return record

    # ------------------------------------------------------------------ activations
    def _activation(self, request: web.Request) -> Activation:
        _, namespace = self._namespace(request)
        activation_id = request.match_info["id"]
        if not _ACTIVATION_ID.match(activation_id):
            raise Rejection(400, "The activation id is not valid.")
        record = self.records.get(namespace, activation_id)
        if record is None:
            raise Rejection(404, "The requested resource does not exist.")
        return record

    async def list_activations(self, request: web.Request) -> web.Response:
        _, namespace = self._namespace(request)
        since = _int_query(request, "since", "activations", None)
        upto = _int_query(request, "upto", "activations", None)
        name = request.query.get("name") or None
        if name is not None and "/" in name:
            name = name.rsplit("/", 1)[1]  # "package/name": packages are not modelled, match the name
        found = self.records.query(namespace, name=name, since=since, upto=upto)
        if _flag(request, "count"):
            if _flag(request, "docs"):
                raise Rejection(400, "The parameter 'docs' is not permitted with 'count'.")
            return json_response(request, {"activations": len(found)})
        limit, skip = _list_window(request, "activations")
        docs = _flag(request, "docs")
        return json_response(request, [r.to_json(docs=docs) for r in found[skip : skip + limit]])

    async def get_activation(self, request: web.Request) -> web.Response:
        return json_response(request, self._activation(request).to_json())

    async def get_activation_result(self, request: web.Request) -> web.Response:
        record = self._activation(request)
        response = record.response()
        response.pop("statusCode")
        response["size"] = len(json.dumps(record.result))
        return json_response(request, response)

    async def get_activation_logs(self, request: web.Request) -> web.Response:
        return json_response(request, {"logs": self._activation(request).logs})

    # ------------------------------------------------------------------ fault plan
    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(request, self.invoker.faults.to_json())

    async def put_faults(self, request: web.Request) -> web.Response:
        try:
            plan = FaultPlan.parse(json.loads(await request.read() or b"{}"))
        except (ValueError, FaultPlanError) as exc:
            return malformed(request, str(exc))
        self.invoker.faults = plan
        log.info("fault plan replaced: %s", json.dumps(plan.to_json()))
        return json_response(request, plan.to_json())
