"""The routes of ``fedkeeper serve``: each hands its request to the read model, the metrics or a change.

Store queries are blocking (pymongo), so they run in the loop's worker threads; a store that
does not answer is a 503 with one line, a missing session a 404, a bad query value a 400.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from fedkeeper.function.errors import FedkeeperError, StoreUnavailable
from fedkeeper.function.redaction import redact
from fedkeeper.host.serve import openapi
from fedkeeper.host.serve.access import TOKEN_ENV, Access, Verdict
from fedkeeper.host.serve.changes import Changes, SessionBusy
from fedkeeper.host.serve.documents import PAGE_SIZE, NoSuchSession, Page, StatusReader
from fedkeeper.host.serve.metrics import CONTENT_TYPE, SourcesCollector, build_registry, exposition
from fedkeeper.host.serve.sources import Sources

STATIC = Path(__file__).parent / "static"
# The dashboard loads nothing from anywhere but this server.
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
MAX_SESSIONS = 1000
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Backend:
    """What the routes read from and change.

    Parameters
    ----------
    reader
        The read model over the store.
    changes
        The state changes the API offers (token required).
    access
        Holds the token.
    sources
        The clusters' Prometheus servers.
    metrics_sessions
        How many recent sessions ``/metrics`` describes.
    """

    reader: StatusReader
    changes: Changes
    access: Access
    sources: Sources
    metrics_sessions: int = 20

    def __post_init__(self) -> None:
        self.source_readings = SourcesCollector()
        self.registry = build_registry(self.reader, self.metrics_sessions, self.source_readings)


BACKEND = web.AppKey("backend", Backend)


def build_app(backend: Backend) -> web.Application:
    """The aiohttp application: dashboard at ``/``, JSON under ``/api/v1/``, metrics at ``/metrics``."""
    app = web.Application(middlewares=[_errors, _headers])
    app[BACKEND] = backend
    app.router.add_get("/", dashboard)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/api/v1", index)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    app.router.add_get("/api/v1/sessions", sessions)
    app.router.add_get("/api/v1/sessions/{session}", session)
    app.router.add_delete("/api/v1/sessions/{session}", remove_session)
    app.router.add_get("/api/v1/sessions/{session}/rounds", rounds)
    app.router.add_get("/api/v1/sessions/{session}/activations", activations)
    app.router.add_get("/api/v1/hosts", hosts)
    app.router.add_get("/api/v1/clusters", clusters)
    app.router.add_get("/metrics", metrics)
    return app


# --------------------------------------------------------------------------- middlewares
class BadRequest(ValueError):
    """A query value the API cannot use."""


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """fedkeeper's errors as a JSON ``{"error": ...}`` with the status that fits."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, str(exc))
    except NoSuchSession as exc:
        return _error(404, str(exc))
    except SessionBusy as exc:
        return _error(409, str(exc))
    except StoreUnavailable as exc:
        return _error(503, str(exc))
    except FedkeeperError as exc:
        return _error(500, str(exc))


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": redact(message)}, status, headers)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return web.Response(text=body, status=status, content_type="application/json", headers=headers)


def _int(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected a whole number (got {raw!r})") from None


def _backend(request: web.Request) -> Backend:
    return request.app[BACKEND]


# --------------------------------------------------------------------------- routes
async def dashboard(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def index(request: web.Request) -> web.Response:
    paths = openapi.document()["paths"]
    return _json({"apiVersion": openapi.API_VERSION, "paths": sorted(paths)})


async def openapi_json(request: web.Request) -> web.Response:
    return _json(openapi.document())


async def sessions(request: web.Request) -> web.Response:
    limit = _int(request, "limit", 20) or 0
    if not 0 < limit <= MAX_SESSIONS:
        raise BadRequest(f"limit must be 1..{MAX_SESSIONS} (got {limit})")
    return _json(await asyncio.to_thread(_backend(request).reader.sessions, limit))


async def session(request: web.Request) -> web.Response:
    reader = _backend(request).reader
    return _json(await asyncio.to_thread(reader.session, request.match_info["session"]))


async def rounds(request: web.Request) -> web.Response:
    reader = _backend(request).reader
    return _json(await asyncio.to_thread(reader.rounds, request.match_info["session"]))


async def activations(request: web.Request) -> web.Response:
    try:
        page = Page(
            offset=_int(request, "offset", 0) or 0,
            limit=_int(request, "limit", PAGE_SIZE) or 0,
            round=_int(request, "round", None),
            status=request.query.get("status") or None,
            platform=request.query.get("platform") or None,
            function=request.query.get("function") or None,
        )
    except ValueError as exc:  # out of range
        raise BadRequest(str(exc)) from None
    reader = _backend(request).reader
    return _json(await asyncio.to_thread(reader.activations, request.match_info["session"], page))


async def hosts(request: web.Request) -> web.Response:
    return _json(await asyncio.to_thread(_backend(request).reader.hosts))


async def clusters(request: web.Request) -> web.Response:
    backend = _backend(request)
    readings = await backend.sources.read()
    return _json(await asyncio.to_thread(backend.reader.clusters, readings))


async def metrics(request: web.Request) -> web.Response:
    backend = _backend(request)
    backend.source_readings.readings = await backend.sources.read()
    body = await asyncio.to_thread(exposition, backend.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def remove_session(request: web.Request) -> web.Response:
    backend = _backend(request)
    verdict = backend.access.check(request.headers.get("Authorization"))
    if verdict is Verdict.NO_TOKEN_SET:
        return _error(403, f"this server changes nothing: start it with {TOKEN_ENV} or serve.token set")
    if verdict is Verdict.REFUSED:
        return _error(401, "a bearer token is needed to change state", {"WWW-Authenticate": "Bearer"})
    force = request.query.get("force", "false").lower()
    if force not in ("true", "false", "1", "0"):
        raise BadRequest(f"force: expected true or false (got {force!r})")
    removed = await asyncio.to_thread(
        backend.changes.remove_session, request.match_info["session"], force in ("true", "1")
    )
    return _json(removed)
