"""Run ``fedkeeper serve``: open the config's store, bind, print the ready line, serve until a signal."""

from __future__ import annotations

from fedkeeper.function.config import Config
from fedkeeper.host.childproc import bind, http_url, run_service, serving
from fedkeeper.host.serve.access import Access
from fedkeeper.host.serve.changes import Changes
from fedkeeper.host.serve.documents import StatusReader
from fedkeeper.host.serve.server import Backend, build_app
from fedkeeper.host.serve.sources import Sources
from fedkeeper.host.services import Services

READY_LINE = "fedkeeper serve listening on {url}"


def run(config: Config, host: str | None = None, port: int | None = None) -> int:
    """Serve the config's store until SIGTERM/SIGINT; the exit status.

    ``host`` and ``port`` override ``serve.host`` and ``serve.port`` (port 0 picks a free one).
    """
    host = config.serve.host if host is None else host
    port = config.serve.port if port is None else port
    access = Access.from_config(config.serve)  # a bad token stops here, before anything starts
    with Services(config) as services:
        store = services.store()  # an embedded store is held while serving
        backend = Backend(
            reader=StatusReader(store, config),
            changes=Changes(store),
            access=access,
            sources=Sources(config),
            metrics_sessions=config.serve.sessions,
        )
        return run_service("fedkeeper serve", _serve(backend, host, port), host, port, "WARNING")


async def _serve(backend: Backend, host: str, port: int) -> None:
    sock = bind(host, port, backlog=128)
    async with serving(build_app(backend), sock) as stop:
        print(READY_LINE.format(url=http_url(host, sock)), flush=True)
        await stop.wait()
