"""Serve a fabric: bind, load stored actions, print the ready line, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from fedkeeper.fabric.auth import KeyRing
from fedkeeper.fabric.controller import Controller
from fedkeeper.fabric.faults import FaultPlan
from fedkeeper.fabric.limits import FabricLimits

READY_LINE = "fabric listening on {url}"
DEFAULT_STATE_ROOT = Path(".fedkeeper") / "fabric"
log = logging.getLogger("fedkeeper.fabric")


@dataclass
class FabricOptions:
    """How to run one fabric (the command line's flags)."""

    host: str = "127.0.0.1"
    port: int = 3233
    state_dir: Path | None = None  # default: .fedkeeper/fabric/<port>
    limits: FabricLimits = field(default_factory=FabricLimits)
    keys: KeyRing = field(default_factory=KeyRing.build)
    faults: FaultPlan | None = None


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(options: FabricOptions, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives."""
    sock = bind(options.host, options.port)
    port = sock.getsockname()[1]
    url = f"http://{options.host}:{port}"
    state_dir = options.state_dir or DEFAULT_STATE_ROOT / str(port)
    controller = Controller(options.limits, state_dir, options.keys, options.faults)
    controller.api_host = url
    runner = web.AppRunner(controller.build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock, shutdown_timeout=1.0)
    await site.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    log.info("state in %s; limits %s", state_dir, options.limits)
    print(READY_LINE.format(url=url), flush=True)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await runner.cleanup()
